package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
)

// layerTar is a small layer with the entry kinds whose handling differs: a multi-chunk file, an
// empty file, a hardlink, a symlink, a directory.
func layerTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 3000)
	for i := range big {
		big[i] = byte(i*7 + i/13)
	}
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/big", Mode: 0o644}, big)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/empty", Mode: 0o644}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "small", Mode: 0o600}, []byte("hello\n"))
	add(&tar.Header{Typeflag: tar.TypeLink, Name: "hard", Linkname: "small"}, nil)
	add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "sym", Linkname: "d/big"}, nil)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upstreamBlob builds the layer with upstream's estargz.Build (1 KiB chunks: d/big has 3), with
// any further options.
func upstreamBlob(t *testing.T, opts ...estargz.Option) ([]byte, string) {
	src := layerTar(t)
	opts = append([]estargz.Option{estargz.WithChunkSize(1024)}, opts...)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return blob, b.TOCDigest().String()
}

func check(blob []byte, toc string) *BlobReport {
	r := checkBlob(bytes.NewReader(blob), int64(len(blob)), toc)
	r.finish(true)
	return r
}

// mustFail asserts the blob is rejected with an error containing want.
func mustFail(t *testing.T, r *BlobReport, want string) {
	t.Helper()
	mustReject(t, r.OK, r.Errors, want)
}

// mustReject asserts a report's verdict is a rejection with an error containing want.
func mustReject(t *testing.T, ok bool, errs []string, want string) {
	t.Helper()
	if ok {
		t.Fatalf("accepted; want an error containing %q", want)
	}
	for _, e := range errs {
		if strings.Contains(e, want) {
			return
		}
	}
	t.Fatalf("errors %q do not mention %q", errs, want)
}

func TestUpstreamBlobPasses(t *testing.T) {
	blob, toc := upstreamBlob(t)
	r := check(blob, toc)
	if !r.OK {
		t.Fatalf("rejected: %v %v", r.Errors, r.Warnings)
	}
	// d/big is 3 chunks; small and the landmark 1 each.
	if r.Chunks != 5 || r.Files != 4 || !r.TarEqual || r.LibraryVerify != "VerifyTOC" {
		t.Fatalf("chunks %d files %d tar_equal %v library %q", r.Chunks, r.Files, r.TarEqual, r.LibraryVerify)
	}
	if r.Landmark == nil || *r.Landmark != "no-prefetch" || *r.PrefetchBytes != 0 {
		t.Fatalf("landmark %v prefetch %v", r.Landmark, r.PrefetchBytes)
	}
}

// chunkAt is the blob offset of the named file's chunk at chunkOffset, from our own TOC decoding.
func chunkAt(t *testing.T, blob []byte, name string, chunkOffset int64) int64 {
	c := &blobCheck{ra: bytes.NewReader(blob), size: int64(len(blob)), rep: &BlobReport{Format: formatEStargz}, tarByName: map[string][]int{}}
	c.f = &c.rep.findings
	c.gzipFooter()
	c.gzipTOC()
	c.parseTOC()
	for _, ch := range c.chunks {
		if ch.file == name && ch.off == chunkOffset {
			return ch.offset
		}
	}
	t.Fatalf("no chunk of %s at %d", name, chunkOffset)
	return 0
}

func TestFlippedByteInAChunkIsRejected(t *testing.T) {
	blob, toc := upstreamBlob(t)
	// Inside the deflate data of d/big's second chunk: 10 bytes of gzip header, then data.
	at := chunkAt(t, blob, "d/big", 1024) + 20
	blob[at] ^= 0xff
	mustFail(t, check(blob, toc), "chunk of \"d/big\" at 1024")
}

func TestTruncatedBlobIsRejected(t *testing.T) {
	blob, toc := upstreamBlob(t)
	for _, cut := range []int{1, 51, len(blob) / 2} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			mustFail(t, check(blob[:len(blob)-cut], toc), "footer")
		})
	}
}

func TestWrongTOCDigestIsRejected(t *testing.T) {
	blob, _ := upstreamBlob(t)
	other := "sha256:" + strings.Repeat("0", 64)
	r := check(blob, other)
	mustFail(t, r, "differs from the expected")
	mustFail(t, r, "upstream VerifyTOC") // the library agrees
}

