//go:build !estargz_v012

package main

import (
	"bytes"
	"compress/gzip"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/externaltoc"
)

// externalTOCBlob builds the layer with upstream's builder and its external-TOC compression: the
// layer blob (46-byte STARGZEXTERNALTOC footer, no TOC) and the TOC blob the "-esgztoc" image holds.
func externalTOCBlob(t *testing.T) (blob, toc []byte, tocDigest string) {
	return externalTOCBlobOf(t, 1024)
}

// otherLayerExternalTOC is another layer's external TOC (same files, another chunk size).
func otherLayerExternalTOC(t *testing.T) (blob, toc []byte, tocDigest string) {
	return externalTOCBlobOf(t, 512)
}

func externalTOCBlobOf(t *testing.T, chunkSize int) (blob, toc []byte, tocDigest string) {
	c := externaltoc.NewGzipCompressionWithLevel(nil, gzip.BestCompression)
	blob, tocDigest = upstreamBlob(t, estargz.WithChunkSize(chunkSize), estargz.WithCompression(c))
	var buf bytes.Buffer
	if _, err := c.(*externaltoc.GzipCompression).WriteTOCTo(&buf); err != nil {
		t.Fatal(err)
	}
	return blob, buf.Bytes(), tocDigest
}

func withExternalTOC(t *testing.T, toc []byte) {
	externalTOC = toc
	t.Cleanup(func() { externalTOC = nil })
}

func TestExternalTOCBlobPasses(t *testing.T) {
	blob, toc, dgst := externalTOCBlob(t)
	withExternalTOC(t, toc)
	r := check(blob, dgst)
	if !r.OK || r.LibraryVerify != "VerifyTOC" || r.FooterSize != externalFooterSz {
		t.Fatalf("ok %v, library_verify %q, footer %d: %v", r.OK, r.LibraryVerify, r.FooterSize, r.Errors)
	}
}

func TestExternalTOCOfAnotherLayerIsRejected(t *testing.T) {
	blob, _, dgst := externalTOCBlob(t)
	_, otherTOC, _ := otherLayerExternalTOC(t)
	withExternalTOC(t, otherTOC)
	mustFail(t, check(blob, dgst), "differs from the expected")
}

func TestExternalTOCBlobWithoutItsTOCIsRejected(t *testing.T) {
	blob, _, dgst := externalTOCBlob(t)
	mustFail(t, check(blob, dgst), "footer:")
}
