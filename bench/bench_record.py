"""Recording overhead (`make bench BENCH=record`): one workload under plain `runc` on an extracted
directory, on overlayfs with no recorder, and under the profiler with each recorder.

Each workload times itself inside the container, so unpacking and mounting do not count:
- py:    Python start-up importing 40 stdlib modules (a timer forks `python3 -c "import ..."`);
- find:  `find /data -type f | xargs cat` over 3,000 files in 30 directories (the same timer);
- node:  a Node.js-style tree of 5,000 small modules in nested directories, each opened and read once
         by a Python script that times its walk.
The image: busybox-static, the host's python3.11 (binary, libraries, stdlib), the data, the module
tree, and an upper layer overriding some data files. "overlay" is the recorders' floor: the same
overlay mount over the same unpacked layers, nobody watching. Medians of REPS interleaved runs
(BENCH_REPS to change it; the machine is shared: the load average is printed with the results).
The files recorded by the two recorders are compared, per layer, for every workload.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.log import configure
from ctr_remote.profile import Workload, mounts, profile
from ctr_remote.profile import recorder as recorder_mod
from ctr_remote.profile.rootfs import User
from ctr_remote.profile.spec import build_spec, command_of, hosts_text, resolv_conf_text
from ctr_remote.profile.unpack import unpack_layer
from ctr_remote.profile.workload import RecorderKind
from tests.helpers.images import LayerBuilder, image_config

REPS = int(os.environ.get("BENCH_REPS", "7"))
FILES, DIRS = 3000, 30
MODULES = 5000
PYTHON = Path("/usr/bin/python3.11")
IMPORTS = [
    "json",
    "http.server",
    "email.parser",
    "argparse",
    "logging",
    "collections",
    "dataclasses",
    "typing",
    "pathlib",
    "subprocess",
    "tempfile",
    "shutil",
    "textwrap",
    "string",
    "datetime",
    "calendar",
    "csv",
    "configparser",
    "difflib",
    "fnmatch",
    "glob",
    "gzip",
    "heapq",
    "inspect",
    "ipaddress",
    "optparse",
    "pprint",
    "random",
    "statistics",
    "tarfile",
    "uuid",
    "xml.etree.ElementTree",
    "zipfile",
    "base64",
    "pickle",
    "queue",
    "socket",
    "selectors",
    "locale",
    "unittest",
]
TIMER = b"""import os, sys, time
t = time.monotonic_ns()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
cpu = int((usage.ru_utime + usage.ru_stime) * 1e9)
print("ELAPSED", time.monotonic_ns() - t, cpu, status, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""
NODE = b"""import os, resource, time
t, c = time.monotonic_ns(), resource.getrusage(resource.RUSAGE_SELF)
n = 0
for root, dirs, files in os.walk("/node_modules"):
    for name in files:
        with open(os.path.join(root, name), "rb") as f:
            f.read()
        n += 1
e = resource.getrusage(resource.RUSAGE_SELF)
cpu = int((e.ru_utime + e.ru_stime - c.ru_utime - c.ru_stime) * 1e9)
print("ELAPSED", time.monotonic_ns() - t, cpu, n, flush=True)
"""
WORKLOADS = {
    "py": ["python3", "/bench/timer.py", "python3", "-c", "import " + ", ".join(IMPORTS)],
    "find": ["python3", "/bench/timer.py", "sh", "-c", "find /data -type f | xargs cat > /dev/null"],
    "node": ["python3", "/bench/node.py"],
}
COLUMNS = ("plain", "overlay", "fanotify", "fuse")
_LIBS = ("libm.so.6", "libz.so.1", "libexpat.so.1", "libc.so.6", "libffi.so.8", "libuuid.so.1")


def _python_layer(tmp: Path) -> Path:
    """The host's python3.11 with what it needs to start: ld.so, its libraries, the standard library."""
    layer = LayerBuilder().symlink("lib64", "usr/lib64").symlink("lib", "usr/lib")
    layer.file("usr/bin/python3.11", PYTHON.read_bytes(), mode=0o755).symlink("usr/bin/python3", "python3.11")
    for lib in _LIBS:
        path = Path("/usr/lib/x86_64-linux-gnu", lib)
        if path.exists():
            layer.file(f"usr/lib/x86_64-linux-gnu/{lib}", path.read_bytes(), mode=0o755)
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
    layer.file("bench/timer.py", TIMER).file("bench/node.py", NODE)
    return layer.write(tmp / "python.tar.gz")


def _image(tmp: Path) -> list[Path]:
    base = LayerBuilder().busybox().write(tmp / "base.tar.gz")
    data = LayerBuilder()
    for i in range(FILES):
        data.file(f"data/d{i % DIRS}/f{i}.txt", (f"file {i}\n" * (1 + i % 200)).encode())
    node = LayerBuilder()
    for i in range(MODULES):  # 250 packages, each lib/ with 4 sub-directories of 5 modules
        pkg, k = divmod(i, 20)
        node.file(f"node_modules/pkg{pkg}/lib/s{k % 4}/m{k}.js", b"module.exports = %d;\n" % i * 20)
    upper = LayerBuilder()
    for i in range(0, FILES, 10):
        upper.file(f"data/d{i % DIRS}/f{i}.txt", b"overridden\n")
    return [
        base,
        _python_layer(tmp),
        data.write(tmp / "data.tar.gz"),
        node.write(tmp / "node.tar.gz"),
        upper.write(tmp / "upper.tar.gz"),
    ]


@dataclass(frozen=True)
class Timing:
    """What the workload measured itself: wall seconds, and its CPU seconds (user + system), which
    are steadier than wall time on a shared machine and hold the in-kernel cost of a recorder."""

    wall: float
    cpu: float


def _elapsed(output: str) -> Timing:
    """The workload's own measure, from its "ELAPSED wall-ns cpu-ns ..." line."""
    for line in output.splitlines():
        if line.startswith("ELAPSED "):
            fields = line.split()
            return Timing(int(fields[1]) / 1e9, int(fields[2]) / 1e9)
    raise RuntimeError(f"the workload printed no time: {output[-500:]!r}")


_RUN_NUMBERS = itertools.count()


def _runc(tmp: Path, rootfs: Path, argv: list[str]) -> Timing:
    """`runc run` of `argv` on `rootfs`, with the spec the profiler would write."""
    n = next(_RUN_NUMBERS)
    workload = Workload(period=600)
    command = command_of(image_config(cmd=argv, env=["PATH=/usr/bin:/bin"]), workload)
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
    done = subprocess.run(
        [
            "runc",
            "--root",
            str(tmp / f"runc-{n}"),
            "run",
            "--bundle",
            str(bundle),
            f"bench-{os.getpid()}-{n}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    shutil.rmtree(bundle)
    return _elapsed(done.stdout)


def _overlay_run(tmp: Path, layers: Path, count: int, argv: list[str]) -> Timing:
    """The floor of both recorders: the profiler's overlay over the unpacked layers, no recorder."""
    n = next(_RUN_NUMBERS)
    run = tmp / f"ovl-{n}"
    for name in ("upper", "work", "rootfs"):
        (run / name).mkdir(parents=True)
    lowers = [str(i) for i in reversed(range(count))]
    mounts.mount_overlay(
        run / "rootfs", layers, lowers, run / "upper", run / "work", "index=off,metacopy=off,redirect_dir=off"
    )
    try:
        return _runc(tmp, run / "rootfs", argv)
    finally:
        mounts.umount(run / "rootfs")
        shutil.rmtree(run)


@contextlib.contextmanager
def _stdout_to(path: Path) -> Iterator[None]:
    """The container inherits our stdout: send it to `path` for the length of the call."""
    sys.stdout.flush()
    saved = os.dup(1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(fd)


class _FuseStats:
    """The FUSE daemon's CPU seconds and its request counts, read just before it stops."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.requests: list[Counter[str]] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        original = recorder_mod.RecorderDaemon.stop
        stats = self

        def measured_stop(daemon):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
                stats.cpu.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
            original(daemon)
            counts: Counter[str] = Counter()
            for mount in daemon.mounts:
                with contextlib.suppress(FileNotFoundError):
                    counts.update(json.loads(Path(str(mount.log) + ".stats").read_text()))
            stats.requests.append(counts)

        recorder_mod.RecorderDaemon.stop = measured_stop  # type: ignore[method-assign]
        try:
            yield
        finally:
            recorder_mod.RecorderDaemon.stop = original  # type: ignore[method-assign]


def _profiled_run(
    tmp: Path, layers: list[Path], argv: list[str], kind: RecorderKind
) -> tuple[Timing, list[list[str]]]:
    out = tmp / "profiled.out"
    config = image_config(cmd=argv, env=["PATH=/usr/bin:/bin"])
    with _stdout_to(out):
        result = profile(layers, config, Workload(period=600, recorder=kind), workdir=tmp)
    assert result.exit_code == 0, result.exit_code
    return _elapsed(out.read_text()), result.accessed


def _wall(runs: list[Timing]) -> float:
    return statistics.median(t.wall for t in runs)


def _cpu(runs: list[Timing]) -> float:
    return statistics.median(t.cpu for t in runs)


def _cell(runs: list[Timing], floor: list[Timing] | None) -> str:
    """Median wall and CPU milliseconds, and with `floor` their ratios to it."""
    text = f"{_wall(runs) * 1000:.0f} ms"
    if floor is not None:
        text += f" ({_wall(runs) / _wall(floor):.2f}x)"
    text += f", CPU {_cpu(runs) * 1000:.0f} ms"
    if floor is not None:
        text += f" ({_cpu(runs) / _cpu(floor):.2f}x)"
    return text


def main() -> None:
    configure(stream=sys.stderr)
    logging_quiet()
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    # Everything on one tmpfs, as the profiler unpacks (when the image fits in memory).
    mounts.mount("tmpfs", tmp, "tmpfs", "mode=0700", mounts.MS_NODEV)
    try:
        layers = _image(tmp)
        rootfs = tmp / "rootfs"
        rootfs.mkdir()
        for blob in layers:  # the plain baseline: the layers applied in order (no whiteouts here)
            with tarfile.open(blob) as tf:
                tf.extractall(rootfs, filter="fully_trusted")
        unpacked = tmp / "layers"
        unpacked.mkdir()
        for i, blob in enumerate(layers):
            unpack_layer(blob, unpacked / str(i))
        print(f"{REPS} interleaved runs each; load average before: {_load()}", flush=True)
        rows = []
        for name, argv in WORKLOADS.items():
            times: dict[str, list[Timing]] = {c: [] for c in COLUMNS}
            recorded: dict[str, list[list[list[str]]]] = {"fanotify": [], "fuse": []}
            fuse = _FuseStats()
            runs: dict[str, Callable[[], Timing]] = {
                "plain": functools.partial(_runc, tmp, rootfs, argv),
                "overlay": functools.partial(_overlay_run, tmp, unpacked, len(layers), argv),
            }
            for _ in range(REPS):
                for column in COLUMNS:
                    if column in runs:
                        times[column].append(runs[column]())
                        continue
                    with fuse.watching():
                        seconds, accessed = _profiled_run(tmp, layers, argv, RecorderKind(column))
                    times[column].append(seconds)
                    recorded[column].append(accessed)
            rows.append((name, times, recorded, fuse))
            _print_row(name, times, recorded, fuse)
        print(f"load average after: {_load()}", flush=True)
        _print_table(rows)
        _round_trips(tmp, "")
        # The same without the daemon's look-ahead (it blocks at once): what an idle vCPU's wake-up adds.
        with _env(CTR_REMOTE_FUSE_SPIN="0"):
            _round_trips(tmp, ", daemon sleeping between requests")
    finally:
        with contextlib.suppress(OSError):
            mounts.umount(tmp, lazy=True)
        shutil.rmtree(tmp, ignore_errors=True)


ROUND_TRIP_FILES = 2000


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _round_trips(tmp: Path, label: str) -> None:
    """What each request the FUSE recorder still serves costs the opener: one layer mounted by the
    daemon vs the same directory read directly, N distinct files, in this process (per-call Python
    overhead cancels out). stat of a new name = LOOKUP; open+close = OPEN + (async) RELEASE; read =
    passthrough (no request)."""
    blob = LayerBuilder()
    for i in range(ROUND_TRIP_FILES):
        blob.file(f"rt/d{i % 20}/f{i}", b"x" * 100)
    rt = Path(tempfile.mkdtemp(prefix="rt-", dir=tmp))
    state = rt / "state"
    state.mkdir()
    layer = unpack_layer(blob.write(rt / "rt.tar", compression=None), rt / "layer")
    daemon = recorder_mod.RecorderDaemon(state)
    try:
        mount = daemon.serve(0, layer, rt / "mnt")
        daemon.wait_ready(time.monotonic() + recorder_mod.READY_TIMEOUT)
        names = [f"rt/d{i % 20}/f{i}" for i in range(ROUND_TRIP_FILES)]
        results = {}
        for where, root in (("dir", layer.root), ("fuse", mount.mountpoint)):
            paths = [os.fsencode(root / n) for n in names]
            started = time.perf_counter()
            for p in paths:
                os.stat(p)
            lookup = time.perf_counter() - started
            started = time.perf_counter()
            for p in paths:
                os.close(os.open(p, os.O_RDONLY))
            opened = time.perf_counter() - started
            started = time.perf_counter()
            for p in paths:
                fd = os.open(p, os.O_RDONLY)
                os.read(fd, 4096)
                os.close(fd)
            read = time.perf_counter() - started - opened
            results[where] = (lookup, opened, read)
        per = [(f - d) / ROUND_TRIP_FILES * 1e6 for f, d in zip(results["fuse"], results["dir"], strict=True)]
        base = [d / ROUND_TRIP_FILES * 1e6 for d in results["dir"]]
        print(
            f"FUSE round trips{label}, added per call over the directory itself ({ROUND_TRIP_FILES} files): "
            f"LOOKUP (stat of a new name) +{per[0]:.1f} us (dir: {base[0]:.1f} us), "
            f"OPEN+RELEASE (open+close) +{per[1]:.1f} us (dir: {base[1]:.1f} us), "
            f"read through passthrough +{per[2]:.1f} us (dir: {base[2]:.1f} us)",
            flush=True,
        )
    finally:
        daemon.stop()


def logging_quiet() -> None:
    """Only warnings from the profiler: its per-run info lines would drown the results."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _same(recorded: dict[str, list[list[list[str]]]]) -> str:
    """Whether every run of both recorders recorded the same files in the same layers."""
    sets = {json.dumps([sorted(layer) for layer in run]) for runs in recorded.values() for run in runs}
    if len(sets) == 1:
        per_layer = [len(layer) for layer in recorded["fuse"][0]]
        return f"identical, {sum(per_layer)} files (per layer {per_layer})"
    fan = [set(layer) for layer in recorded["fanotify"][0]]
    fus = [set(layer) for layer in recorded["fuse"][0]]
    diff = [sorted(a ^ b)[:5] for a, b in zip(fan, fus, strict=True)]
    return f"DIFFERENT: {len(sets)} distinct sets; fanotify^fuse per layer (first 5): {diff}"


def _print_row(name: str, times: dict[str, list[Timing]], recorded: dict, fuse: _FuseStats) -> None:
    cells = ", ".join(f"{c} {_cell(times[c], times['overlay'])}" for c in COLUMNS)
    requests = fuse.requests[0] if fuse.requests else {}
    cpu = statistics.median(fuse.cpu) if fuse.cpu else 0.0
    print(f"{name}: {cells} (x: of overlay)", flush=True)
    print(f"  recorded: {_same(recorded)}", flush=True)
    print(f"  FUSE daemon: {cpu:.2f} s CPU, requests {dict(requests)}", flush=True)


def _print_table(rows: list) -> None:
    print()
    print("| workload | plain runc | overlay, no recorder | fanotify | FUSE |")
    print("|---|---|---|---|---|")
    for name, times, _, _ in rows:
        cells = [_cell(times["plain"], None), _cell(times["overlay"], None)]
        cells += [_cell(times[c], times["overlay"]) for c in ("fanotify", "fuse")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