// rewriteTOC replaces the blob's TOC by edit(toc) with a well-formed TOC member and footer, so the
// only fault left is the one edit makes.
func rewriteTOC(t *testing.T, blob []byte, edit func(*tocDoc)) []byte {
	off := chunkTOCOffset(t, blob)
	c := &blobCheck{ra: bytes.NewReader(blob), size: int64(len(blob)), rep: &BlobReport{}, tarByName: map[string][]int{}}
	c.f = &c.rep.findings
	c.gzipFooter()
	c.gzipTOC()
	var toc tocDoc
	if err := json.Unmarshal(c.tocJSON, &toc); err != nil {
		t.Fatal(err)
	}
	edit(&toc)
	js, _ := json.Marshal(toc)
	var out bytes.Buffer
	out.Write(blob[:off])
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: tocName, Size: int64(len(js))})
	tw.Write(js)
	tw.Close()
	zw.Close()
	out.Write(footerBytes(off))
	return out.Bytes()
}

func chunkTOCOffset(t *testing.T, blob []byte) int64 {
	off, bad := parseGzipFooter(blob[len(blob)-gzipFooterSize:])
	if len(bad) > 0 {
		t.Fatal(bad)
	}
	return off
}

// footerBytes writes the 51-byte footer from the spec's description, not with the library.
func footerBytes(off int64) []byte {
	b := []byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, 'S', 'G', 22, 0}
	b = append(b, []byte(fmt.Sprintf("%016xSTARGZ", off))...)
	b = append(b, emptyStored...)
	return append(b, make([]byte, 8)...)
}

func TestRewrittenTOCHelperKeepsABlobValid(t *testing.T) {
	blob, _ := upstreamBlob(t)
	if r := check(rewriteTOC(t, blob, func(*tocDoc) {}), ""); !r.OK {
		t.Fatalf("an unchanged rewritten TOC is rejected: %v", r.Errors)
	}
}

func TestLyingChunkDigestIsRejected(t *testing.T) {
	blob, _ := upstreamBlob(t)
	bad := rewriteTOC(t, blob, func(toc *tocDoc) {
		for i := range toc.Entries {
			if e := &toc.Entries[i]; e.Name == "small" {
				e.ChunkDigest = "sha256:" + strings.Repeat("1", 64)
			}
		}
	})
	r := check(bad, "")
	mustFail(t, r, "chunkDigest says")
	mustFail(t, r, "upstream reader, \"small\"")
}

// A hardlink cycle makes estargz.Open recurse until the stack overflows (fatal, not a panic); the
// checker must refuse to call it and still report.
func TestHardlinkCycleIsRejectedWithoutCrashing(t *testing.T) {
	blob, _ := upstreamBlob(t)
	bad := rewriteTOC(t, blob, func(toc *tocDoc) {
		toc.Entries = append(toc.Entries,
			tocEnt{Name: "loop-a", Type: "hardlink", LinkName: "loop-b"},
			tocEnt{Name: "loop-b", Type: "hardlink", LinkName: "loop-a"})
	})
	r := check(bad, "")
	mustFail(t, r, "hardlink cycle")
	if !strings.HasPrefix(r.LibraryVerify, "not run") {
		t.Fatalf("library_verify %q", r.LibraryVerify)
	}
}

func TestLegacyFooterIsRejected(t *testing.T) {
	blob, _ := upstreamBlob(t)
	off := chunkTOCOffset(t, blob)
	legacy := []byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0}
	legacy = append(legacy, []byte(fmt.Sprintf("%016xSTARGZ", off))...)
	legacy = append(append(legacy, emptyStored...), make([]byte, 8)...)
	bad := append(append([]byte{}, blob[:len(blob)-gzipFooterSize]...), legacy...)
	r := check(bad, "")
	mustFail(t, r, "legacy")
	if r.Format != formatLegacy {
		t.Fatalf("format %q", r.Format)
	}
}

