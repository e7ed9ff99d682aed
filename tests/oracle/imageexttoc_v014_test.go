//go:build !estargz_v012

package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// extImage is an image of one external-TOC layer (upstream's builder) and its TOC image, as blobs
// and manifests a test lays out or serves, with whatever it breaks first.
type extImage struct {
	blobs             map[digest.Digest][]byte
	manifest, tocMfst ocispec.Descriptor
	layer             digest.Digest
}

func (x *extImage) add(mt string, b []byte, ann map[string]string) ocispec.Descriptor {
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b)), Annotations: ann}
	x.blobs[d.Digest] = b
	return d
}

func (x *extImage) addJSON(t *testing.T, mt string, v interface{}) ocispec.Descriptor {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return x.add(mt, b, nil)
}

// newExtImage builds the image; toc is the TOC blob to put in the TOC image, annotated with
// tocFor (the layer's digest unless a test gives another).
func newExtImage(t *testing.T, toc []byte, tocFor func(layer digest.Digest) string) *extImage {
	blob, _, tocDigest := externalTOCBlob(t)
	x := &extImage{blobs: map[digest.Digest][]byte{}}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	tarBytes, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	layer := x.add(ocispec.MediaTypeImageLayerGzip, blob, map[string]string{
		annTOCDigest:    tocDigest,
		annUncompressed: strconv.Itoa(len(tarBytes)),
	})
	x.layer = layer.Digest
	cfg := ocispec.Image{OS: "linux", Architecture: "amd64"}
	cfg.RootFS = ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarBytes)}}
	x.manifest = x.addJSON(t, ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: x.addJSON(t, ocispec.MediaTypeImageConfig, cfg),
		Layers: []ocispec.Descriptor{layer},
	})
	x.manifest.Annotations = map[string]string{ocispec.AnnotationRefName: "v1"}
	tocLayer := x.add(ocispec.MediaTypeImageLayerGzip, toc, map[string]string{annLayerDigest: tocFor(layer.Digest)})
	x.tocMfst = x.addJSON(t, ocispec.MediaTypeImageManifest, ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: x.add(ocispec.MediaTypeImageConfig, []byte("{}"), nil),
		Layers: []ocispec.Descriptor{tocLayer},
	})
	x.tocMfst.Annotations = map[string]string{ocispec.AnnotationRefName: "v1" + tocImageSuffix}
	return x
}

func ownTOC(t *testing.T) []byte {
	_, toc, _ := externalTOCBlob(t)
	return toc
}

func sameLayer(d digest.Digest) string { return d.String() }

// layout writes the image as an OCI layout; withTOCImage false leaves the TOC image out of index.json.
func (x *extImage) layout(t *testing.T, withTOCImage bool) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	for d, b := range x.blobs {
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{x.manifest}}
	idx.SchemaVersion = 2
	if withTOCImage {
		idx.Manifests = append(idx.Manifests, x.tocMfst)
	}
	ib, _ := json.Marshal(idx)
	lb, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	for name, b := range map[string][]byte{"index.json": ib, "oci-layout": lb} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// serve serves the image as repository app, tags v1 and v1-esgztoc (unless withTOCImage is false),
