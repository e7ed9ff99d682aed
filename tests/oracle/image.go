package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	annTOCDigest     = "containerd.io/snapshot/stargz/toc.digest"
	annLayerDigest   = "containerd.io/snapshot/stargz/layer.digest" // on each layer of a TOC image
	tocImageSuffix   = "-esgztoc"
	annUncompressed  = "io.containers.estargz.uncompressed-size"
	annZstdChecksum  = "io.containers.zstd-chunked.manifest-checksum"
	annZstdPosition  = "io.containers.zstd-chunked.manifest-position"
	mtOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mtOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mtDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	maxManifestBytes = 8 << 20 // manifests, indexes and configs are small; refuse to buffer more
)

// ImageReport is the JSON report of `estargz-check image`. Its errors and warnings hold its own and,
// prefixed with where they come from, every manifest's, layer's and blob's: a caller reads one list.
type ImageReport struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	findings
	Source        string            `json:"source"`
	Library       string            `json:"library"`
	Manifests     []*ManifestReport `json:"manifests"`
	EStargzLayers int               `json:"estargz_layers"`
	Layers        int               `json:"layers"`
}

type ManifestReport struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	findings
	Digest    string         `json:"digest"`
	MediaType string         `json:"mediaType"`
	Platform  string         `json:"platform,omitempty"`
	Config    string         `json:"config"`
	Layers    []*LayerReport `json:"layers"`
}

type LayerReport struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	findings
	Index                      int         `json:"index"`
	Digest                     string      `json:"digest"`
	MediaType                  string      `json:"mediaType"`
	Size                       int64       `json:"size"`
	TOCDigestAnnotation        string      `json:"toc_digest_annotation,omitempty"`
	UncompressedSizeAnnotation string      `json:"uncompressed_size_annotation,omitempty"`
	ExternalTOC                string      `json:"external_toc,omitempty"` // TOC_IMAGE@TOC_BLOB_DIGEST
	UncompressedSize           int64       `json:"uncompressed_size"`
	DiffID                     string      `json:"diff_id"`
	ConfigDiffID               string      `json:"config_diff_id"`
	Blob                       *BlobReport `json:"blob,omitempty"`
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// absorb adds a nested level's findings to an outer one, each prefixed with where it comes from.
func absorb(outer *findings, prefix string, inner *findings) {
	for _, e := range inner.Errors {
		outer.errf("%s: %s", prefix, e)
	}
	for _, w := range inner.Warnings {
		outer.warnf("%s: %s", prefix, w)
	}
}

// finish seals every level bottom-up; --strict makes a warning at any level a failure of that level
// and of every level above it.
func (r *ImageReport) finish(strict bool) {
	for _, m := range r.Manifests {
		where := "manifest " + shortDigest(m.Digest)
		if m.Platform != "" {
			where += " (" + m.Platform + ")"
		}
		for _, l := range m.Layers {
			if l.Blob != nil {
				l.Blob.finish(strict)
				absorb(&l.findings, "blob", &l.Blob.findings)
			}
			l.seal()
			l.OK, l.Error = l.verdict(strict)
			absorb(&m.findings, fmt.Sprintf("layer %d %s", l.Index, shortDigest(l.Digest)), &l.findings)
		}
		m.seal()
		m.OK, m.Error = m.verdict(strict)
		absorb(&r.findings, where, &m.findings)
	}
	if r.Manifests == nil {
		r.Manifests = []*ManifestReport{}
	}
	r.seal()
	r.OK, r.Error = r.verdict(strict)
}

// store is where an image's blobs come from: an OCI layout directory or a registry.
type store interface {
	roots() ([]ocispec.Descriptor, error)
	fetch(d ocispec.Descriptor) ([]byte, error)
	// open gives the blob for reading; its digest and size are checked by the caller.
	open(d ocispec.Descriptor) (ra io.ReaderAt, size int64, done func(), err error)
	// tocImage is where the snapshotter looks for the TOC of a layer whose TOC is external: the
	// image tagged TAG-esgztoc in the same repository (the layout entry NAME-esgztoc), and its name.
	tocImage() (store, string, error)
}

