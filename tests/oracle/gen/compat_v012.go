//go:build estargz_v012

package main

import (
	"fmt"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// v0.12 has no min chunk size: every file starts its own gzip member.
func minChunkOption(int) (estargz.Option, error) {
	return nil, fmt.Errorf("minchunk: the v0.12 builder has no min chunk size")
}
