package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

const (
	formatEStargz = "estargz"
	formatLegacy  = "stargz-legacy"
	formatZstd    = "zstd:chunked"

	gzipFooterSize   = 51 // eStargz footer: one empty gzip member carrying the TOC offset in its Extra field
	externalFooterSz = 46 // external-TOC footer: an empty gzip member whose Extra says STARGZEXTERNALTOC
	legacyFooterSize = 47 // CRFS stargz footer: the same without the "SG" subfield
	zstdFooterSize   = 48 // skippable frame header (8) + zstd:chunked footer (40)

	tocName          = "stargz.index.json"
	prefetchLandmark = ".prefetch.landmark"
	noPrefetchMark   = ".no.prefetch.landmark"
	landmarkByte     = 0x0f

	// A TOC is JSON describing every entry; a footer claiming more than this is corrupt, and believing
	// it would only exhaust memory.
	maxTOCBytes = 1 << 30
)

var (
	gzipMagic      = []byte{0x1f, 0x8b}
	zstdMagic      = []byte{0x28, 0xb5, 0x2f, 0xfd}
	skippableMagic = []byte{0x50, 0x2a, 0x4d, 0x18}
	zstdChunkMagic = []byte("GnUlInUx")
	emptyStored    = []byte{0x01, 0x00, 0x00, 0xff, 0xff} // final, stored, LEN=0, NLEN=0xffff

	// externalTOC is the TOC blob (gzip of a tar holding stargz.index.json) of a blob whose TOC is
	// external, from --external-toc; nil for blobs that carry their TOC. `image` passes each layer's
	// TOC to checkBlobWithTOC instead.
	externalTOC []byte
)

// BlobReport is the JSON report of `estargz-check blob` and the "blob" of each layer of an image.
type BlobReport struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	findings
	File              string   `json:"file,omitempty"`
	Library           string   `json:"library"`
	Format            string   `json:"format"`
	BlobSize          int64    `json:"blob_size"`
	BlobDigest        string   `json:"blob_digest"`
	TOCDigest         string   `json:"toc_digest"`
	ExpectedTOCDigest string   `json:"expected_toc_digest,omitempty"`
	TOCOffset         int64    `json:"toc_offset"`
	FooterSize        int64    `json:"footer_size"`
	Entries           int      `json:"entries"`
	Files             int      `json:"files"`
	Chunks            int      `json:"chunks"`
	InnerOffsetChunks int      `json:"inner_offset_chunks"`
	Landmark          *string  `json:"landmark"`
	Prioritized       []string `json:"prioritized"`
	PrefetchBytes     *int64   `json:"prefetch_bytes"`
	UncompressedSize  int64    `json:"uncompressed_size"`
	DiffID            string   `json:"diff_id"`
	TarEqual          bool     `json:"tar_equal"`
	TarEntries        int      `json:"tar_entries"`
	GzipMembers       int      `json:"gzip_members,omitempty"`
	LibraryVerify     string   `json:"library_verify"`
	ZstdChecksum      string   `json:"zstd_manifest_checksum,omitempty"`
	ZstdPosition      string   `json:"zstd_manifest_position,omitempty"`
}

func (r *BlobReport) finish(strict bool) {
	r.seal()
	r.OK, r.Error = r.verdict(strict)
}

// tocDoc and tocEnt are the TOC as the spec defines it, decoded by us and not by the estargz package,
// so that a bug in the library's decoding cannot hide the same bug in a blob.
type tocDoc struct {
	Version int      `json:"version"`
	Entries []tocEnt `json:"entries"`
}

type tocEnt struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Size        int64             `json:"size"`
	ModTime     string            `json:"modtime"`
	LinkName    string            `json:"linkName"`
	Mode        int64             `json:"mode"`
	UID         int               `json:"uid"`
	GID         int               `json:"gid"`
	Uname       string            `json:"userName"`
	Gname       string            `json:"groupName"`
	Offset      int64             `json:"offset"`
	InnerOffset int64             `json:"innerOffset"`
	DevMajor    int64             `json:"devMajor"`
	DevMinor    int64             `json:"devMinor"`
	Xattrs      map[string][]byte `json:"xattrs"`
	Digest      string            `json:"digest"`
	ChunkOffset int64             `json:"chunkOffset"`
	ChunkSize   int64             `json:"chunkSize"`
	ChunkDigest string            `json:"chunkDigest"`
}

// chunk is one piece of file payload the TOC points at: a non-empty "reg" entry or a "chunk".
type chunk struct {
	entry  int    // index in the TOC
	file   string // cleaned name
	occ    int    // which occurrence of that name in the TOC (a tar may hold a name twice)
	offset int64  // compressed offset of the member/frame holding it
	inner  int64  // uncompressed bytes to skip inside that member (min-chunk-size blobs)
	off    int64  // offset in the file
	size   int64  // resolved size (the last chunk's chunkSize may be 0)
	digest string
}

// tarEnt is one entry of the plain sequential decoding of the blob.
type tarEnt struct {
	name     string
	typ      string
	hdr      *tar.Header
	hdrAt    int64 // uncompressed offset of its first header block (PAX/GNU headers included)
	dataAt   int64 // uncompressed offset of its payload
	digest   string
	contents []byte // kept only for tiny files (the landmark byte check)
}

type member struct{ c, u, clen, ulen int64 }

type blobCheck struct {
	ra   io.ReaderAt
	size int64
	rep  *BlobReport
	f    *findings
	ext  []byte // the external TOC blob, nil when the blob carries its TOC

	tocOff     int64 // gzip: where the TOC member starts; zstd: where the compressed TOC starts
	tocEnd     int64 // where the footer starts
	zstdTOCLn  int64 // zstd: compressed TOC length from the footer
	zstdTOCRaw int64 // zstd: uncompressed TOC length from the footer
	tocJSON    []byte
	toc        *tocDoc
	chunks     []chunk
	members    []member
	tarEnts    []tarEnt
	tarByName  map[string][]int
	libSkip    string // why the upstream reader must not be called on this blob
	zdec       *zstd.Decoder
}