func checkImage(src string) *ImageReport {
	rep := &ImageReport{Source: src, Library: libraryVersion}
	var s store
	if strings.HasPrefix(src, "local://") {
		dir, name := parseLayoutRef(strings.TrimPrefix(src, "local://"))
		if dir == "" {
			usage(src + ": empty directory path")
		}
		s = &layoutStore{dir: dir, name: name}
	} else if st, err := os.Stat(src); err == nil && st.IsDir() {
		s = &layoutStore{dir: src}
	} else {
		rs, err := newRegistryStore(src)
		if err != nil {
			usage(err.Error())
		}
		s = rs
	}
	roots, err := s.roots()
	if err != nil {
		rep.errf("%v", err)
		return rep
	}
	ic := &imageCheck{s: s, rep: rep, seen: map[string]bool{}}
	for _, d := range roots {
		ic.walk(d, platformString(d.Platform), 0)
	}
	if len(rep.Manifests) == 0 && len(rep.Errors) == 0 {
		rep.errf("no image manifest found")
	}
	return rep
}

type imageCheck struct {
	s    store
	rep  *ImageReport
	seen map[string]bool

	// The TOC image, looked up at the first layer whose TOC is external.
	tocLooked bool
	tocStore  store
	tocName   string
	tocErr    error
	tocs      map[string]ocispec.Descriptor // layer digest -> the TOC image's layer annotated with it
}

func platformString(p *ocispec.Platform) string {
	if p == nil {
		return ""
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func verifyContent(d ocispec.Descriptor, b []byte) error {
	if int64(len(b)) != d.Size {
		return fmt.Errorf("%s: %d bytes, the descriptor says %d", d.Digest, len(b), d.Size)
	}
	if got := digest.FromBytes(b); got != d.Digest {
		return fmt.Errorf("%s: content hashes to %s", d.Digest, got)
	}
	return nil
}

func (ic *imageCheck) walk(d ocispec.Descriptor, platform string, depth int) {
	if depth > 8 {
		ic.rep.errf("indexes nested deeper than 8 at %s", d.Digest)
		return
	}
	if ic.seen[d.Digest.String()+platform] {
		return
	}
	ic.seen[d.Digest.String()+platform] = true
	b, err := ic.s.fetch(d)
	if err != nil {
		ic.rep.errf("fetching %s: %v", d.Digest, err)
		return
	}
	var head struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Manifests     json.RawMessage   `json:"manifests"`
		Config        json.RawMessage   `json:"config"`
		Layers        json.RawMessage   `json:"layers"`
		Annotations   map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		ic.rep.errf("%s: not JSON: %v", d.Digest, err)
		return
	}
	mt := d.MediaType
	if mt == "" {
		mt = head.MediaType
	}
	if head.MediaType != "" && d.MediaType != "" && head.MediaType != d.MediaType {
		ic.rep.errf("%s: mediaType %s in the content, %s in its descriptor", d.Digest, head.MediaType, d.MediaType)
	}
	if head.SchemaVersion != 2 {
		ic.rep.errf("%s: schemaVersion %d, want 2", d.Digest, head.SchemaVersion)
	}
	switch {
	case mt == mtOCIIndex || mt == mtDockerList || (mt == "" && head.Manifests != nil):
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			ic.rep.errf("%s: index: %v", d.Digest, err)
			return
		}
		for _, m := range idx.Manifests {
			ic.walk(m, platformString(m.Platform), depth+1)
		}
	case mt == mtOCIManifest || mt == mtDockerManifest || (mt == "" && head.Layers != nil):
		ic.checkManifest(d, b, mt, platform)
	default:
		ic.rep.warnf("%s: skipped, media type %q is neither an index nor an image manifest", d.Digest, mt)
	}
}

func (ic *imageCheck) checkManifest(d ocispec.Descriptor, b []byte, mt, platform string) {
	mr := &ManifestReport{Digest: d.Digest.String(), MediaType: mt, Platform: platform, Layers: []*LayerReport{}}
	ic.rep.Manifests = append(ic.rep.Manifests, mr)
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		mr.errf("manifest: %v", err)
		return
	}
	mr.Config = m.Config.Digest.String()
	var cfg ocispec.Image
	cb, err := ic.s.fetch(m.Config)
	if err != nil {
		mr.errf("config %s: %v", m.Config.Digest, err)
	} else if err := json.Unmarshal(cb, &cfg); err != nil {
		mr.errf("config %s: %v", m.Config.Digest, err)
	} else {
		if cfg.RootFS.Type != "layers" {
			mr.errf("config rootfs.type %q, want \"layers\"", cfg.RootFS.Type)
		}
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			mr.errf("config lists %d diff_ids for %d layers", len(cfg.RootFS.DiffIDs), len(m.Layers))
		}
		if got := cfg.OS + "/" + cfg.Architecture; platform != "" && !strings.HasPrefix(platform, got) {
			mr.warnf("the index says platform %s, the config %s", platform, got)
		}
	}
	for i, l := range m.Layers {
		var want string
		if i < len(cfg.RootFS.DiffIDs) {
			want = cfg.RootFS.DiffIDs[i].String()
		}
		mr.Layers = append(mr.Layers, ic.checkLayer(i, l, want))
	}
}

