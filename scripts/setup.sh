#!/usr/bin/env bash
# One place for every install step, so `make install`, CI and the demo all do the same.
#   setup.sh system        apt packages (root)
#   setup.sh venv DIR      Python virtualenv with the project and its test extras
#   setup.sh oracle DIR    build the upstream Go eStargz reader (estargz-check) and generator into DIR
#   setup.sh stargz-grpc DIR  build the real lazy-pulling stargz snapshotter (tests/lazypull, bench) into DIR
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

APT_PACKAGES=(
  runc fuse3 docker-registry skopeo containernetworking-plugins iproute2
  golang-go golang-github-containerd-stargz-snapshotter-dev stargz-snapshotter containerd
  busybox-static python3-venv ca-certificates openssl apache2-utils
)

case "${1:-}" in
  system)
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
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
    [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
    ;;
  oracle)
    dir=${2:?oracle DIR}
    mkdir -p "$dir"
    BUILD_GEN=1 sh "$here/../shared/tools/estargz-check/build.sh" "$dir/estargz-check"
    ;;
  stargz-grpc)
    dir=${2:?stargz-grpc DIR}
    mkdir -p "$dir"
    sh "$here/../shared/tools/stargz-grpc/build.sh" "$dir/stargz-grpc"
    ;;
  *)
    echo "usage: setup.sh system | venv DIR | oracle DIR | stargz-grpc DIR" >&2; exit 2 ;;
esac
