"""Recording overhead: the same workload under plain `runc` on an extracted rootfs vs under the
profiler (per-layer recording FUSE mounts + overlayfs + runc).

The image is busybox-static plus a data layer of a few thousand small files and an upper layer that
overrides some of them. Workloads:
- find:  `find /data -type f | xargs cat` (open-heavy: every file opened and read once);
- paths: `cat` of 300 files named explicitly (lookups + opens, like an interpreter starting up);
- py:    FUSE-PROBE's Python start-up, `python3 -c "import json, http.server, email.parser"`, on a layer
         made of the host's Debian python3.11 (binary, its libraries, the 1,400-file stdlib), when present.
Times are medians of REPS interleaved runs (the machine is shared: watch the load); "runc run" is the
container's own wall time, "profile()" the whole call (unpack, mounts, run, unmount, cleanup), and the
daemon's CPU seconds are the steadier measure of the recorder's own cost.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from ctr_remote.profile import Workload, profile
from ctr_remote.profile import recorder as recorder_mod
from ctr_remote.profile import runtime as runtime_mod
from ctr_remote.profile.rootfs import User
from ctr_remote.profile.spec import build_spec, command_of, hosts_text, resolv_conf_text
from tests.helpers.images import LayerBuilder, image_config

REPS = 7
FILES = 3000
DIRS = 30
WORKLOADS = {
    "find": "find /data -type f | xargs cat > /dev/null",
    "paths": "cat "
    + " ".join(f"/data/d{i % DIRS}/f{i}.txt" for i in range(0, FILES, FILES // 300))
    + " > /dev/null",
}
PYTHON = Path("/usr/bin/python3.11")
if PYTHON.exists():
    WORKLOADS["py"] = "python3 -c 'import json, http.server, email.parser'"


def _python_layer(tmp: Path) -> Path:
    """The host's python3.11 with what it needs to start: ld.so, its libraries, the standard library."""
    layer = LayerBuilder().symlink("lib64", "usr/lib64").symlink("lib", "usr/lib")
    layer.file("usr/bin/python3.11", PYTHON.read_bytes(), mode=0o755).symlink("usr/bin/python3", "python3.11")
    libs = ["libm.so.6", "libz.so.1", "libexpat.so.1", "libc.so.6"]
    for lib in libs:
        layer.file(
            f"usr/lib/x86_64-linux-gnu/{lib}", Path("/usr/lib/x86_64-linux-gnu", lib).read_bytes(), mode=0o755
        )
    loader = Path("/usr/lib64/ld-linux-x86-64.so.2")
    layer.file("usr/lib64/ld-linux-x86-64.so.2", loader.read_bytes(), mode=0o755)
    stdlib = Path("/usr/lib/python3.11")
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in ("test", "idlelib", "tkinter", "turtledemo")]
        for name in filenames:
            path = Path(dirpath, name)
            rel = "usr/lib/python3.11/" + str(path.relative_to(stdlib))
            if path.is_symlink():
                layer.symlink(rel, os.readlink(path))
            elif path.is_file():
                # Real mtimes: .pyc files are only valid for sources with the mtime they recorded.
                st = path.stat()
                layer.file(rel, path.read_bytes(), mode=st.st_mode & 0o777, mtime=int(st.st_mtime))
    return layer.write(tmp / "python.tar.gz")


def _image(tmp: Path) -> list[Path]:
    base = LayerBuilder().busybox().write(tmp / "base.tar.gz")
    data = LayerBuilder()
    for i in range(FILES):
        data.file(f"data/d{i % DIRS}/f{i}.txt", (f"file {i}\n" * (1 + i % 200)).encode())
    upper = LayerBuilder()
    for i in range(0, FILES, 10):
        upper.file(f"data/d{i % DIRS}/f{i}.txt", b"overridden\n")
    middle = [_python_layer(tmp)] if PYTHON.exists() else []
    return [base, *middle, data.write(tmp / "data.tar.gz"), upper.write(tmp / "upper.tar.gz")]