func layerCompression(mt string) (string, bool) {
	switch {
	case strings.HasSuffix(mt, "tar+gzip") || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip" ||
		mt == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return "gzip", true
	case strings.HasSuffix(mt, "tar+zstd"):
		return "zstd", true
	case strings.HasSuffix(mt, ".tar") || strings.HasSuffix(mt, "tar"):
		return "none", true
	}
	return "", false
}

func (ic *imageCheck) checkLayer(i int, d ocispec.Descriptor, configDiffID string) *LayerReport {
	lr := &LayerReport{Index: i, Digest: d.Digest.String(), MediaType: d.MediaType, Size: d.Size, ConfigDiffID: configDiffID}
	ic.rep.Layers++
	lr.TOCDigestAnnotation = d.Annotations[annTOCDigest]
	lr.UncompressedSizeAnnotation = d.Annotations[annUncompressed]
	compression, known := layerCompression(d.MediaType)
	if !known {
		lr.errf("media type %q is not a layer type", d.MediaType)
	}
	ra, size, done, err := ic.s.open(d)
	if err != nil {
		lr.errf("blob: %v", err)
		return lr
	}
	defer done()
	if size != d.Size {
		lr.errf("blob is %d bytes, the descriptor says %d", size, d.Size)
	}
	if lr.TOCDigestAnnotation != "" {
		ic.rep.EStargzLayers++
		var ext []byte
		if hasExternalFooter(ra, size) {
			if ext, lr.ExternalTOC, err = ic.externalTOC(lr.Digest); err != nil {
				lr.errf("its TOC is external: %v", err)
				return lr
			}
		}
		lr.Blob = checkBlobWithTOC(ra, size, lr.TOCDigestAnnotation, ext)
		lr.Blob.seal()
		lr.DiffID, lr.UncompressedSize = lr.Blob.DiffID, lr.Blob.UncompressedSize
		if lr.Blob.BlobDigest != lr.Digest {
			lr.errf("blob content hashes to %s", lr.Blob.BlobDigest)
		}
		want := map[string]string{formatEStargz: "gzip", formatLegacy: "gzip", formatZstd: "zstd"}[lr.Blob.Format]
		if known && want != "" && want != compression {
			lr.errf("media type %s, but the blob is %s", d.MediaType, lr.Blob.Format)
		}
		if lr.UncompressedSizeAnnotation == "" {
			lr.warnf("no %s annotation", annUncompressed)
		} else if n, err := strconv.ParseInt(lr.UncompressedSizeAnnotation, 10, 64); err != nil || n != lr.UncompressedSize {
			lr.errf("%s annotation %q, the blob decompresses to %d bytes", annUncompressed, lr.UncompressedSizeAnnotation, lr.UncompressedSize)
		}
		if lr.Blob.Format == formatZstd {
			for ann, got := range map[string]string{annZstdChecksum: lr.Blob.ZstdChecksum, annZstdPosition: lr.Blob.ZstdPosition} {
				if v, ok := d.Annotations[ann]; !ok {
					lr.warnf("no %s annotation", ann)
				} else if v != got {
					lr.errf("%s annotation %q, the footer says %q", ann, v, got)
				}
			}
		}
	} else {
		digestOK, diffID, n, err := plainLayer(ra, size, lr.Digest)
		if !digestOK {
			lr.errf("blob content does not hash to its digest")
		}
		if err != nil {
			lr.errf("decompressing: %v", err)
		}
		lr.DiffID, lr.UncompressedSize = diffID, n
		if f := footerKind(ra, size); f != "" {
			lr.warnf("the blob ends with a %s footer but has no %s annotation: it will not be lazily pulled", f, annTOCDigest)
		}
		if lr.UncompressedSizeAnnotation != "" {
			if v, err := strconv.ParseInt(lr.UncompressedSizeAnnotation, 10, 64); err != nil || v != n {
				lr.errf("%s annotation %q, the blob decompresses to %d bytes", annUncompressed, lr.UncompressedSizeAnnotation, n)
			}
		}
	}
	if configDiffID != "" && lr.DiffID != "" && lr.DiffID != configDiffID {
		lr.errf("diff_id %s, the config's rootfs.diff_ids[%d] is %s", lr.DiffID, i, configDiffID)
	}
	return lr
}