func cleanName(n string) string { return strings.TrimPrefix(path.Clean("/"+n), "/") }

// checkBlob runs every check; expected is the TOC digest the blob must have ("" to skip that check).
// The blob's TOC is external when --external-toc gave one.
func checkBlob(ra io.ReaderAt, size int64, expected string) *BlobReport {
	return checkBlobWithTOC(ra, size, expected, externalTOC)
}

// checkBlobWithTOC is checkBlob with the blob's external TOC blob given (nil: the blob carries its TOC).
func checkBlobWithTOC(ra io.ReaderAt, size int64, expected string, ext []byte) *BlobReport {
	rep := &BlobReport{Library: libraryVersion, BlobSize: size, ExpectedTOCDigest: expected, Prioritized: []string{}}
	c := &blobCheck{ra: ra, size: size, rep: rep, f: &rep.findings, ext: ext, tarByName: map[string][]int{}}
	c.blobDigest()
	head := make([]byte, 4)
	if size < 4 {
		c.f.errf("blob of %d bytes is too short for any compressed layer", size)
		return rep
	}
	if _, err := ra.ReadAt(head, 0); err != nil {
		c.f.errf("reading the blob: %v", err)
		return rep
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		rep.Format = formatEStargz
		if c.ext != nil {
			if c.externalFooter() {
				c.externalTOCJSON()
			}
		} else if c.gzipFooter() {
			c.gzipTOC()
		}
	case bytes.Equal(head, zstdMagic):
		rep.Format = formatZstd
		if c.zstdFooter() {
			c.zstdTOC()
		}
	default:
		c.f.errf("neither gzip nor zstd (starts with %x)", head)
		return rep
	}
	if c.tocJSON != nil {
		sum := sha256.Sum256(c.tocJSON)
		rep.TOCDigest = "sha256:" + hex.EncodeToString(sum[:])
		if expected != "" && expected != rep.TOCDigest {
			c.f.errf("TOC digest %s differs from the expected %s", rep.TOCDigest, expected)
		}
		c.parseTOC()
	}
	c.sequential()
	if c.toc != nil {
		if rep.Format == formatEStargz {
			c.memberAlignment()
		}
		c.chunksIndependently()
		if c.zdec != nil {
			c.zdec.Close()
		}
		c.compareTOCAndTar()
	}
	c.landmark()
	if c.libSkip == "" && c.toc != nil {
		c.libSkip = hardlinkCycle(c.toc)
	}
	if c.libSkip != "" {
		rep.LibraryVerify = "not run: " + c.libSkip
		c.f.errf("upstream reader not run: %s", c.libSkip)
	} else {
		c.library()
	}
	return rep
}

func (c *blobCheck) blobDigest() {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(c.ra, 0, c.size)); err != nil {
		c.f.errf("reading the blob: %v", err)
		return
	}
	c.rep.BlobDigest = "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func (c *blobCheck) readAt(off, n int64) ([]byte, error) {
	b := make([]byte, n)
	_, err := c.ra.ReadAt(b, off)
	return b, err
}

// ---------------------------------------------------------------------------------------------------
// Footers, decoded byte by byte: the footer is the only fixed-layout part of the format, and a reader
// that only "finds an offset somewhere" would accept footers the snapshotter cannot read.

// gzipFooter decodes the footer; it returns whether there is a TOC offset to read (the errors are
// recorded either way).
func (c *blobCheck) gzipFooter() bool {
	if c.size < gzipFooterSize {
		c.f.errf("blob of %d bytes is shorter than the %d-byte eStargz footer", c.size, gzipFooterSize)
		return false
	}
	b, err := c.readAt(c.size-gzipFooterSize, gzipFooterSize)
	if err != nil {
		c.f.errf("reading the footer: %v", err)
		return false
	}
	off, problems := parseGzipFooter(b)
	if len(problems) > 0 {
		if lb, err := c.readAt(c.size-legacyFooterSize, legacyFooterSize); err == nil && isLegacyFooter(lb) {
			c.rep.Format = formatLegacy
			c.f.errf("legacy 47-byte stargz footer (no \"SG\" subfield): not eStargz")
			// The library still reads such blobs (LegacyGzipDecompressor): decode the TOC it would read,
			// so the hardlink-cycle guard sees it too.
			off, err := strconv.ParseInt(string(lb[12:28]), 16, 64)
			if err != nil || off <= 0 || off >= c.size-legacyFooterSize {
				return false
			}
			c.tocOff, c.tocEnd, c.rep.TOCOffset, c.rep.FooterSize = off, c.size-legacyFooterSize, off, legacyFooterSize
			return true
		}
		c.f.errf("footer: %s", strings.Join(problems, "; "))
		// The library indexes the Extra field without checking its length; it is still called (under
		// recover) so that its verdict is recorded.
		return false
	}
	c.rep.FooterSize = gzipFooterSize
	c.rep.TOCOffset = off
	c.tocOff, c.tocEnd = off, c.size-gzipFooterSize
	if off <= 0 || off >= c.tocEnd {
		c.f.errf("footer: TOC offset %d outside the blob's payload [1, %d)", off, c.tocEnd)
		return false
	}
	if libOff, _, err := openFooter(c.ra, c.size); err != nil {
		c.f.errf("upstream OpenFooter rejects the footer: %v", err)
	} else if libOff != off {
		c.f.errf("upstream OpenFooter reads TOC offset %d, the footer bytes say %d", libOff, off)
	}
	return true
}

