//go:build estargz_v012

package main

import "github.com/containerd/stargz-snapshotter/estargz"

// Built against upstream v0.12 (Debian 12's package), the older reader still deployed: its TOCEntry
// has no innerOffset field, so it reads chunks that share a member from the member's start.
const (
	libraryVersion          = "v0.12"
	libraryReadsInnerOffset = false
)

// externalTOCDecompressor: v0.12 has no external TOC support (estargz/externaltoc came in v0.13).
func externalTOCDecompressor(toc []byte) (estargz.Decompressor, bool) { return nil, false }
