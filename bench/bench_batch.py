"""`ctr-remote batch`: a fleet of 10 images sharing base layers, converted with `--no-optimize`
(as a CI job converts a fleet), three ways on the same machine and registry:
  batch     one `ctr-remote batch` of 10 jobs (each shared layer converted once), at --jobs 1, 2
            and the default, to show how --jobs should be sized;
  separate  10 `ctr-remote image optimize --no-optimize` runs, one after the other;
  upstream  the Go `/usr/bin/ctr-remote` v0.12, 10 times: pull, `image optimize --no-optimize`, push
            (in the lazy-pull stack's containerd, whose content store keeps the pulled base layers
            between images, as a CI machine's would).
Each image: the `base` and `libs` layers of bench_optimize's image (shared by all ten) plus 2 MiB of
its own. Every run writes to repositories of its own (blobs already in a target repository are
not uploaded again). The batch's digests are checked equal to the separate runs'.

Environment: BENCH_BATCH_LIBS_MIB (size of the shared `libs` layer; default 64).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

from bench.bench_optimize import OURS, ROOT, _base, _gzip_layer, _Layer, _libs, _run, _write_blob
from ctr_remote.image import host_platform
from ctr_remote.image import media_types as mt
from tests.lazypull.stack import StargzStack, start_stack

IMAGES = 10
OWN_MIB = 2


def _own_layer(raw: Path, i: int) -> None:
    """2 MiB that compress like binaries do (not at all), plus a script: image i's own layer."""
    data = b"".join(hashlib.sha256(f"{i}:{n}".encode()).digest() for n in range((OWN_MIB << 20) // 32))
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, payload in ((f"app/app{i}.bin", data), (f"app/run{i}.sh", b"#!/bin/sh\necho ok\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(payload), 0o755
            tar.addfile(info, io.BytesIO(payload))


def fleet(libs_mib: int) -> Path:
    """An OCI layout holding app0..app9 (tags), built once under build/bench/."""
    layout = ROOT / "build" / "bench" / f"batch-{IMAGES}x-{libs_mib}m"
    if (layout / "index.json").exists():
        return layout
    part = layout.with_suffix(".part")
    shutil.rmtree(part, ignore_errors=True)
    (part / "blobs" / "sha256").mkdir(parents=True)
    shared = []
    below: set[str] = set()
    for name, fill in (("base", _base), ("libs", _libs)):
        raw = part / f"{name}.tar"
        with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
            layer = _Layer(tar, below)
            fill(layer, libs_mib << 20)
        below |= layer.names
        shared.append(_gzip_layer(raw, part))
        raw.unlink()
    plat = host_platform()
    manifests = []
    for i in range(IMAGES):
        raw = part / f"app{i}.tar"
        _own_layer(raw, i)
        layers = [*shared, _gzip_layer(raw, part)]
        raw.unlink()
        config = {
            "architecture": plat.architecture,
            "os": plat.os,
            "config": {"Cmd": [f"/app/run{i}.sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        }
        cfg = _write_blob(part, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg.digest, "size": cfg.size},
            "layers": [
                {"mediaType": mt.OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b, _ in layers
            ],
        }
        man = _write_blob(part, json.dumps(manifest).encode())
        manifests.append(
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": man.digest,
                "size": man.size,
                "annotations": {"org.opencontainers.image.ref.name": f"app{i}"},
            }
        )
    (part / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (part / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    part.rename(layout)
    return layout


def _src(stack: StargzStack, i: int) -> str:
    return stack.ref(f"src/app{i}:v1")


def run_batch(
    stack: StargzStack, label: str, jobs: int | None, work: Path
) -> tuple[float, dict[str, str], str]:
    file = work / f"{label}.yaml"
    entries = [
        {"optimize": {"name": f"app{i}", "source": f"http://{_src(stack, i)}",
                      "target": f"http://{stack.ref(f'{label}/app{i}:esgz')}"}}
        for i in range(IMAGES)
    ]  # fmt: skip
    defaults = {"plain_http": True, "oci": True, "no_optimize": True}
    file.write_text(yaml.safe_dump({"defaults": defaults, "jobs": entries}))
    report = work / f"{label}.json"
    args = [*OURS, "batch", "--report", str(report), *(["--jobs", str(jobs)] if jobs else []), str(file)]
    t0 = time.perf_counter()
    _run(args, {**os.environ, "TMPDIR": str(work)})
    seconds = time.perf_counter() - t0
    rep = json.loads(report.read_text())
    counts: dict[str, int] = {}
    for job in rep["jobs"]:
        for la in job["layers"]:
            counts[la["outcome"]] = counts.get(la["outcome"], 0) + 1
    layers = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    return seconds, {j["name"]: j["digest"] for j in rep["jobs"]}, f"{layers}; --jobs {rep['jobs_at_once']}"


def run_separate(stack: StargzStack, work: Path) -> tuple[float, dict[str, str]]:
    digests = {}
    t0 = time.perf_counter()
    for i in range(IMAGES):
        out = subprocess.run(
            [*OURS, "image", "optimize", "--plain-http", "--oci", "--no-optimize",
             f"http://{_src(stack, i)}", f"http://{stack.ref(f'separate/app{i}:esgz')}"],
            capture_output=True, text=True, check=True, env={**os.environ, "TMPDIR": str(work)},
        )  # fmt: skip
        digests[f"app{i}"] = out.stdout.strip().splitlines()[-1]
    return time.perf_counter() - t0, digests


def run_upstream(stack: StargzStack) -> float:
    t0 = time.perf_counter()
    refs = []
    for i in range(IMAGES):
        dst = stack.ref(f"upstream/app{i}:esgz")
        stack.ctr("image", "pull", "--plain-http", _src(stack, i))
        stack.ctr("image", "optimize", "--no-optimize", "--oci", _src(stack, i), dst)
        stack.ctr("image", "push", "--plain-http", dst)
        refs += [_src(stack, i), dst]
    seconds = time.perf_counter() - t0
    stack.ctr("image", "rm", "--sync", *refs)
    return seconds


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    libs_mib = int(os.environ.get("BENCH_BATCH_LIBS_MIB", "64"))
    t0 = time.perf_counter()
    image = fleet(libs_mib)
    sizes = json.loads((image / "index.json").read_text())["manifests"]
    print(f"input fleet ready in {time.perf_counter() - t0:.1f} s: {image} ({len(sizes)} images)", flush=True)
    load_before = _load()
    with (
        tempfile.TemporaryDirectory(prefix="bench-stack-", dir="/tmp") as base,
        start_stack(Path(base)) as stack,
        tempfile.TemporaryDirectory(prefix="bench-batch-") as work,
    ):
        for i in range(IMAGES):
            _run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false",
                 f"oci:{image}:app{i}", f"docker://{_src(stack, i)}"],
            )  # fmt: skip
        rows: list[tuple[str, float, str]] = []
        batch_digests: dict[str, str] = {}
        for label, jobs in (("batch-j1", 1), ("batch-j2", 2), ("batch", None)):
            seconds, batch_digests, what = run_batch(stack, label, jobs, Path(work))
            rows.append((label, seconds, what))
            print(f"{label:10} {seconds:7.2f} s  {what}", flush=True)
        separate, separate_digests = run_separate(stack, Path(work))
        rows.append(("separate", separate, f"{IMAGES} x ctr-remote image optimize --no-optimize"))
        print(f"{'separate':10} {separate:7.2f} s", flush=True)
        upstream = run_upstream(stack)
        rows.append(("upstream", upstream, f"{IMAGES} x v0.12 pull + optimize --no-optimize + push"))
        print(f"{'upstream':10} {upstream:7.2f} s", flush=True)
    print(f"fleet: {IMAGES} images, shared base + {libs_mib} MiB libs layers, {OWN_MIB} MiB own layer each")
    print(f"{'':10}{'wall (s)':>10}{'vs batch':>10}  what")
    best = min(s for label, s, _ in rows if label.startswith("batch"))
    for label, seconds, what in rows:
        print(f"{label:10}{seconds:10.2f}{seconds / best:10.2f}  {what}")
    same = batch_digests == separate_digests
    print(f"batch digests equal the separate runs': {'yes' if same else 'NO'}")
    print(f"load average (1/5/15 min) before: {load_before}, after: {_load()}; CPUs: {os.cpu_count()}")
    if not same:
        raise SystemExit("batch and separate runs wrote different images")


if __name__ == "__main__":
    main()