// parseGzipFooter returns the TOC offset and, if the 51 bytes are not exactly the footer the spec
// defines, what is wrong with them.
func parseGzipFooter(b []byte) (int64, []string) {
	var bad []string
	expect := func(what string, got, want []byte) {
		if !bytes.Equal(got, want) {
			bad = append(bad, fmt.Sprintf("%s is %x, want %x", what, got, want))
		}
	}
	expect("gzip magic", b[0:2], gzipMagic)
	expect("compression method", b[2:3], []byte{8})
	expect("flags (FEXTRA only)", b[3:4], []byte{4})
	// b[4:10]: MTIME, XFL, OS carry nothing the format uses.
	expect("XLEN", b[10:12], []byte{26, 0})
	expect("subfield id", b[12:14], []byte("SG"))
	expect("subfield length", b[14:16], []byte{22, 0})
	expect("subfield magic", b[32:38], []byte("STARGZ"))
	expect("deflate data (one empty stored block)", b[38:43], emptyStored)
	expect("CRC32 and ISIZE", b[43:51], make([]byte, 8))
	hexOff := string(b[16:32])
	off, err := strconv.ParseInt(hexOff, 16, 64)
	if err != nil || strings.ToLower(hexOff) != hexOff {
		bad = append(bad, fmt.Sprintf("TOC offset %q is not 16 lower-case hex digits", hexOff))
	}
	return off, bad
}

func isLegacyFooter(b []byte) bool {
	return bytes.Equal(b[0:4], []byte{0x1f, 0x8b, 8, 4}) && bytes.Equal(b[10:12], []byte{22, 0}) &&
		bytes.Equal(b[28:34], []byte("STARGZ")) && bytes.Equal(b[34:39], emptyStored)
}

// zstdFooter decodes the zstd:chunked footer; it returns whether the TOC position it gives can be
// read safely (errors in the footer are recorded either way).
func (c *blobCheck) zstdFooter() bool {
	if c.size < zstdFooterSize {
		c.f.errf("blob of %d bytes is shorter than the %d-byte zstd:chunked footer", c.size, zstdFooterSize)
		return false
	}
	b, err := c.readAt(c.size-zstdFooterSize, zstdFooterSize)
	if err != nil {
		c.f.errf("reading the footer: %v", err)
		return false
	}
	fail := func(format string, a ...interface{}) { c.f.errf("footer: "+format, a...) }
	if !bytes.Equal(b[0:4], skippableMagic) {
		fail("skippable frame magic is %x, want %x", b[0:4], skippableMagic)
	}
	if n := binary.LittleEndian.Uint32(b[4:8]); n != 40 {
		fail("skippable frame size %d, want 40", n)
	}
	p := b[8:]
	off := binary.LittleEndian.Uint64(p[0:8])
	clen := binary.LittleEndian.Uint64(p[8:16])
	rawLen := binary.LittleEndian.Uint64(p[16:24])
	kind := binary.LittleEndian.Uint64(p[24:32])
	if !bytes.Equal(p[32:40], zstdChunkMagic) {
		fail("magic %q, want %q", p[32:40], zstdChunkMagic)
	}
	if kind != 1 {
		fail("manifest type %d, want 1 (TOC)", kind)
	}
	c.tocEnd = c.size - zstdFooterSize
	// Checked before anything trusts these numbers: the library allocates the claimed TOC length.
	if off < 8 || off > uint64(c.tocEnd) || clen > uint64(c.tocEnd)-off || off+clen != uint64(c.tocEnd) {
		fail("TOC at %d, %d bytes does not end where the footer begins (%d)", off, clen, c.tocEnd)
		c.libSkip = fmt.Sprintf("the footer claims a %d-byte TOC at %d in a %d-byte blob (the library would allocate it)", clen, off, c.size)
		return false
	}
	if rawLen > maxTOCBytes {
		fail("TOC of %d bytes uncompressed", rawLen)
		c.libSkip = fmt.Sprintf("the footer claims a %d-byte TOC", rawLen)
		return false
	}
	c.rep.FooterSize = zstdFooterSize
	c.rep.TOCOffset = int64(off)
	c.tocOff, c.zstdTOCLn, c.zstdTOCRaw = int64(off), int64(clen), int64(rawLen)
	c.rep.ZstdPosition = fmt.Sprintf("%d:%d:%d:%d", off, clen, rawLen, kind)
	frameHdr, err := c.readAt(int64(off)-8, 8)
	if err != nil || !bytes.Equal(frameHdr[0:4], skippableMagic) || uint64(binary.LittleEndian.Uint32(frameHdr[4:8])) != clen {
		fail("the TOC is not one skippable frame of %d bytes (frame header %x)", clen, frameHdr)
	}
	// Even with a bad magic or type the offsets are sane: decode the TOC, which the library may read.
	return true
}

// externalFooter checks the 46-byte footer of a blob whose TOC is external: the payload (gzip members)
// runs up to it, and it is the last member.
func (c *blobCheck) externalFooter() bool {
	if c.size < externalFooterSz {
		c.f.errf("blob of %d bytes is shorter than the %d-byte external-TOC footer", c.size, externalFooterSz)
		return false
	}
	b, err := c.readAt(c.size-externalFooterSz, externalFooterSz)
	if err != nil {
		c.f.errf("reading the footer: %v", err)
		return false
	}
	want := append([]byte{0x1f, 0x8b, 8, 4}, make([]byte, 6)...)
	want = append(want, 21, 0, 'S', 'G', 17, 0)
	want = append(append(want, []byte("STARGZEXTERNALTOC")...), emptyStored...)
	want = append(want, make([]byte, 8)...)
	// b[4:10]: MTIME, XFL, OS carry nothing the format uses.
	if !bytes.Equal(b[:4], want[:4]) || !bytes.Equal(b[10:], want[10:]) {
		c.f.errf("footer: %x is not the external-TOC footer %x", b, want)
		return false
	}
	c.rep.FooterSize = externalFooterSz
	c.rep.TOCOffset = -1
	c.tocOff, c.tocEnd = c.size-externalFooterSz, c.size-externalFooterSz
	return true
}

