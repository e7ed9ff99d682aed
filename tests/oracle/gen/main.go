// Command estargz-check-gen makes layers with upstream's own builder (estargz.Build, v0.14.3), so
// tests can compare our writer's output with upstream's on the same input. Built with the tag
// estargz_v012 it uses v0.12's builder instead (estargz-check-gen-v0.12), to compare the two.
//
//	estargz-check-gen oci-image SRC.tar OUTDIR MODE
//
// writes a one-layer OCI layout. MODE is KIND[+OPTION...][:PATH,PATH...]:
//
//	KIND     gzip (the tar gzipped as is) | estargz | zstdchunked | lossless (upstream's
//	         --estargz-keep-diff-id: AppendTarLossLess with an external TOC, v0.14.3 only; the TOC
//	         blob is written to OUTDIR/external-toc.gz, beside the layout)
//	OPTION   chunk=N (chunk size) | minchunk=N (v0.14.3's min chunk size: small files share a
//	         gzip member, found through innerOffset)
//	PATHS    prioritized files, in order (estargz.WithPrioritizedFiles; paths the layer lacks are
//	         skipped, as upstream's converter does with WithAllowPrioritizeNotFound)
//
// e.g. "estargz", "estargz:etc/passwd,bin/sh", "estargz+minchunk=65536", "zstdchunked:bin/sh".
package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	annTOCDigest    = "containerd.io/snapshot/stargz/toc.digest"
	annUncompressed = "io.containers.estargz.uncompressed-size"
)

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "estargz-check-gen: "+format+"\n", a...)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: estargz-check-gen oci-image SRC.tar OUTDIR KIND[+chunk=N][+minchunk=N][:PATH,...]")
	fmt.Fprintln(os.Stderr, "       KIND: gzip | estargz | zstdchunked | lossless")
	os.Exit(2)
}

type mode struct {
	kind        string
	chunk       int
	minChunk    int
	prioritized []string
}

func parseMode(s string) mode {
	var m mode
	spec, list, hasList := strings.Cut(s, ":")
	parts := strings.Split(spec, "+")
	m.kind = parts[0]
	if m.kind != "gzip" && m.kind != "estargz" && m.kind != "zstdchunked" && m.kind != "lossless" {
		usage()
	}
	for _, o := range parts[1:] {
		k, v, _ := strings.Cut(o, "=")
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			usage()
		}
		switch k {
		case "chunk":
			m.chunk = n
		case "minchunk":
			m.minChunk = n
		default:
			usage()
		}
	}
	if hasList {
		if m.kind == "gzip" || m.kind == "lossless" || list == "" {
			usage()
		}
		m.prioritized = strings.Split(list, ",")
	}
	return m
}

func main() {
	if len(os.Args) != 5 || os.Args[1] != "oci-image" {
		usage()
	}
	src, out, m := os.Args[2], os.Args[3], parseMode(os.Args[4])
	if err := os.MkdirAll(filepath.Join(out, "blobs", "sha256"), 0o755); err != nil {
		fail("%v", err)
	}
	layer, err := buildLayer(src, out, m)
	if err != nil {
		fail("%v", err)
	}
	if err := writeImage(out, layer); err != nil {
		fail("%v", err)
	}
}

// zstdCompression pairs upstream's zstd:chunked compressor and decompressor into the
// estargz.Compression that Build takes (upstream's converter does the same).
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

type builtLayer struct {
	desc   ocispec.Descriptor
	diffID digest.Digest
}

