"""Image transfer throughput against a local `docker-registry`: our push (write_image) and pull
(copy_image into an OCI layout) versus skopeo (containers/image, Go) doing the same copies, plus
our peak memory growth, which must stay flat as blobs grow (everything streams through files).

BENCH_IMAGE_MB (default 256) total layer bytes, split over BENCH_IMAGE_LAYERS (default 4) layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from ctr_remote.image import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    copy_image,
    open_store,
    parse_reference,
    write_image,
)
from ctr_remote.log import configure
from tests.helpers.registry import start_registry


def _random_file(path: Path, size: int) -> Descriptor:
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return Descriptor(OCI_LAYER, f"sha256:{h.hexdigest()}", size)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _skopeo(tls_flag: str, src: str, dst: str) -> None:
    dst = dst.replace("http://", "docker://")
    src = src.replace("http://", "docker://")
    subprocess.run(["skopeo", "copy", "-q", "--preserve-digests", tls_flag, src, dst], check=True)


def main() -> None:
    configure()  # info level: no per-request debug lines
    total_mb = int(os.environ.get("BENCH_IMAGE_MB", "256"))
    n = int(os.environ.get("BENCH_IMAGE_LAYERS", "4"))
    with tempfile.TemporaryDirectory(prefix="bench-image-") as d:
        work = Path(d)
        layers = [
            (work / f"layer{i}", _random_file(work / f"layer{i}", (total_mb << 20) // n)) for i in range(n)
        ]
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                             "diff_ids": [dsc.digest for _, dsc in layers]}}).encode()  # fmt: skip
        (work / "config").write_bytes(config)
        config_desc = Descriptor.of(config, OCI_CONFIG)
        manifest = Manifest(OCI_MANIFEST, config_desc, [dsc for _, dsc in layers]).to_bytes()
        top = (manifest, Descriptor.of(manifest, OCI_MANIFEST))
        blobs = [*layers, (work / "config", config_desc)]
        rss0 = _maxrss_mb()
        with start_registry(work / "registry") as reg:
            opts = reg.options()
            with open_store(reg.reference("bench/ours:v1"), opts) as dst:
                push_s = _timed(lambda: write_image(dst, blobs, [], top))
            out = parse_reference(f"local://{work}/ours-layout")
            with open_store(reg.reference("bench/ours:v1"), opts) as src, open_store(out) as dst:
                pull_s = _timed(lambda: copy_image(src, dst, work / "cache"))
            rss = _maxrss_mb() - rss0
            sk_push = _timed(
                lambda: _skopeo("--dest-tls-verify=false", f"oci:{out.path}", reg.url("/bench/sk:v1"))
            )
            sk_pull = _timed(
                lambda: _skopeo("--src-tls-verify=false", reg.url("/bench/sk:v1"), f"oci:{work}/sk")
            )
    for what, ours, theirs in (("push", push_s, sk_push), ("pull", pull_s, sk_pull)):
        print(
            f"{what}: {total_mb} MiB in {n} layers: ours {ours:.2f}s ({total_mb / ours:.0f} MiB/s), "
            f"skopeo {theirs:.2f}s ({total_mb / theirs:.0f} MiB/s), ours/skopeo {ours / theirs:.2f}"
        )
    print(f"peak RSS growth during our push+pull: {rss:.1f} MiB (for {total_mb} MiB of blobs)")


if __name__ == "__main__":
    main()