// externalTOCJSON reads the TOC from the external TOC blob: one gzip member holding a tar whose only
// entry is stargz.index.json (upstream's externaltoc.GzipCompressor.WriteTOCAndFooter).
func (c *blobCheck) externalTOCJSON() {
	zr, err := gzip.NewReader(bytes.NewReader(c.ext))
	if err != nil {
		c.f.errf("external TOC: not gzip: %v", err)
		return
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil || h.Name != tocName || h.Typeflag != tar.TypeReg {
		c.f.errf("external TOC: the first tar entry is not regular file %q (%v)", tocName, err)
		return
	}
	js, err := io.ReadAll(io.LimitReader(tr, maxTOCBytes+1))
	if err != nil {
		c.f.errf("external TOC: reading %s: %v", tocName, err)
		return
	}
	if h2, err := tr.Next(); err != io.EOF {
		c.f.errf("external TOC: %s is not the only tar entry (%v, %v)", tocName, h2, err)
	}
	c.tocJSON = js
}

// ---------------------------------------------------------------------------------------------------
// TOC

func (c *blobCheck) gzipTOC() {
	cr := &countingReader{r: bufio.NewReader(io.NewSectionReader(c.ra, c.tocOff, c.tocEnd-c.tocOff))}
	zr, err := gzip.NewReader(cr)
	if err != nil {
		c.f.errf("TOC: no gzip member at the footer's offset %d: %v", c.tocOff, err)
		return
	}
	zr.Multistream(false)
	raw, err := io.ReadAll(io.LimitReader(zr, maxTOCBytes+4096))
	if err != nil {
		c.f.errf("TOC: decompressing the member at %d: %v", c.tocOff, err)
		return
	}
	if c.tocOff+cr.n != c.tocEnd {
		c.f.errf("TOC: its gzip member ends at %d, the footer starts at %d", c.tocOff+cr.n, c.tocEnd)
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	h, err := tr.Next()
	if err != nil {
		c.f.errf("TOC: the member at %d holds no tar entry: %v", c.tocOff, err)
		return
	}
	if h.Name != tocName || h.Typeflag != tar.TypeReg {
		c.f.errf("TOC: the member at %d starts with %q (type %c), want regular file %q", c.tocOff, h.Name, h.Typeflag, tocName)
		return
	}
	js, err := io.ReadAll(tr)
	if err != nil {
		c.f.errf("TOC: reading %s: %v", tocName, err)
		return
	}
	if h2, err := tr.Next(); err != io.EOF {
		if err == nil {
			c.f.errf("TOC: %s is not the last tar entry (%q follows)", tocName, h2.Name)
		} else {
			c.f.errf("TOC: after %s: %v", tocName, err)
		}
	}
	c.tocJSON = js
}

func (c *blobCheck) zstdTOC() {
	comp, err := c.readAt(c.tocOff, c.zstdTOCLn)
	if err != nil {
		c.f.errf("TOC: reading: %v", err)
		return
	}
	sum := sha256.Sum256(comp)
	c.rep.ZstdChecksum = "sha256:" + hex.EncodeToString(sum[:])
	dec, err := zstd.NewReader(bytes.NewReader(comp), zstd.WithDecoderConcurrency(1))
	if err != nil {
		c.f.errf("TOC: %v", err)
		return
	}
	defer dec.Close()
	js, err := io.ReadAll(io.LimitReader(dec, maxTOCBytes+1))
	if err != nil {
		c.f.errf("TOC: decompressing: %v", err)
		return
	}
	if int64(len(js)) != c.zstdTOCRaw {
		c.f.errf("TOC: %d bytes decompressed, the footer says %d", len(js), c.zstdTOCRaw)
	}
	c.tocJSON = js
}

var knownTypes = map[string]bool{"dir": true, "reg": true, "symlink": true, "hardlink": true, "char": true, "block": true, "fifo": true, "chunk": true}

// parseTOC decodes the TOC and checks the rules the spec sets on it, and resolves the data chunks.
func (c *blobCheck) parseTOC() {
	var toc tocDoc
	dec := json.NewDecoder(bytes.NewReader(c.tocJSON))
	if err := dec.Decode(&toc); err != nil {
		c.f.errf("TOC: not valid JSON: %v", err)
		return
	}
	if toc.Version != 1 {
		c.f.errf("TOC: version %d, want 1", toc.Version)
	}
	c.toc = &toc
	seen := map[string]bool{}
	occ := map[string]int{}
	var cur *tocEnt // the reg entry whose chunks are being read
	var curOcc int
	var next int64 // the chunkOffset the next chunk of cur must have
	var lastOff, lastInner int64 = -1, -1
	endFile := func() {
		if cur != nil && next != cur.Size {
			c.f.errf("TOC: the chunks of %q cover %d of its %d bytes", cur.Name, next, cur.Size)
		}
		cur = nil
	}
	for i := range toc.Entries {
		e := &toc.Entries[i]
		name := cleanName(e.Name)
		if !knownTypes[e.Type] {
			c.f.errf("TOC: entry %d %q has unknown type %q", i, e.Name, e.Type)
			continue
		}
		if e.Type != "chunk" {
			endFile()
			c.rep.Entries++
			if name == tocName {
				c.f.errf("TOC: lists itself (%q)", e.Name)
			}
			occ[name]++
		}
		switch e.Type {
		case "reg":
			c.rep.Files++
			if e.Size < 0 {
				c.f.errf("TOC: %q has negative size", e.Name)
			}
			if e.Size > 0 {
				cur, curOcc, next = e, occ[name]-1, 0
				if _, err := digest.Parse(e.Digest); err != nil {
					c.f.errf("TOC: %q: file digest %q: %v", e.Name, e.Digest, err)
				}
			}
		case "symlink", "hardlink":
			if e.LinkName == "" {
				c.f.errf("TOC: %s %q has no linkName", e.Type, e.Name)
			}
			if e.Type == "hardlink" && !seen[cleanName(e.LinkName)] {
				c.f.errf("TOC: hardlink %q points at %q, which is not listed before it", e.Name, e.LinkName)
			}
		case "chunk":
			if cur == nil || cleanName(cur.Name) != name {
				c.f.errf("TOC: chunk entry %d %q does not follow its regular file", i, e.Name)
				continue
			}
		}
		if e.Type != "chunk" {
			seen[name] = true
		}
		if cur == nil || (e.Type == "reg" && e.Size == 0) {
			continue
		}
		// A data entry: the file's first chunk (reg) or a following one.
		if e.ChunkOffset != next {
			c.f.errf("TOC: chunk of %q at chunkOffset %d, want %d", e.Name, e.ChunkOffset, next)
		}
		size := e.ChunkSize
		if size == 0 {
			size = cur.Size - e.ChunkOffset
		} else if e.ChunkOffset+size == cur.Size && i+1 < len(toc.Entries) && toc.Entries[i+1].Type == "chunk" {
			c.f.errf("TOC: %q is covered before its last chunk entry", e.Name)
		}
		if size <= 0 || e.ChunkOffset+size > cur.Size {
			c.f.errf("TOC: chunk of %q at %d has size %d, past the file's %d bytes", e.Name, e.ChunkOffset, size, cur.Size)
			size = 0
		}
		next = e.ChunkOffset + size
		if e.InnerOffset < 0 || e.Offset < 0 {
			c.f.errf("TOC: chunk of %q has a negative offset (%d, inner %d)", e.Name, e.Offset, e.InnerOffset)
		}
		// Readers find a chunk by (offset, innerOffset); both orderings must be strictly increasing,
		// or two chunks alias and a reader's "next offset" goes backwards.
		if e.Offset < lastOff || (e.Offset == lastOff && e.InnerOffset <= lastInner) {
			c.f.errf("TOC: chunk of %q at offset %d (inner %d) does not come after the previous one at %d (inner %d)", e.Name, e.Offset, e.InnerOffset, lastOff, lastInner)
		}
		lastOff, lastInner = e.Offset, e.InnerOffset
		if e.Offset >= c.tocOff {
			c.f.errf("TOC: chunk of %q at offset %d is not before the TOC (%d)", e.Name, e.Offset, c.tocOff)
		}
		if _, err := digest.Parse(e.ChunkDigest); err != nil {
			c.f.errf("TOC: chunk of %q at %d: chunkDigest %q: %v", e.Name, e.ChunkOffset, e.ChunkDigest, err)
		}
		if e.InnerOffset != 0 {
			c.rep.InnerOffsetChunks++
		}
		c.chunks = append(c.chunks, chunk{entry: i, file: name, occ: curOcc, offset: e.Offset, inner: e.InnerOffset, off: e.ChunkOffset, size: size, digest: e.ChunkDigest})
		c.rep.Chunks++
	}
	endFile()
}

// hardlinkCycle reports a hardlink chain that loops, in the library's own terms (the last entry of a
// name wins; links are followed by name): estargz.Open recurses along such a chain until the Go stack
// overflows, which is fatal and cannot be recovered.
func hardlinkCycle(toc *tocDoc) string {
	byName := map[string]*tocEnt{}
	for i := range toc.Entries {
		if e := &toc.Entries[i]; e.Type != "chunk" {
			byName[cleanName(e.Name)] = e
		}
	}
	for name, e := range byName {
		seen := map[string]bool{name: true}
		for e.Type == "hardlink" {
			target := cleanName(e.LinkName)
			if seen[target] {
				return fmt.Sprintf("hardlink cycle through %q (the library would overflow its stack)", name)
			}
			seen[target] = true
			next, ok := byName[target]
			if !ok {
				break
			}
			e = next
		}
	}
	return ""
}

// ---------------------------------------------------------------------------------------------------
// Sequential decoding: the blob as a plain tar.gz / tar.zst.

// countingReader counts what its consumers took. Over a bufio.Reader it is an io.ByteReader, so
// compress/flate reads through it byte by byte and never ahead: the count is exactly where a gzip
// member ends.
type countingReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// countingWriter hashes and counts the uncompressed stream (diff_id, uncompressed_size).
type countingWriter struct {
	w io.Writer
	h hashWriter
	n int64
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.h.Write(p)
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// decompress writes the blob's uncompressed stream to w. For gzip it walks member by member and
// returns them, so the compressed offset of every member is known exactly.
func (c *blobCheck) decompress(w io.Writer) ([]member, error) {
	sr := io.NewSectionReader(c.ra, 0, c.size)
	if c.rep.Format == formatZstd {
		dec, err := zstd.NewReader(bufio.NewReaderSize(sr, 1<<20), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<34))
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		_, err = io.Copy(w, dec)
		return nil, err
	}
	cr := &countingReader{r: bufio.NewReaderSize(sr, 1<<20)}
	var members []member
	var u int64
	var zr gzip.Reader
	for {
		start := cr.n
		if _, err := cr.r.Peek(1); err == io.EOF {
			return members, nil
		}
		if err := zr.Reset(cr); err != nil {
			return members, fmt.Errorf("gzip member %d at %d: %v", len(members), start, err)
		}
		zr.Multistream(false)
		n, err := io.Copy(w, &zr)
		if err != nil {
			return members, fmt.Errorf("gzip member %d at %d: %v", len(members), start, err)
		}
		members = append(members, member{c: start, u: u, clen: cr.n - start, ulen: n})
		u += n
	}
}

func tarType(f byte) string {
	switch f {
	case tar.TypeReg, tar.TypeRegA:
		return "reg"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeDir:
		return "dir"
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("unsupported(%c)", f)
}

// offsetReader tells the tar reader's position in the uncompressed stream. archive/tar reads header
// blocks and payloads exactly, so after Next() the position is where the payload starts.
type offsetReader struct {
	r io.Reader
	n int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	o.n += int64(n)
	return n, err
}

func (c *blobCheck) sequential() {
	pr, pw := io.Pipe()
	cw := &countingWriter{w: pw, h: sha256.New()}
	type result struct {
		members []member
		err     error
	}
	done := make(chan result, 1)
	go func() {
		m, err := c.decompress(cw)
		pw.CloseWithError(err)
		done <- result{m, err}
	}()
	or := &offsetReader{r: pr}
	tr := tar.NewReader(or)
	var tarErr error
	var pos int64 // where the next header starts
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			tarErr = err
			break
		}
		if h.Typeflag == tar.TypeXGlobalHeader && c.ext != nil {
			// A lossless conversion (--estargz-keep-diff-id) keeps its source's PAX global headers
			// (git archive's comment): archive/tar applies none of their records to other entries.
			c.f.warnf("PAX global header at %d (kept by a lossless conversion): no TOC entry describes it", pos)
			pos = (or.n + 511) &^ 511
			continue
		}
		te := tarEnt{name: cleanName(h.Name), typ: tarType(h.Typeflag), hdr: h, hdrAt: pos, dataAt: or.n}
		hh := sha256.New()
		var small bytes.Buffer
		n, err := io.Copy(io.MultiWriter(hh, &limitedBuffer{&small, 16}), tr)
		if err != nil {
			tarErr = err
			break
		}
		// Header-only types (links, devices, dirs) have no payload whatever their size field says;
		// archive/tar skips none, and so does every other reader.
		if want := h.Size; te.typ == "reg" && n != want {
			tarErr = fmt.Errorf("%q: %d payload bytes, header says %d", h.Name, n, h.Size)
			break
		}
		te.digest = "sha256:" + hex.EncodeToString(hh.Sum(nil))
		if n <= 16 {
			te.contents = small.Bytes()
		}
		pos = (or.n + 511) &^ 511
		c.tarByName[te.name] = append(c.tarByName[te.name], len(c.tarEnts))
		c.tarEnts = append(c.tarEnts, te)
	}
	endOfArchive := or.n
	// Whatever follows the end of the archive: zero padding, or (lossless blobs) the TOC member.
	tail := &nonZeroTracker{at: or.n, first: -1}
	if tarErr == nil {
		_, tarErr = io.Copy(tail, pr)
	} else {
		// Still decompress to the end: the member map, diff_id and size do not depend on the tar.
		io.Copy(io.Discard, pr)
	}
	res := <-done
	c.members = res.members
	if res.err != nil {
		c.f.errf("plain decompression: %v", res.err)
	} else if tarErr != nil {
		c.f.errf("plain tar decoding: %v", tarErr)
	}
	c.rep.TarEntries = len(c.tarEnts)
	c.rep.GzipMembers = len(c.members)
	if res.err == nil {
		c.rep.UncompressedSize = cw.n
		c.rep.DiffID = "sha256:" + hex.EncodeToString(cw.h.Sum(nil))
	}
	if tail.first >= 0 && tarErr == nil {
		// Accepted only when every non-zero byte after the end of the archive lies in the TOC member:
		// that is what estargz's lossless mode writes (the source tar's end blocks, then the TOC).
		var inTOC bool
		for _, m := range c.members {
			if m.c == c.tocOff && tail.first >= m.u && tail.last < m.u+m.ulen {
				inTOC = true
			}
		}
		if inTOC {
			c.f.warnf("the TOC (%s) follows the tar's end-of-archive marker (lossless mode): a plain tar reader does not see it", tocName)
		} else if c.ext != nil {
			// A lossless conversion with an external TOC (--estargz-keep-diff-id) keeps whatever
			// its source had after the end-of-archive: readers ignore it, but it is unusual.
			c.f.warnf("data after the tar's end-of-archive marker at %d (kept by a lossless conversion): tar readers ignore it", endOfArchive)
		} else {
			c.f.errf("non-zero data at uncompressed offset %d, after the tar's end-of-archive marker at %d", tail.first, endOfArchive)
		}
	}
}

type limitedBuffer struct {
	b *bytes.Buffer
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - l.b.Len(); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		l.b.Write(p[:room])
	}
	return len(p), nil
}