// buildLayer writes the layer blob into the layout and returns its descriptor.
func buildLayer(src, out string, m mode) (builtLayer, error) {
	f, err := os.Open(src)
	if err != nil {
		return builtLayer{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return builtLayer{}, err
	}
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Annotations: map[string]string{}}
	var rc io.Reader
	var tocDigest digest.Digest
	if m.kind == "gzip" {
		pr, pw := io.Pipe()
		go func() {
			zw := gzip.NewWriter(pw)
			_, err := io.Copy(zw, f)
			if err == nil {
				err = zw.Close()
			}
			pw.CloseWithError(err)
		}()
		rc = pr
	} else if m.kind == "lossless" {
		var blob bytes.Buffer
		toc, dg, err := losslessLayer(f, &blob, m.chunk, m.minChunk)
		if err != nil {
			return builtLayer{}, fmt.Errorf("AppendTarLossLess: %w", err)
		}
		if err := os.WriteFile(filepath.Join(out, "external-toc.gz"), toc, 0o644); err != nil {
			return builtLayer{}, err
		}
		rc, tocDigest = &blob, dg
	} else {
		opts := []estargz.Option{}
		if m.chunk > 0 {
			opts = append(opts, estargz.WithChunkSize(m.chunk))
		}
		if m.minChunk > 0 {
			o, err := minChunkOption(m.minChunk)
			if err != nil {
				return builtLayer{}, err
			}
			opts = append(opts, o)
		}
		var missed []string
		if m.prioritized != nil {
			// As upstream's converter: a listed path the layer lacks is skipped, not an error (an
			// image's record names paths of every layer).
			opts = append(opts, estargz.WithPrioritizedFiles(m.prioritized), estargz.WithAllowPrioritizeNotFound(&missed))
		}
		if m.kind == "zstdchunked" {
			// The compressor fills Metadata with the zstd:chunked annotations when it writes the TOC.
			opts = append(opts, estargz.WithCompression(zstdCompression{
				&zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: desc.Annotations},
				&zstdchunked.Decompressor{},
			}))
			desc.MediaType = ocispec.MediaTypeImageLayerZstd
		}
		blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()), opts...)
		if err != nil {
			return builtLayer{}, fmt.Errorf("estargz.Build: %w", err)
		}
		defer blob.Close()
		if len(missed) > 0 {
			fmt.Fprintf(os.Stderr, "estargz-check-gen: not in the layer, not prioritized: %s\n", strings.Join(missed, ", "))
		}
		rc = blob
		tocDigest = blob.TOCDigest()
	}
	tmp, err := os.CreateTemp(filepath.Join(out, "blobs", "sha256"), ".layer-*")
	if err != nil {
		return builtLayer{}, err
	}
	defer os.Remove(tmp.Name())
	dg := digest.Canonical.Digester()
	n, err := io.Copy(io.MultiWriter(tmp, dg.Hash()), rc)
	if err == nil {
		err = tmp.Chmod(0o644) // CreateTemp makes it 0600; blobs are as readable as the rest of the layout
	}
	if err == nil {
		err = tmp.Close()
	}
	if err != nil {
		return builtLayer{}, err
	}
	desc.Digest, desc.Size = dg.Digest(), n
	// The diff_id and the uncompressed size are read back from the blob written, so they describe
	// what was written, not what the builder meant to write.
	diffID, usize, err := uncompressed(tmp.Name(), m.kind == "zstdchunked")
	if err != nil {
		return builtLayer{}, fmt.Errorf("reading back the layer: %w", err)
	}
	if tocDigest != "" {
		desc.Annotations[annTOCDigest] = tocDigest.String()
		desc.Annotations[annUncompressed] = strconv.FormatInt(usize, 10)
	}
	if len(desc.Annotations) == 0 {
		desc.Annotations = nil
	}
	if err := os.Rename(tmp.Name(), filepath.Join(out, "blobs", "sha256", desc.Digest.Encoded())); err != nil {
		return builtLayer{}, err
	}
	return builtLayer{desc: desc, diffID: diffID}, nil
}

func uncompressed(p string, isZstd bool) (digest.Digest, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	var r io.Reader
	if isZstd {
		dec, err := zstd.NewReader(bufio.NewReader(f))
		if err != nil {
			return "", 0, err
		}
		defer dec.Close()
		r = dec
	} else {
		zr, err := gzip.NewReader(bufio.NewReader(f))
		if err != nil {
			return "", 0, err
		}
		r = zr
	}
	dg := digest.Canonical.Digester()
	n, err := io.Copy(dg.Hash(), r)
	return dg.Digest(), n, err
}

func writeBlob(out string, mt string, v interface{}) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	return d, os.WriteFile(filepath.Join(out, "blobs", "sha256", d.Digest.Encoded()), b, 0o644)
}

func writeImage(out string, l builtLayer) error {
	cfg := ocispec.Image{
		Architecture: "amd64",
		OS:           "linux",
		Config:       ocispec.ImageConfig{Cmd: []string{"/bin/sh"}},
		RootFS:       ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.diffID}},
	}
	cd, err := writeBlob(out, ocispec.MediaTypeImageConfig, cfg)
	if err != nil {
		return err
	}
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{l.desc}}
	md, err := writeBlob(out, ocispec.MediaTypeImageManifest, man)
	if err != nil {
		return err
	}
	md.Platform = &ocispec.Platform{Architecture: "amd64", OS: "linux"}
	idx, err := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "index.json"), idx, 0o644); err != nil {
		return err
	}
	layout, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	return os.WriteFile(filepath.Join(out, "oci-layout"), bytes.TrimSpace(layout), 0o644)
}
