//go:build !estargz_v012

package main

import (
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// v0.14.3's min chunk size puts small files in one gzip member, found by innerOffset. Its VerifyTOC
// rejects such blobs ("offset N found twice"), so the checker verifies every chunk against the
// chunkDigest the library parsed; that path must still catch a corrupt chunk.
func minChunkBlob(t *testing.T) ([]byte, string) {
	return upstreamBlob(t, estargz.WithMinChunkSize(1<<20))
}

func TestMinChunkBlobPassesWithoutVerifyTOC(t *testing.T) {
	blob, toc := minChunkBlob(t)
	r := check(blob, toc)
	if !r.OK {
		t.Fatalf("rejected: %v", r.Errors)
	}
	if r.InnerOffsetChunks == 0 || !strings.Contains(r.LibraryVerify, "found twice") {
		t.Fatalf("inner_offset_chunks %d, library_verify %q", r.InnerOffsetChunks, r.LibraryVerify)
	}
}

func TestMinChunkBlobWithALyingChunkDigestIsRejected(t *testing.T) {
	blob, _ := minChunkBlob(t)
	bad := rewriteTOC(t, blob, func(toc *tocDoc) {
		for i := range toc.Entries {
			if e := &toc.Entries[i]; e.Name == "small" {
				if e.InnerOffset == 0 {
					t.Fatal("small is not behind an innerOffset")
				}
				e.ChunkDigest = "sha256:" + strings.Repeat("3", 64)
				e.Digest = e.ChunkDigest
			}
		}
	})
	r := check(bad, "")
	mustFail(t, r, "chunkDigest says")
	mustFail(t, r, "upstream reader, \"small\": chunk at 0 reads as")
}