// hasExternalFooter tells whether a blob ends with the footer of an eStargz layer whose TOC is external:
// an empty gzip member whose Extra field's SG subfield says STARGZEXTERNALTOC. externalFooter checks
// the rest of it.
func hasExternalFooter(ra io.ReaderAt, size int64) bool {
	if size < externalFooterSz {
		return false
	}
	b := make([]byte, externalFooterSz)
	if _, err := ra.ReadAt(b, size-externalFooterSz); err != nil {
		return false
	}
	return bytes.HasPrefix(b, gzipMagic) && string(b[12:16+len("STARGZEXTERNALTOC")]) == "SG\x11\x00STARGZEXTERNALTOC"
}

// externalTOC finds a layer's TOC blob as the snapshotter does (v0.13+, externaltoc.NewRemoteDecompressor):
// in the image's TOC image, the layer annotated with the layer's digest, the first if several are.
// It returns the blob and where it comes from (TOC_IMAGE@DIGEST).
func (ic *imageCheck) externalTOC(layer string) ([]byte, string, error) {
	if !ic.tocLooked {
		ic.tocLooked = true
		ic.tocStore, ic.tocName, ic.tocErr = ic.s.tocImage()
		if ic.tocErr == nil {
			ic.tocs, ic.tocErr = readTOCImage(ic.tocStore)
			if ic.tocErr != nil {
				ic.tocErr = fmt.Errorf("TOC image %s: %v", ic.tocName, ic.tocErr)
			}
		}
	}
	if ic.tocErr != nil {
		return nil, "", ic.tocErr
	}
	d, ok := ic.tocs[layer]
	if !ok {
		return nil, "", fmt.Errorf("TOC image %s has no layer annotated %s=%s", ic.tocName, annLayerDigest, layer)
	}
	where := ic.tocName + "@" + d.Digest.String()
	ra, size, done, err := ic.tocStore.open(d)
	if err != nil {
		return nil, where, fmt.Errorf("TOC blob %s: %v", where, err)
	}
	defer done()
	if size > maxTOCBytes {
		return nil, where, fmt.Errorf("TOC blob %s: %d bytes", where, size)
	}
	b, err := io.ReadAll(io.NewSectionReader(ra, 0, size))
	if err == nil {
		err = verifyContent(d, b)
	}
	if err != nil {
		return nil, where, fmt.Errorf("TOC blob %s: %v", where, err)
	}
	return b, where, nil
}

// readTOCImage maps each layer digest to the TOC image's layer that holds its TOC. The TOC image is
// one image manifest (upstream's converter writes config {} and one gzip layer per converted layer).
func readTOCImage(s store) (map[string]ocispec.Descriptor, error) {
	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("%d manifests, want 1", len(roots))
	}
	b, err := s.fetch(roots[0])
	if err != nil {
		return nil, err
	}
	var m struct {
		MediaType string               `json:"mediaType"`
		Manifests json.RawMessage      `json:"manifests"`
		Layers    []ocispec.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %v", roots[0].Digest, err)
	}
	if m.Manifests != nil || m.MediaType == mtOCIIndex || m.MediaType == mtDockerList || roots[0].MediaType == mtOCIIndex || roots[0].MediaType == mtDockerList {
		return nil, fmt.Errorf("%s is an index, not an image manifest", roots[0].Digest)
	}
	tocs := map[string]ocispec.Descriptor{}
	for _, l := range m.Layers {
		if dg, ok := l.Annotations[annLayerDigest]; ok {
			if _, seen := tocs[dg]; !seen {
				tocs[dg] = l
			}
		}
	}
	return tocs, nil
}

// footerKind tells whether a blob without a TOC annotation still looks like eStargz / zstd:chunked.
func footerKind(ra io.ReaderAt, size int64) string {
	if size >= zstdFooterSize {
		b := make([]byte, zstdFooterSize)
		if _, err := ra.ReadAt(b, size-zstdFooterSize); err == nil && bytes.Equal(b[40:48], zstdChunkMagic) {
			return formatZstd
		}
	}
	if size >= gzipFooterSize {
		b := make([]byte, gzipFooterSize)
		if _, err := ra.ReadAt(b, size-gzipFooterSize); err == nil {
			if _, bad := parseGzipFooter(b); len(bad) == 0 {
				return formatEStargz
			}
		}
	}
	return ""
}

