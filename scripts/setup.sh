#!/usr/bin/env bash
# One place for every install step, so `make install`, CI and the demo all do the same.
#   setup.sh system [runtime|all]  apt packages (root): what ctr-remote and the demo need, or
#                          everything the tests need too (default)
#   setup.sh venv DIR [test]       Python virtualenv with the project (and its test extras)
#   setup.sh oracle DIR    build the upstream Go eStargz reader (estargz-check) and generator into DIR
#   setup.sh stargz-grpc DIR  build the real lazy-pulling stargz snapshotter (tests/lazypull, bench) into DIR,
#                          against Debian 13's v0.14.3 library (fetched into build/trixie if missing)
#   setup.sh trixie DIR    Debian 13's upstream v0.14.3 (Go source and ctr-remote) unpacked into DIR/root,
#                          through a private apt state in DIR: nothing is installed system-wide
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# What `ctr-remote image optimize` runs on, and what the demo starts (a registry, a busybox image).
RUNTIME_PACKAGES=(runc fuse3 docker-registry busybox-static python3-venv ca-certificates)
# The tests' real parts: skopeo, CNI plugins, the Go oracle's sources, containerd and upstream's tool.
TEST_PACKAGES=(
  skopeo containernetworking-plugins iproute2
  golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter containerd
  openssl apache2-utils
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
  oracle)
    dir=${2:?oracle DIR}
    mkdir -p "$dir"
    BUILD_GEN=1 sh "$here/../shared/tools/estargz-check/build.sh" "$dir/estargz-check"
    ;;
  stargz-grpc)
    dir=${2:?stargz-grpc DIR}
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    # The v0.14.3 stargz-snapshotter source (Debian 13) shadows Debian 12's v0.12 one: its fs/ and
    # snapshot/ build against Debian 12's containerd 1.6 and other -dev packages, which supply every
    # other import. Offline: GOPATH mode, no module proxy. (main.go also builds against v0.12 alone:
    # GOPATH=/usr/share/gocode.)
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
    echo "usage: setup.sh system | venv DIR | oracle DIR | stargz-grpc DIR | trixie DIR" >&2; exit 2 ;;
esac