type nonZeroTracker struct{ at, first, last int64 }

func (t *nonZeroTracker) Write(p []byte) (int, error) {
	for i, b := range p {
		if b != 0 {
			if t.first < 0 {
				t.first = t.at + int64(i)
			}
			t.last = t.at + int64(i)
		}
	}
	t.at += int64(len(p))
	return len(p), nil
}

// ---------------------------------------------------------------------------------------------------
// Cross-checks between the TOC and the decoded stream

// tarFor is the tar entry the occ-th TOC entry named name describes.
func (c *blobCheck) tarFor(name string, occ int) *tarEnt {
	idx := c.tarByName[name]
	if occ < len(idx) {
		return &c.tarEnts[idx[occ]]
	}
	return nil
}

// memberAlignment checks "gzip headers MUST be at" every chunk's offset: a reader fetches the range
// [offset, next offset) and decompresses it on its own, so each chunk must start a member (or, with
// innerOffset, lie innerOffset bytes into one).
func (c *blobCheck) memberAlignment() {
	if len(c.members) == 0 {
		return
	}
	byC := map[int64]member{}
	for _, m := range c.members {
		byC[m.c] = m
	}
	for _, ch := range c.chunks {
		te := c.tarFor(ch.file, ch.occ)
		if te == nil {
			continue // reported by compareTOCAndTar
		}
		m, ok := byC[ch.offset]
		if !ok {
			c.f.errf("chunk of %q at %d: no gzip member starts at its offset %d", ch.file, ch.off, ch.offset)
			continue
		}
		at := te.dataAt + ch.off
		if at-m.u != ch.inner || at+ch.size > m.u+m.ulen {
			c.f.errf("chunk of %q at %d: its data is at uncompressed %d, the member at %d spans [%d, %d) and innerOffset is %d", ch.file, ch.off, at, ch.offset, m.u, m.u+m.ulen, ch.inner)
		}
	}
	if m, ok := byC[c.tocOff]; !ok {
		c.f.errf("no gzip member starts at the TOC offset %d", c.tocOff)
	} else if idx := c.tarByName[tocName]; len(idx) > 0 && c.tarEnts[idx[len(idx)-1]].hdrAt != m.u {
		c.f.errf("the TOC member does not start with the %s tar header", tocName)
	}
	if last := c.members[len(c.members)-1]; last.c != c.tocEnd || last.ulen != 0 {
		c.f.errf("the last gzip member (at %d, %d bytes uncompressed) is not the empty footer at %d", last.c, last.ulen, c.tocEnd)
	}
}

