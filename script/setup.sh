#!/usr/bin/env bash
# One place for every install step, so `make install`, CI and the demo all do the same.
#   setup.sh system [runtime|all]  apt packages (root): what ctr-remote and the demo need, or
#                          everything the tests need too (default)
#   setup.sh venv DIR [test]       Python virtualenv with the project (and its test extras)
#   setup.sh oracle DIR    build our conformance oracle (tests/oracle, on upstream's Go reader) into DIR
#   setup.sh oracle-test DIR  the oracle's own Go tests, against v0.14.3 and v0.12 (DIR as for oracle;
#                          ORACLE_TEST_FULL=1 adds the minute-long every-byte-flip test)
#   setup.sh stargz-grpc DIR  build the real lazy-pulling stargz snapshotter (tests/lazypull, bench) into DIR,
#                          against Debian 13's v0.14.3 library (fetched into build/trixie if missing)
#   setup.sh trixie DIR    Debian 13's upstream v0.14.3 (Go source and ctr-remote) unpacked into DIR/root,
#                          through a private apt state in DIR: nothing is installed system-wide
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# What `ctr-remote image optimize` runs on, and what the demo starts (a registry, a busybox image).
RUNTIME_PACKAGES=(runc fuse3 docker-registry busybox-static python3-venv ca-certificates)
# The tests' real parts: skopeo, CNI plugins, the Go oracle's sources, containerd and upstream's tool,
# and the gzip helpers --estargz-gzip-helper runs (pigz; igzip from isal).
TEST_PACKAGES=(
  skopeo containernetworking-plugins iproute2
  golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter containerd
  openssl apache2-utils
  pigz isal
)
# Upstream v0.14.3 from Debian 13, as a second reference: its Go source (estargz with external TOC and
# min chunk size) and its ctr-remote binary (needs only libc6 >= 2.34, which Debian 12 has).
TRIXIE_PACKAGES=(golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter)

