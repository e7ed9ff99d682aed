//go:build estargz_v012

package main

import (
	"fmt"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

// v0.12 has no min chunk size: every file starts its own gzip member.
func minChunkOption(int) (estargz.Option, error) {
	return nil, fmt.Errorf("minchunk: the v0.12 builder has no min chunk size")
}

// v0.12 has no external TOC and no lossless append.
func losslessLayer(io.Reader, io.Writer, int, int) ([]byte, digest.Digest, error) {
	return nil, "", fmt.Errorf("lossless: the v0.12 builder has no external TOC")
}
