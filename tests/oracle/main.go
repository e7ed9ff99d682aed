// Command estargz-check is the project's conformance oracle for eStargz (gzip) and zstd:chunked
// layers and for images made of them.
//
//	estargz-check blob FILE [--toc-digest sha256:...] [--external-toc TOCBLOB] [--strict]
//	estargz-check image OCI_LAYOUT_DIR | local://DIR[:NAME] | [http[s]://]HOST[:PORT]/REPO[:TAG|@DIGEST] [--strict]
//
// A JSON report goes to stdout. Exit status: 0 every check passed, 1 conformance failure (one line
// "estargz-check: FAIL ..." on stderr), 2 usage error. With --strict a warning anywhere in the report
// (image, manifest or layer) is a failure too.
//
// Every blob is looked at three ways and the views must agree: our own decoding of footer and TOC
// (standard library + klauspost/zstd only), the upstream reader the snapshotter uses (estargz.Open,
// VerifyTOC, OpenFile), and a sequential plain tar.gz / tar.zst decoding, which is what a runtime
// that knows nothing about eStargz sees. --external-toc checks a blob whose TOC is external
// (46-byte STARGZEXTERNALTOC footer) against its TOC blob, the layer of the "-esgztoc" image; `image`
// finds each such layer's TOC blob itself, as the snapshotter does: in the image tagged TAG-esgztoc
// (the layout entry NAME-esgztoc), the layer annotated with the layer's digest. local://DIR:NAME
// checks only the layout's image named NAME; a bare directory, every image it lists.
// The same source builds against upstream v0.14.3 (default)
// and against v0.12 (build tag estargz_v012); compat_*.go hold the few differences.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

func usage(msg string) {
	if msg != "" {
		fmt.Fprintln(os.Stderr, "estargz-check:", msg)
	}
	fmt.Fprintln(os.Stderr, "usage: estargz-check blob FILE [--toc-digest sha256:...] [--external-toc TOCBLOB] [--strict]")
	fmt.Fprintln(os.Stderr, "       estargz-check image OCI_LAYOUT_DIR|local://DIR[:NAME]|HOST:PORT/REPO[:TAG|@DIGEST] [--strict]")
	fmt.Fprintln(os.Stderr, "       estargz-check version")
	os.Exit(2)
}

// args holds the parsed command line; flags may come before or after the positional argument.
type args struct {
	cmd, target, tocDigest, externalTOC string
	strict                              bool
}

func parseArgs(argv []string) args {
	if len(argv) < 1 {
		usage("")
	}
	a := args{cmd: argv[0]}
	var pos []string
	for i := 1; i < len(argv); i++ {
		switch s := argv[i]; {
		case s == "--strict":
			a.strict = true
		case s == "--toc-digest" && a.cmd == "blob":
			if i+1 >= len(argv) {
				usage("--toc-digest needs a value")
			}
			i++
			a.tocDigest = argv[i]
		case s == "--external-toc" && a.cmd == "blob":
			if i+1 >= len(argv) {
				usage("--external-toc needs a file")
			}
			i++
			a.externalTOC = argv[i]
		case strings.HasPrefix(s, "--toc-digest=") && a.cmd == "blob":
			a.tocDigest = strings.TrimPrefix(s, "--toc-digest=")
		case strings.HasPrefix(s, "-") && s != "-":
			usage("unknown flag " + s)
		default:
			pos = append(pos, s)
		}
	}
	switch a.cmd {
	case "version":
		return a
	case "blob", "image":
	default:
		usage("unknown command " + a.cmd)
	}
	if len(pos) != 1 {
		usage(a.cmd + " takes exactly one FILE/REF")
	}
	a.target = pos[0]
	if a.tocDigest != "" && !strings.HasPrefix(a.tocDigest, "sha256:") {
		usage("--toc-digest must be sha256:<hex>")
	}
	return a
}

func emit(v interface{}) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "estargz-check: writing report:", err)
		os.Exit(1)
	}
}

func main() {
	a := parseArgs(os.Args[1:])
	switch a.cmd {
	case "version":
		fmt.Println(libraryVersion)
		return
	case "blob":
		f, err := os.Open(a.target)
		if err != nil {
			usage(err.Error())
		}
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			usage(a.target + " is not a regular file")
		}
		if a.externalTOC != "" {
			if externalTOC, err = os.ReadFile(a.externalTOC); err != nil {
				usage(err.Error())
			}
		}
		rep := checkBlob(f, st.Size(), a.tocDigest)
		rep.File = a.target
		rep.finish(a.strict)
		emit(rep)
		f.Close()
		if !rep.OK {
			fmt.Fprintf(os.Stderr, "estargz-check: FAIL %s: %s\n", a.target, rep.Error)
			os.Exit(1)
		}
	case "image":
		rep := checkImage(a.target)
		rep.finish(a.strict)
		emit(rep)
		if !rep.OK {
			fmt.Fprintf(os.Stderr, "estargz-check: FAIL %s: %s\n", a.target, rep.Error)
			os.Exit(1)
		}
	}
}