// chunksIndependently decodes every chunk from its own offset, as a lazy reader does, and checks its
// digest; the concatenated chunks must match the file's digest.
func (c *blobCheck) chunksIndependently() {
	fileHash := sha256.New()
	for i, ch := range c.chunks {
		if ch.off == 0 {
			fileHash.Reset()
		}
		data, err := c.decodeChunk(ch)
		if err != nil {
			c.f.errf("chunk of %q at %d (blob offset %d): %v", ch.file, ch.off, ch.offset, err)
			continue
		}
		if got := digest.FromBytes(data).String(); got != ch.digest {
			c.f.errf("chunk of %q at %d (blob offset %d): content is %s, chunkDigest says %s", ch.file, ch.off, ch.offset, got, ch.digest)
		}
		fileHash.Write(data)
		reg := &c.toc.Entries[c.fileEntry(i)]
		if ch.off+ch.size == reg.Size {
			if got := "sha256:" + hex.EncodeToString(fileHash.Sum(nil)); got != reg.Digest {
				c.f.errf("%q: its chunks hash to %s, the TOC digest is %s", ch.file, got, reg.Digest)
			}
		}
	}
}

// fileEntry is the TOC index of the reg entry chunk i belongs to.
func (c *blobCheck) fileEntry(i int) int {
	for c.chunks[i].off != 0 && i > 0 {
		i--
	}
	return c.chunks[i].entry
}