case "${1:-}" in
  system)
    packages=("${RUNTIME_PACKAGES[@]}")
    case "${2:-all}" in
      runtime) ;;
      all) packages+=("${TEST_PACKAGES[@]}") ;;
      *) echo "setup.sh system: runtime or all, not ${2}" >&2; exit 2 ;;
    esac
    missing=()
    for p in "${packages[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      [ "$(id -u)" = 0 ] || { echo "setup.sh: need root to install: ${missing[*]}" >&2; exit 1; }
      apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    ;;
  venv)
    dir=${2:?venv DIR}
    extras=${3:+[$3]}
    [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -e "$here$extras"
    ;;
  oracle|oracle-test)
    # The oracle is our own source (tests/oracle), built offline in GOPATH mode from Debian packages:
    # against upstream v0.14.3 (Debian 13's source, `setup.sh trixie`) as estargz-check and
    # estargz-check-gen, and against Debian 12's v0.12 as estargz-check-v0.12 and estargz-check-gen-v0.12.
    # `oracle-test DIR` runs the oracle's own Go tests against both instead.
    dir=${2:?$1 DIR}
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    trixie=${TRIXIE_DIR:-$here/build/trixie}
    upstream=$trixie/root/usr/share/gocode/src/github.com/containerd/stargz-snapshotter
    [ -d "$upstream/estargz" ] || { echo "setup.sh: no v0.14.3 source in $trixie: run setup.sh trixie $trixie first" >&2; exit 1; }
    [ -d /usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz ] ||
      { echo "setup.sh: no v0.12 source: apt-get install golang-github-containerd-stargz-snapshotter-dev" >&2; exit 1; }
    # A GOPATH entry holding only the v0.14.3 stargz-snapshotter tree, ahead of /usr/share/gocode: it
    # shadows Debian 12's v0.12 and nothing else (the rest of Debian 13's tree must not leak in).
    gopath014=$dir/gopath-v0.14.3
    mkdir -p "$gopath014/src/github.com/containerd"
    ln -sfn "$upstream" "$gopath014/src/github.com/containerd/stargz-snapshotter"
    export GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=-trimpath GOTOOLCHAIN=local
    export GOCACHE=${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}
    src=$here/tests/oracle
    v014=$gopath014:/usr/share/gocode
    v012=/usr/share/gocode
    if [ "$1" = oracle-test ]; then
      # -short leaves out the every-byte-flip test (a minute); ORACLE_TEST_FULL=1 runs it too.
      short=-short
      [ "${ORACLE_TEST_FULL:-0}" = 1 ] && short=
      (cd "$src" && GOPATH=$v014 go test -count=1 $short . && GOPATH=$v012 go test -count=1 $short -tags estargz_v012 .)
      exit
    fi
    build() { # OUT GOPATH DIR [go build args...]
      out=$1 gopath=$2 pkg=$3; shift 3
      (cd "$pkg" && GOPATH=$gopath go build "$@" -o "$out.new" . && mv "$out.new" "$out")
    }
    build "$dir/estargz-check" "$v014" "$src"
    build "$dir/estargz-check-gen" "$v014" "$src/gen"
    build "$dir/estargz-check-v0.12" "$v012" "$src" -tags estargz_v012
    build "$dir/estargz-check-gen-v0.12" "$v012" "$src/gen" -tags estargz_v012
    echo "built in $dir: estargz-check ($("$dir/estargz-check" version)), estargz-check-gen," \
      "estargz-check-v0.12 ($("$dir/estargz-check-v0.12" version)), estargz-check-gen-v0.12"
    ;;
  stargz-grpc)
    dir=${2:?stargz-grpc DIR}
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    # The v0.14.3 stargz-snapshotter source (Debian 13) shadows Debian 12's v0.12 one: its fs/ and
    # snapshot/ build against Debian 12's containerd 1.6 and other -dev packages, which supply every
    # other import. Offline: GOPATH mode, no module proxy. (main.go needs v0.13+: it reads external
    # TOCs through nativeconverter/estargz/externaltoc.)
    trixie=$here/build/trixie
    [ -f "$trixie/.fetched" ] || "$0" trixie "$trixie"
    (cd "$here/tests/lazypull/stargz-grpc" &&
      GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
      GOPATH="$trixie/root/usr/share/gocode:/usr/share/gocode" \
      go build -trimpath -o "$dir/stargz-grpc" .)
    echo "built $dir/stargz-grpc"
    ;;
  trixie)
    dir=${2:?trixie DIR}
    # Fetched already, the same packages: only tell make it is up to date.
    if [ "$(cat "$dir/.fetched" 2>/dev/null)" = "${TRIXIE_PACKAGES[*]}" ]; then touch "$dir/.fetched"; exit 0; fi
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    rm -rf "$dir/apt" "$dir/debs" "$dir/root"
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/apt/parts" "$dir/debs" "$dir/root"
    # The mirror this machine already uses for its own release, with Debian 13's suite instead.
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    uri=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' | awk -v c="$codename" '$1 == c {print $2; exit}')
    [ -n "$uri" ] || { echo "setup.sh: no apt source for $codename to take the mirror from (run apt-get update)" >&2; exit 1; }
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$dir/apt/sources.list"
    : > "$dir/apt/status"
    apt_private=(-o "Dir::State=$dir/apt" -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::State::status=$dir/apt/status"
      -o "Dir::Cache=$dir/apt/cache" -o "Dir::Etc::SourceList=$dir/apt/sources.list"
      -o "Dir::Etc::SourceParts=$dir/apt/parts" -o "Dir::Etc::Preferences=$dir/apt/none"
      -o "Dir::Etc::PreferencesParts=$dir/apt/parts" -o APT::Sandbox::User=root -q)
    apt-get "${apt_private[@]}" update >/dev/null
    (cd "$dir/debs" && apt-get "${apt_private[@]}" download "${TRIXIE_PACKAGES[@]}" >/dev/null)
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
    echo "${TRIXIE_PACKAGES[*]}" > "$dir/.fetched"
    echo "fetched ${TRIXIE_PACKAGES[*]} (Debian 13) into $dir/root"
    ;;
  *)
    echo "usage: setup.sh system | venv DIR | oracle DIR | oracle-test DIR | stargz-grpc DIR | trixie DIR" >&2; exit 2 ;;
esac