// plainLayer checks a layer that is not (declared) eStargz: its digest, and its diff_id by the
// compression its magic bytes show.
func plainLayer(ra io.ReaderAt, size int64, want string) (bool, string, int64, error) {
	dh := sha256.New()
	sr := io.NewSectionReader(ra, 0, size)
	br := bufio.NewReaderSize(io.TeeReader(sr, dh), 1<<20)
	head, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return false, "", 0, err
		}
		r = zr
	case bytes.Equal(head, zstdMagic):
		dec, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<34))
		if err != nil {
			return false, "", 0, err
		}
		defer dec.Close()
		r = dec
	}
	uh := sha256.New()
	n, err := io.Copy(uh, r)
	io.Copy(io.Discard, br) // the digest covers bytes a decompressor did not need
	digestOK := "sha256:"+hex.EncodeToString(dh.Sum(nil)) == want
	return digestOK, "sha256:" + hex.EncodeToString(uh.Sum(nil)), n, err
}

// ---------------------------------------------------------------------------------------------------
// OCI layout

// layoutStore reads an OCI layout: every image index.json lists, or only the one whose
// org.opencontainers.image.ref.name is name (local://DIR:NAME).
type layoutStore struct{ dir, name string }

// parseLayoutRef splits local://DIR[:NAME] (without local://) as ctr-remote does: NAME follows the
// last colon unless a "/" does.
func parseLayoutRef(s string) (dir, name string) {
	if i := strings.LastIndex(s, ":"); i > 0 && !strings.Contains(s[i+1:], "/") {
		return s[:i], s[i+1:]
	}
	return s, ""
}

func (s *layoutStore) tocImage() (store, string, error) {
	if s.name == "" {
		return nil, "", fmt.Errorf("the layout %s is read without a NAME: check local://%s:NAME, whose TOC image is NAME%s", s.dir, s.dir, tocImageSuffix)
	}
	name := s.name + tocImageSuffix
	return &layoutStore{dir: s.dir, name: name}, "local://" + s.dir + ":" + name, nil
}

func (s *layoutStore) path(d ocispec.Descriptor) (string, error) {
	if err := d.Digest.Validate(); err != nil {
		return "", fmt.Errorf("descriptor digest %q: %v", d.Digest, err)
	}
	return filepath.Join(s.dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()), nil
}

func (s *layoutStore) roots() ([]ocispec.Descriptor, error) {
	lb, err := os.ReadFile(filepath.Join(s.dir, "oci-layout"))
	if err != nil {
		return nil, fmt.Errorf("not an OCI layout: %v", err)
	}
	var layout ocispec.ImageLayout
	if err := json.Unmarshal(lb, &layout); err != nil || layout.Version != ocispec.ImageLayoutVersion {
		return nil, fmt.Errorf("oci-layout: imageLayoutVersion %q, want %q (%v)", layout.Version, ocispec.ImageLayoutVersion, err)
	}
	ib, err := os.ReadFile(filepath.Join(s.dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(ib, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("index.json: schemaVersion %d, want 2", idx.SchemaVersion)
	}
	if s.name == "" {
		return idx.Manifests, nil
	}
	var named []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.Annotations[ocispec.AnnotationRefName] == s.name {
			named = append(named, d)
		}
	}
	if len(named) == 0 {
		return nil, fmt.Errorf("index.json: no image named %q", s.name)
	}
	return named[len(named)-1:], nil // the last, as ctr-remote reads it
}

func (s *layoutStore) fetch(d ocispec.Descriptor) ([]byte, error) {
	p, err := s.path(d)
	if err != nil {
		return nil, err
	}
	if d.Size > maxManifestBytes {
		return nil, fmt.Errorf("%s: %d bytes is too big for a manifest or config", d.Digest, d.Size)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return b, verifyContent(d, b)
}

func (s *layoutStore) open(d ocispec.Descriptor) (io.ReaderAt, int64, func(), error) {
	p, err := s.path(d)
	if err != nil {
		return nil, 0, nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	return f, st.Size(), func() { f.Close() }, nil
}