func (c *blobCheck) decodeChunk(ch chunk) ([]byte, error) {
	if ch.offset < 0 || ch.offset >= c.size || ch.size < 0 || ch.size > maxTOCBytes {
		return nil, fmt.Errorf("offset %d / size %d outside the blob", ch.offset, ch.size)
	}
	sr := io.NewSectionReader(c.ra, ch.offset, c.size-ch.offset)
	var r io.Reader
	if c.rep.Format == formatZstd {
		head := make([]byte, 4)
		if _, err := sr.ReadAt(head, 0); err != nil || !bytes.Equal(head, zstdMagic) {
			return nil, fmt.Errorf("no zstd frame starts at its offset (%x)", head)
		}
		// One decoder for all chunks: a new one per chunk costs its window buffers every time.
		if c.zdec == nil {
			dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, err
			}
			c.zdec = dec
		}
		if err := c.zdec.Reset(bufio.NewReader(sr)); err != nil {
			return nil, err
		}
		r = c.zdec
	} else {
		zr, err := gzip.NewReader(bufio.NewReader(sr))
		if err != nil {
			return nil, fmt.Errorf("no gzip member starts at its offset: %v", err)
		}
		zr.Multistream(false) // a chunk must fit in one member
		r = zr
	}
	if n, err := io.CopyN(io.Discard, r, ch.inner); err != nil {
		return nil, fmt.Errorf("skipping innerOffset %d: %d bytes, %v", ch.inner, n, err)
	}
	data := make([]byte, ch.size)
	if n, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("only %d of %d bytes decode from its member: %v", n, ch.size, err)
	}
	return data, nil
}

// compareTOCAndTar: the TOC must describe exactly the tar. Names, types, sizes, links and contents
// are errors; metadata the spec says SHOULD be respected are warnings.
func (c *blobCheck) compareTOCAndTar() {
	equal := true
	lastTOC := map[string]int{}
	var tocOrder []string
	for i, e := range c.toc.Entries {
		if e.Type != "chunk" {
			lastTOC[cleanName(e.Name)] = i
			tocOrder = append(tocOrder, cleanName(e.Name))
		}
	}
	var tarOrder []string
	for _, te := range c.tarEnts {
		if te.name != tocName {
			tarOrder = append(tarOrder, te.name)
		}
	}
	unames, gnames := map[int]string{}, map[int]string{}
	for i := range c.toc.Entries {
		e := &c.toc.Entries[i]
		// The writer leaves out a user/group name equal to the last one written for that id.
		if e.Uname != "" {
			unames[e.UID] = e.Uname
		}
		if e.Gname != "" {
			gnames[e.GID] = e.Gname
		}
		name := cleanName(e.Name)
		if e.Type == "chunk" || lastTOC[name] != i {
			continue
		}
		idx := c.tarByName[name]
		if len(idx) == 0 {
			c.f.errf("TOC entry %q is not in the tar", e.Name)
			equal = false
			continue
		}
		te := &c.tarEnts[idx[len(idx)-1]]
		if !c.compareEntry(e, te, unames[e.UID], gnames[e.GID]) {
			equal = false
		}
	}
	for name := range c.tarByName {
		if _, ok := lastTOC[name]; !ok && name != tocName {
			c.f.errf("tar entry %q is not in the TOC", name)
			equal = false
		}
	}
	if equal && strings.Join(tocOrder, "\x00") != strings.Join(tarOrder, "\x00") {
		c.f.warnf("the TOC lists the entries in another order than the tar")
	}
	c.rep.TarEqual = equal
}