// over the distribution API's GET routes.
func (x *extImage) serve(t *testing.T, withTOCImage bool) string {
	tags := map[string]ocispec.Descriptor{"v1": x.manifest}
	if withTOCImage {
		tags["v1"+tocImageSuffix] = x.tocMfst
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest := strings.TrimPrefix(r.URL.Path, "/v2/app/")
		kind, ref, _ := strings.Cut(rest, "/")
		d := digest.Digest(ref)
		if m, ok := tags[ref]; ok && kind == "manifests" {
			d = m.Digest
		}
		b, ok := x.blobs[d]
		if !ok || (kind != "manifests" && kind != "blobs") {
			http.NotFound(w, r)
			return
		}
		if kind == "manifests" {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/app:v1"
}

func checkImageT(src string) *ImageReport {
	r := checkImage(src)
	r.finish(true)
	return r
}

func mustFailImage(t *testing.T, r *ImageReport, want string) {
	t.Helper()
	mustReject(t, r.OK, r.Errors, want)
}

func TestExternalTOCImageInALayoutPasses(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	r := checkImageT("local://" + x.layout(t, true) + ":v1")
	if !r.OK || r.EStargzLayers != 1 || len(r.Manifests) != 1 {
		t.Fatalf("ok %v, %d eStargz layer(s), %d manifest(s): %v", r.OK, r.EStargzLayers, len(r.Manifests), r.Errors)
	}
	l := r.Manifests[0].Layers[0]
	if !strings.HasSuffix(l.ExternalTOC, ":v1-esgztoc@"+x.tocMfstLayer(t)) || l.Blob.FooterSize != externalFooterSz {
		t.Fatalf("external_toc %q, footer %d", l.ExternalTOC, l.Blob.FooterSize)
	}
}

// tocMfstLayer is the digest of the TOC image's layer.
func (x *extImage) tocMfstLayer(t *testing.T) string {
	var m ocispec.Manifest
	if err := json.Unmarshal(x.blobs[x.tocMfst.Digest], &m); err != nil {
		t.Fatal(err)
	}
	return m.Layers[0].Digest.String()
}

func TestExternalTOCImageInARegistryPasses(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	r := checkImageT(x.serve(t, true))
	if !r.OK || r.EStargzLayers != 1 || !strings.HasSuffix(r.Manifests[0].Layers[0].ExternalTOC, "/app:v1-esgztoc@"+x.tocMfstLayer(t)) {
		t.Fatalf("ok %v, %d eStargz layer(s): %v", r.OK, r.EStargzLayers, r.Errors)
	}
}

func TestExternalTOCLayerWithoutTOCImageIsRejected(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	want := "layer 0 " + shortDigest(x.layer.String()) + ": its TOC is external: TOC image "
	mustFailImage(t, checkImageT("local://"+x.layout(t, false)+":v1"), want)
	mustFailImage(t, checkImageT(x.serve(t, false)), want)
}

func TestExternalTOCLayerMissingFromTheTOCImageIsRejected(t *testing.T) {
	x := newExtImage(t, ownTOC(t), func(digest.Digest) string { return digest.FromString("another layer").String() })
	mustFailImage(t, checkImageT("local://"+x.layout(t, true)+":v1"), "has no layer annotated "+annLayerDigest+"="+x.layer.String())
}

func TestExternalTOCImageWithAnotherLayersTOCIsRejected(t *testing.T) {
	_, other, _ := otherLayerExternalTOC(t)
	x := newExtImage(t, other, sameLayer)
	mustFailImage(t, checkImageT("local://"+x.layout(t, true)+":v1"), "differs from the expected")
}

func TestExternalTOCLayerInAnUnnamedLayoutIsRejected(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	dir := x.layout(t, false)
	mustFailImage(t, checkImageT(dir), "check local://"+dir+":NAME")
}

func TestExternalTOCLayerOfAnImageByDigestIsRejected(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	ref := strings.TrimSuffix(x.serve(t, true), ":v1") + "@" + x.manifest.Digest.String()
	mustFailImage(t, checkImageT(ref), "finds the TOC image by tag")
}

func TestLayoutNameSelectsOneImage(t *testing.T) {
	x := newExtImage(t, ownTOC(t), sameLayer)
	dir := x.layout(t, true)
	if r := checkImageT("local://" + dir + ":v1-esgztoc"); len(r.Manifests) != 1 || r.Manifests[0].Digest != x.tocMfst.Digest.String() {
		t.Fatalf("local://DIR:v1-esgztoc checks %d manifest(s)", len(r.Manifests))
	}
	r := checkImage("local://" + dir + ":v2")
	mustFailImage(t, func() *ImageReport { r.finish(true); return r }(), `no image named "v2"`)
}