// The library indexes the footer's Extra field unchecked; a short one made it panic. The checker
// records that as an error instead of dying.
func TestShortExtraFieldIsRejectedWithoutCrashing(t *testing.T) {
	blob, _ := upstreamBlob(t)
	var foot bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&foot, gzip.NoCompression)
	zw.Header.Extra = []byte("SG")
	zw.Write([]byte("19 bytes of padding")) // one 24-byte stored block: the member is 51 bytes
	zw.Close()
	if foot.Len() != gzipFooterSize {
		t.Fatalf("footer of %d bytes", foot.Len())
	}
	bad := append(append([]byte{}, blob[:len(blob)-gzipFooterSize]...), foot.Bytes()...)
	r := check(bad, "")
	mustFail(t, r, "footer: XLEN")
	mustFail(t, r, "panicked")
}

func TestPlainTarGzIsRejected(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(layerTar(t))
	zw.Close()
	mustFail(t, check(buf.Bytes(), ""), "footer")
}

type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// TestEveryByteFlip flips each byte of small blobs in turn. A flipped blob may pass only if what it
// holds is unchanged: the same uncompressed stream (diff_id) and the same TOC. That leaves the gzip
// header's MTIME/XFL/OS bytes and the odd unused code length; anything else passing is a hole.
//
// About a minute on 2 cores (each zstd check sets up several decoders), so `go test -short` skips it.
func TestEveryByteFlip(t *testing.T) {
	if testing.Short() {
		t.Skip("every-byte flips take about a minute; run without -short")
	}
	src := layerTar(t)
	for _, kind := range []string{"gzip", "zstd"} {
		t.Run(kind, func(t *testing.T) {
			opts := []estargz.Option{estargz.WithChunkSize(1024)}
			if kind == "zstd" {
				opts = append(opts, estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}}))
			}
			b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
			if err != nil {
				t.Fatal(err)
			}
			blob, _ := io.ReadAll(b)
			b.Close()
			good := check(blob, b.TOCDigest().String())
			if !good.OK {
				t.Fatalf("the unflipped blob is rejected: %v", good.Errors)
			}
			passed := 0
			for i := range blob {
				blob[i] ^= 0xff
				r := check(blob, b.TOCDigest().String())
				blob[i] ^= 0xff
				if r.OK {
					passed++
					if r.DiffID != good.DiffID || r.TOCDigest != good.TOCDigest {
						t.Errorf("flipping byte %d changes the content (diff_id %s) and passes", i, r.DiffID)
					}
				}
			}
			t.Logf("%s: %d of %d flips pass, all content-preserving", kind, passed, len(blob))
		})
	}
}

// The library allocates the compressed TOC length a zstd:chunked footer claims: a corrupt footer
// would kill the checker with a fatal out-of-memory. It must be refused before the library sees it.
func TestZstdFooterClaimingAHugeTOCIsNotPassedToTheLibrary(t *testing.T) {
	src := layerTar(t)
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))),
		estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault}, &zstdchunked.Decompressor{}}))
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := io.ReadAll(b)
	b.Close()
	blob[len(blob)-40+8+5] = 0x01 // compressed TOC length += 1 TiB
	r := check(blob, "")
	mustFail(t, r, "does not end where the footer begins")
	if !strings.HasPrefix(r.LibraryVerify, "not run") {
		t.Fatalf("library_verify %q", r.LibraryVerify)
	}
}

// Lossless mode keeps the source tar's end-of-archive blocks, so the TOC follows them and a plain tar
// reader never sees it. Accepted with a warning (BuildKit writes such layers), and only because every
// byte after the end of the archive is inside the TOC member.
func TestLosslessBlobPassesWithAWarning(t *testing.T) {
	var buf bytes.Buffer
	w := estargz.NewWriter(&buf)
	if err := w.AppendTarLossLess(bytes.NewReader(layerTar(t))); err != nil {
		t.Fatal(err)
	}
	toc, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := checkBlob(bytes.NewReader(buf.Bytes()), int64(buf.Len()), toc.String())
	r.finish(false)
	if !r.OK || len(r.Warnings) == 0 || !strings.Contains(strings.Join(r.Warnings, "\n"), "lossless") {
		t.Fatalf("ok %v errors %v warnings %v", r.OK, r.Errors, r.Warnings)
	}
	r.finish(true)
	if r.OK {
		t.Fatal("--strict accepts the warning")
	}
}