func (c *blobCheck) compareEntry(e *tocEnt, te *tarEnt, uname, gname string) bool {
	h := te.hdr
	ok := true
	bad := func(format string, a ...interface{}) {
		c.f.errf("%q: "+format, append([]interface{}{e.Name}, a...)...)
		ok = false
	}
	if e.Type != te.typ {
		bad("type %s in the TOC, %s in the tar", e.Type, te.typ)
		return false
	}
	switch e.Type {
	case "reg":
		if e.Size != h.Size {
			bad("size %d in the TOC, %d in the tar", e.Size, h.Size)
		} else if e.Size > 0 && e.Digest != te.digest {
			bad("content %s in the tar, the TOC digest is %s", te.digest, e.Digest)
		}
	case "symlink":
		if e.LinkName != h.Linkname {
			bad("symlink to %q in the TOC, %q in the tar", e.LinkName, h.Linkname)
		}
	case "hardlink":
		if cleanName(e.LinkName) != cleanName(h.Linkname) {
			bad("hardlink to %q in the TOC, %q in the tar", e.LinkName, h.Linkname)
		}
	}
	warn := func(what string, toc, tarv interface{}) {
		if fmt.Sprint(toc) != fmt.Sprint(tarv) {
			c.f.warnf("%q: %s %v in the TOC, %v in the tar", e.Name, what, toc, tarv)
		}
	}
	warn("mode", strconv.FormatInt(e.Mode, 8), strconv.FormatInt(h.Mode, 8))
	warn("uid", e.UID, h.Uid)
	warn("gid", e.GID, h.Gid)
	// An empty name in the TOC means "the last name written for this id" (the writer's nameIfChanged),
	// so a tar entry without a name after one with a name reads back with that name: the format
	// cannot say "no name" there, which is not the blob's fault.
	if e.Uname != "" || h.Uname != "" {
		warn("user name", uname, h.Uname)
	}
	if e.Gname != "" || h.Gname != "" {
		warn("group name", gname, h.Gname)
	}
	warn("modtime", e.ModTime, formatModTime(h.ModTime))
	if e.Type == "char" || e.Type == "block" {
		warn("device", fmt.Sprintf("%d:%d", e.DevMajor, e.DevMinor), fmt.Sprintf("%d:%d", h.Devmajor, h.Devminor))
	}
	tx := map[string]string{}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			tx[strings.TrimPrefix(k, "SCHILY.xattr.")] = v
		}
	}
	ex := map[string]string{}
	for k, v := range e.Xattrs {
		ex[k] = string(v)
	}
	warn("xattrs", sortedMap(ex), sortedMap(tx))
	return ok
}

func sortedMap(m map[string]string) string {
	b, _ := json.Marshal(m) // encoding/json sorts map keys
	return string(b)
}

// formatModTime is the TOC's modtime for a tar time: RFC 3339 in UTC, rounded to the second, and
// absent for the zero time and the epoch.
func formatModTime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return ""
	}
	return t.UTC().Round(time.Second).Format(time.RFC3339)
}

// landmark reads the landmark the way the snapshotter does (the root-level name), in tar order:
// prefetch_bytes is the landmark's offset, the range the snapshotter fetches ahead.
func (c *blobCheck) landmark() {
	if c.rep.Format == formatLegacy {
		return
	}
	for i, te := range c.tarEnts {
		if te.name != prefetchLandmark && te.name != noPrefetchMark {
			continue
		}
		kind := "prefetch"
		if te.name == noPrefetchMark {
			kind = "no-prefetch"
		}
		c.rep.Landmark = &kind
		if te.typ != "reg" || !bytes.Equal(te.contents, []byte{landmarkByte}) {
			c.f.errf("landmark %s is not a regular file holding the single byte 0x0f", te.name)
		}
		var before []string
		for _, p := range c.tarEnts[:i] {
			if p.name != "" { // the root directory ("./") is no path one prioritizes
				before = append(before, p.name)
			}
		}
		var prefetch int64
		if kind == "prefetch" {
			c.rep.Prioritized = append([]string{}, before...)
			if c.toc != nil {
				for _, e := range c.toc.Entries {
					if cleanName(e.Name) == te.name && e.Type == "reg" {
						prefetch = e.Offset
					}
				}
			}
		} else if len(before) > 0 {
			c.f.warnf("%s is not the first entry (%d entries before it)", noPrefetchMark, len(before))
		}
		c.rep.PrefetchBytes = &prefetch
		if len(c.tarByName[te.name]) > 1 {
			c.f.errf("landmark %s appears %d times", te.name, len(c.tarByName[te.name]))
		}
		if other := map[string]string{prefetchLandmark: noPrefetchMark, noPrefetchMark: prefetchLandmark}[te.name]; len(c.tarByName[other]) > 0 {
			c.f.errf("both %s and %s are present", te.name, other)
		}
		return
	}
	if len(c.tarEnts) > 0 || c.toc != nil {
		c.f.warnf("no landmark (%s / %s): the snapshotter prefetches by its configured size", prefetchLandmark, noPrefetchMark)
	}
}
