//go:build !estargz_v012

package main

// Built against upstream v0.14.3 (Debian 13's package), the default: it reads innerOffset chunks
// (min-chunk-size blobs) and external TOCs.
const (
	libraryVersion          = "v0.14.3"
	libraryReadsInnerOffset = true
)
