//go:build !estargz_v012

package main

import (
	"bytes"
	"compress/gzip"
	"io"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/externaltoc"
	digest "github.com/opencontainers/go-digest"
)

func minChunkOption(n int) (estargz.Option, error) { return estargz.WithMinChunkSize(n), nil }

// losslessLayer is upstream's --estargz-keep-diff-id (nativeconverter/estargz/externaltoc's
// LayerConvertLossLessFunc): the tar appended losslessly through the external-TOC compressor. It
// writes the blob to dst and returns the TOC blob (the -esgztoc image's layer) and the TOC digest.
func losslessLayer(src io.Reader, dst io.Writer, chunk, minChunk int) ([]byte, digest.Digest, error) {
	gc := externaltoc.NewGzipCompressorWithLevel(gzip.BestCompression)
	w := estargz.NewWriterWithCompressor(dst, gc)
	if chunk > 0 {
		w.ChunkSize = chunk
	}
	w.MinChunkSize = minChunk
	if err := w.AppendTarLossLess(src); err != nil {
		return nil, "", err
	}
	tocDigest, err := w.Close()
	if err != nil {
		return nil, "", err
	}
	var toc bytes.Buffer
	if _, err := gc.WriteTOCTo(&toc); err != nil {
		return nil, "", err
	}
	return toc.Bytes(), tocDigest, nil
}
