package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
)

// safe turns a library panic into an error: on corrupt input the library has panicked (slice bounds in
// the gzip footer parser); that is a finding to report, not a reason for the oracle to die.
func safe(what string, f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s panicked: %v", what, p)
		}
	}()
	return f()
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func openFooter(ra io.ReaderAt, size int64) (off int64, footerSize int64, err error) {
	err = safe("estargz.OpenFooter", func() error {
		var e error
		off, footerSize, e = estargz.OpenFooter(io.NewSectionReader(ra, 0, size))
		return e
	})
	return
}

// library runs the upstream reader the way the snapshotter does: Open, VerifyTOC against the expected
// digest, then every regular file through OpenFile + ChunkEntryForOffset + ReadAt, each chunk through
// the verifier. Its view must agree with ours.
func (c *blobCheck) library() {
	if !libraryReadsInnerOffset && c.rep.InnerOffsetChunks > 0 {
		c.f.errf("%d chunk(s) use innerOffset, which the %s reader ignores (it would read them from their member's start)", c.rep.InnerOffsetChunks, libraryVersion)
	}
	var r *estargz.Reader
	err := safe("estargz.Open", func() error {
		var e error
		decompressors := []estargz.Decompressor{new(zstdchunked.Decompressor)}
		if c.ext != nil {
			d, ok := externalTOCDecompressor(c.ext)
			if !ok {
				return fmt.Errorf("the %s reader has no external TOC support", libraryVersion)
			}
			decompressors = append(decompressors, d)
		}
		r, e = estargz.Open(io.NewSectionReader(c.ra, 0, c.size), estargz.WithDecompressors(decompressors...))
		return e
	})
	if err != nil {
		c.rep.LibraryVerify = "open failed"
		c.f.errf("upstream estargz.Open: %s", oneLine(err))
		return
	}
	if got := r.TOCDigest().String(); got != c.rep.TOCDigest {
		c.f.errf("upstream reader's TOC digest %s differs from ours %s", got, c.rep.TOCDigest)
	}
	want := c.rep.ExpectedTOCDigest
	if want == "" {
		want = c.rep.TOCDigest
	}
	var verifier estargz.TOCEntryVerifier
	err = safe("VerifyTOC", func() error {
		var e error
		verifier, e = r.VerifyTOC(digest.Digest(want))
		return e
	})
	switch {
	case err == nil:
		c.rep.LibraryVerify = "VerifyTOC"
	case c.rep.InnerOffsetChunks > 0 && strings.Contains(err.Error(), "found twice"):
		// v0.14.3 keys its verifier by offset alone, so chunks sharing a member (innerOffset, written by
		// its own min-chunk-size builder) collide. The TOC digest was compared above; each chunk is
		// checked below against the chunkDigest the library itself parsed.
		c.rep.LibraryVerify = "chunk digests (VerifyTOC cannot key innerOffset chunks: " + oneLine(err) + ")"
		verifier = nil
	default:
		c.rep.LibraryVerify = "VerifyTOC failed"
		c.f.errf("upstream VerifyTOC: %s", oneLine(err))
		return
	}
	c.libraryReadFiles(r, verifier)
}

func (c *blobCheck) libraryReadFiles(r *estargz.Reader, verifier estargz.TOCEntryVerifier) {
	if c.toc == nil {
		// We could not decode the TOC the library accepted: nothing to compare its reads with.
		c.f.errf("the upstream reader accepts a TOC our decoding rejects")
		return
	}
	last := map[string]int{}
	for i, e := range c.toc.Entries {
		if e.Type != "chunk" {
			last[cleanName(e.Name)] = i
		}
	}
	for name, i := range last {
		e := &c.toc.Entries[i]
		idx := c.tarByName[name]
		if len(idx) == 0 {
			continue // reported by compareTOCAndTar
		}
		te := &c.tarEnts[idx[len(idx)-1]]
		switch e.Type {
		case "reg":
			if e.Size == 0 || te.typ != "reg" {
				continue
			}
			err := safe("reading "+name, func() error { return c.libraryReadFile(r, verifier, name, e.Size, te.digest) })
			if err != nil {
				c.f.errf("upstream reader, %q: %s", name, oneLine(err))
			}
		case "hardlink":
			err := safe("Lookup "+name, func() error {
				got, ok := r.Lookup(name)
				if !ok {
					return fmt.Errorf("Lookup finds nothing")
				}
				if got.Type == "hardlink" {
					return fmt.Errorf("Lookup returns the link itself, not its target")
				}
				if target := c.tarFor(cleanName(te.hdr.Linkname), len(c.tarByName[cleanName(te.hdr.Linkname)])-1); target != nil && target.typ != got.Type {
					return fmt.Errorf("Lookup resolves to a %s, the tar's target is a %s", got.Type, target.typ)
				}
				return nil
			})
			if err != nil {
				c.f.errf("upstream reader, hardlink %q: %s", name, oneLine(err))
			}
		}
	}
}

func (c *blobCheck) libraryReadFile(r *estargz.Reader, verifier estargz.TOCEntryVerifier, name string, size int64, want string) error {
	fr, err := r.OpenFile(name)
	if err != nil {
		return err
	}
	whole := sha256.New()
	for off := int64(0); off < size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok {
			return fmt.Errorf("no chunk for offset %d", off)
		}
		if ce.ChunkOffset != off {
			return fmt.Errorf("the chunk for offset %d starts at %d", off, ce.ChunkOffset)
		}
		n := ce.ChunkSize
		if n <= 0 || off+n > size {
			return fmt.Errorf("chunk at %d has size %d in a %d-byte file", off, n, size)
		}
		buf := make([]byte, n)
		if got, err := fr.ReadAt(buf, off); int64(got) != n {
			return fmt.Errorf("ReadAt(%d, %d): %d bytes, %v", off, n, got, err)
		}
		if verifier != nil {
			v, err := verifier.Verifier(ce)
			if err != nil {
				return fmt.Errorf("chunk at %d: %v", off, err)
			}
			v.Write(buf)
			if !v.Verified() {
				return fmt.Errorf("chunk at %d fails the upstream verifier", off)
			}
		} else if got := digest.FromBytes(buf); got.String() != ce.ChunkDigest {
			return fmt.Errorf("chunk at %d reads as %s, its chunkDigest is %s", off, got, ce.ChunkDigest)
		}
		whole.Write(buf)
		off += n
	}
	if got := "sha256:" + hex.EncodeToString(whole.Sum(nil)); got != want {
		return fmt.Errorf("reads as %s, the plain tar holds %s", got, want)
	}
	return nil
}
