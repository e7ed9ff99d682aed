//go:build !estargz_v012

package main

import (
	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/externaltoc"
)

// Built against upstream v0.14.3 (Debian 13's package), the default: it reads innerOffset chunks
// (min-chunk-size blobs) and external TOCs.
const (
	libraryVersion          = "v0.14.3"
	libraryReadsInnerOffset = true
)

// externalTOCDecompressor lets estargz.Open read a blob whose TOC is external (v0.13+).
func externalTOCDecompressor(toc []byte) (estargz.Decompressor, bool) {
	return externaltoc.NewGzipDecompressor(func() ([]byte, error) { return toc, nil }), true
}
