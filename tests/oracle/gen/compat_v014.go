//go:build !estargz_v012

package main

import "github.com/containerd/stargz-snapshotter/estargz"

func minChunkOption(n int) (estargz.Option, error) { return estargz.WithMinChunkSize(n), nil }
