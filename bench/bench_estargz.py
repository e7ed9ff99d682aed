"""eStargz conversion of a realistic layer: ours vs the upstream Go builder, side by side.

The layer is a tar of real files from /usr/lib (cached under build/bench/). Both convert it with
4 MiB chunks, in each format upstream writes: gzip eStargz at level 9, zstd:chunked at level 3,
and both with a 64 KiB min chunk size (`--estargz-min-chunk-size`: small files share a member).
Ours through `ctr_remote.estargz.build`, upstream (v0.14.3) through `estargz-check-gen oci-image
TAR DIR MODE` (upstream's `estargz.Build`, which also re-reads its output once for the
uncompressed size and writes a small OCI layout around it).

Environment: BENCH_ESTARGZ_MIB (layer size, default 160), BENCH_ESTARGZ_FORMATS (comma-separated
subset of gzip,zstd,gzip-minchunk,zstd-minchunk; default all), BENCH_ESTARGZ_RSS_GIB (also convert
a layer of this many GiB in a subprocess and report its peak RSS; default off).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.estargz import BuildOptions, LayerFormat, build, open_estargz

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "bench"
GEN = ROOT / "build" / "estargz-check-gen"
SOURCES = ("/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/x86_64-linux-gnu", "/usr/lib/go-1.19",
           "/usr/lib/gcc")  # fmt: skip


def layer_tar(mib: int) -> Path:
    """A tar of about `mib` MiB of /usr/lib (Python's library, then shared libraries: directories,
    symlinks, many small files and some large ones, like a distribution layer), built once."""
    path = CACHE / f"usrlib-{mib}m.tar"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    limit = mib << 20
    tmp = path.with_suffix(".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add("/usr", arcname="usr", recursive=False)
        tar.add("/usr/lib", arcname="usr/lib", recursive=False)
        for top in SOURCES:
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                tar.add(dirpath, arcname=dirpath.lstrip("/"), recursive=False)
                for name in sorted(filenames):
                    p = os.path.join(dirpath, name)
                    if tar.offset < limit and (os.path.islink(p) or os.path.isfile(p)):
                        tar.add(p, arcname=p.lstrip("/"), recursive=False)
                if tar.offset >= limit:
                    break
            if tar.offset >= limit:
                break
    tmp.rename(path)
    return path


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds, all threads: unlike wall time, not inflated by other load
    size: int  # bytes of the eStargz blob
    blob: Path | None = None


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


MIN_CHUNK = 64 << 10


@dataclass(frozen=True)
class Case:
    """One format: our options and the same as upstream's builder mode (estargz-check-gen)."""

    name: str
    options: BuildOptions
    upstream_mode: str


CASES = (
    Case("gzip", BuildOptions(compression_level=9), "estargz"),
    Case("zstd", BuildOptions(format=LayerFormat.ZSTD_CHUNKED, compression_level=3), "zstdchunked"),
    Case(
        "gzip-minchunk",
        BuildOptions(compression_level=9, min_chunk_size=MIN_CHUNK),
        f"estargz+minchunk={MIN_CHUNK}",
    ),
    Case(
        "zstd-minchunk",
        BuildOptions(format=LayerFormat.ZSTD_CHUNKED, compression_level=3, min_chunk_size=MIN_CHUNK),
        f"zstdchunked+minchunk={MIN_CHUNK}",
    ),
)


def run_ours(tar: Path, out: Path, options: BuildOptions = CASES[0].options) -> Run:
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    with tar.open("rb") as src, out.open("wb") as dst:
        result = build(src, dst, options)
    return Run(time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0, result.size, out)


def run_upstream(tar: Path, outdir: Path, mode: str = CASES[0].upstream_mode) -> Run:
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([str(GEN), "oci-image", str(tar), str(outdir), mode], check=True, capture_output=True)
    elapsed, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
    index = json.loads((outdir / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((outdir / "blobs" / "sha256" / manifest_digest).read_text())
    layer = manifest["layers"][0]
    return Run(elapsed, cpu, layer["size"], outdir / "blobs" / "sha256" / layer["digest"].split(":")[1])


def member_starts(blob: Path) -> list[bool]:
    """For each chunk in order: whether it starts a member (False: it joined one, innerOffset)."""
    with blob.open("rb") as f:
        entries = open_estargz(f).entries
    seen: set[int] = set()
    starts = []
    for e in entries:
        if e.type == "chunk" or (e.type == "reg" and e.size):
            starts.append(e.offset not in seen)
            seen.add(e.offset)
    return starts


def peak_rss_of_conversion(gib: float) -> tuple[float, float]:
    """Convert a synthetic layer of `gib` GiB at level 9, generated while it is read, in a child
    process (tests/estargz/rss_probe.py); return its (seconds, peak RSS in MiB)."""
    p = subprocess.run(
        [sys.executable, "-m", "tests.estargz.rss_probe", str(int(gib * 1024)), "9"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    seconds, peak_kib = p.stdout.split()
    return float(seconds), int(peak_kib) / 1024


def main() -> None:
    mib = int(os.environ.get("BENCH_ESTARGZ_MIB", "160"))
    tar = layer_tar(mib)
    tar_mib = tar.stat().st_size / (1 << 20)
    wanted = os.environ.get("BENCH_ESTARGZ_FORMATS", ",".join(c.name for c in CASES)).split(",")
    print(f"layer: {tar} ({tar_mib:.0f} MiB tar, real files from /usr/lib), 4 MiB chunks, "
          f"gzip level 9, zstd level 3, min chunk {MIN_CHUNK >> 10} KiB; {os.cpu_count()} CPUs")  # fmt: skip
    for case in CASES:
        if case.name not in wanted:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-estargz-") as tmp:
            ours = run_ours(tar, Path(tmp) / "ours.esgz", case.options)
            upstream = run_upstream(tar, Path(tmp) / "upstream", case.upstream_mode)
            grouping = ""
            if case.options.min_chunk_size and ours.blob and upstream.blob:
                a, b = member_starts(ours.blob), member_starts(upstream.blob)
                same = sum(x == y for x, y in zip(a, b, strict=True))
                grouping = (f"  grouping: same start/join decision for {same}/{len(a)} chunks, "
                            f"members ours {sum(a)} upstream {sum(b)}")  # fmt: skip
        print(f"[{case.name}]")
        for name, r in (("ours", ours), ("upstream", upstream)):
            print(f"  {name:9}: {r.wall:7.2f} s wall  {r.cpu:7.2f} s cpu  {r.size / (1 << 20):8.2f} MiB"
                  f"  ({tar_mib / r.wall:5.1f} MiB/s)")  # fmt: skip
        load = os.getloadavg()[0]
        print(f"  speed-up : {upstream.wall / ours.wall:.2f}x wall, {upstream.cpu / ours.cpu:.2f}x cpu"
              f"   size ours/upstream: {ours.size / upstream.size:.4f}  (load {load:.1f})")  # fmt: skip
        if grouping:
            print(grouping)
    gib = float(os.environ.get("BENCH_ESTARGZ_RSS_GIB", "0"))
    if gib > 0:
        seconds, rss = peak_rss_of_conversion(gib)
        print(f"{gib:g} GiB synthetic layer: {seconds:.1f} s, peak RSS {rss:.0f} MiB")