def _extract(layers: list[Path], rootfs: Path) -> None:
    """The plain baseline: layers applied in order into one directory (trusted bench input, no whiteouts)."""
    rootfs.mkdir()
    for blob in layers:
        with tarfile.open(blob) as tf:
            tf.extractall(rootfs, filter="fully_trusted")


_RUN_NUMBERS = itertools.count()


def _plain_run(tmp: Path, rootfs: Path, script: str) -> float:
    n = next(_RUN_NUMBERS)
    workload = Workload(period=600)
    command = command_of(image_config(cmd=["/bin/sh", "-c", script]), workload)
    (tmp / "hosts").write_text(hosts_text(workload))
    (tmp / "resolv.conf").write_text(resolv_conf_text(workload))
    bundle = tmp / f"bundle-{n}"
    bundle.mkdir()
    spec = build_spec(
        command,
        User(0, 0),
        workload,
        rootfs=rootfs,
        hosts=tmp / "hosts",
        resolv_conf=tmp / "resolv.conf",
        hostname="bench",
    )
    (bundle / "config.json").write_text(json.dumps(spec))
    root = tmp / f"runc-{n}"
    started = time.perf_counter()
    subprocess.run(
        ["runc", "--root", str(root), "run", "--bundle", str(bundle), f"bench-plain-{os.getpid()}-{n}"],
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def _daemon_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profiled_run(
    tmp: Path, layers: list[Path], script: str
) -> tuple[float, float, int, float, Counter[str]]:
    """(runc run s, profile() s, recorded paths, FUSE daemon CPU s, FUSE requests served in Python)."""
    timings: list[float] = []
    cpu: list[float] = []
    requests: Counter[str] = Counter()
    original_run = runtime_mod.Container.run
    original_stop = recorder_mod.RecorderDaemon.stop

    def timed_run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return original_run(self, *args, **kwargs)
        finally:
            timings.append(time.perf_counter() - started)

    def measured_stop(self):  # type: ignore[no-untyped-def]
        with contextlib.suppress(OSError):
            cpu.append(_daemon_cpu_seconds(self.process.pid))
        original_stop(self)
        for mount in self.mounts:
            with contextlib.suppress(FileNotFoundError):
                requests.update(json.loads(Path(str(mount.log) + ".stats").read_text()))

    runtime_mod.Container.run = timed_run  # type: ignore[method-assign]
    recorder_mod.RecorderDaemon.stop = measured_stop  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        result = profile(
            layers, image_config(cmd=["/bin/sh", "-c", script]), Workload(period=600), workdir=tmp
        )
        whole = time.perf_counter() - started
    finally:
        runtime_mod.Container.run = original_run  # type: ignore[method-assign]
        recorder_mod.RecorderDaemon.stop = original_stop  # type: ignore[method-assign]
    assert result.exit_code == 0, result.exit_code
    return timings[0], whole, sum(len(p) for p in result.accessed), sum(cpu), requests


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    try:
        layers = _image(tmp)
        rootfs = tmp / "rootfs"
        _extract(layers, rootfs)
        for name, script in WORKLOADS.items():
            plain, runs = [], []
            for _ in range(REPS):  # interleaved, so both see the same background load
                plain.append(_plain_run(tmp, rootfs, script))
                runs.append(_profiled_run(tmp, layers, script))
            p = statistics.median(plain)
            r = statistics.median(x[0] for x in runs)
            w = statistics.median(x[1] for x in runs)
            c = statistics.median(x[3] for x in runs)
            print(
                f"{name:6s} plain runc {p:.3f}s | recorder: runc run {r:.3f}s ({r / p:.2f}x), "
                f"profile() {w:.3f}s | FUSE daemon CPU {c:.2f}s | {runs[0][2]} paths recorded | "
                f"FUSE requests in Python: {dict(runs[0][4])}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
