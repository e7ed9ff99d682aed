"""`ctr-remote image optimize` end to end: ours (registry -> registry) against the upstream Go
`/usr/bin/ctr-remote` v0.12 doing the same job on the same machine (containerd pull, `image
optimize`, `image push`), on a realistic multi-layer image with a Python workload.

The image (built once from this machine's files, cached under build/bench/optimize-v2-200m/ as an OCI
layout) has four gzip layers:
  base    busybox-static, passwd/group, and every shared library python3.11 and its extension
          modules link against (`ldd`)
  libs    ~200 MB more of /usr/lib/x86_64-linux-gnu (never read by the workload)
  python  /usr/bin/python3.11 and /usr/lib/python3.11 (the standard library with its .pyc files)
  site    /usr/lib/python3/dist-packages (on sys.path, never imported)
and runs `python3.11 -c "import json, email, http.client, ...; print('ok')"`.

Both tools run against one local docker-registry; upstream runs in the containerd (overlayfs
snapshotter) of the lazy-pull test's stack (started and purged here, see tests/lazypull/stack.py).
Wall time covers everything each tool needs: ours is one command; upstream is pull + optimize +
push, from an empty content store. Both use gzip level 9, 4 MiB chunks, the same --period.
Every output is read back with `estargz-check image` for its size and prioritized entries.

Expected difference in what is prioritized: ours also lists the base layer's /etc/passwd and
/etc/group. runc reads them while it creates the container (before the workload's exec); upstream
starts its fanotify watch after `NewTask`, so it never sees those reads. A lazily pulled container
reads them at start too.

Environment: BENCH_OPTIMIZE_RUNS (runs of each tool, alternating, best reported; default 1),
BENCH_OPTIMIZE_LIBS_MIB (size of the `libs` layer's files; default 200).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctr_remote.image import host_platform
from ctr_remote.image import media_types as mt
from tests.lazypull.stack import StargzStack, start_stack

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "build" / "estargz-check"
OURS = [str(ROOT / ".venv" / "bin" / "ctr-remote")]
UPSTREAM = "/usr/bin/ctr-remote"
PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
WORKLOAD = (
    "import json, email.parser, http.client, urllib.request, asyncio, decimal, logging, argparse, "
    "xml.etree.ElementTree, sqlite3, ssl, unittest, csv, zipfile, tarfile, pathlib; print('ok')"
)
PERIOD = "30"  # both tools stop as soon as the workload exits; this only bounds a hang
TIMEOUT = 1800


# --- the input image -----------------------------------------------------------------------------


class _Layer:
    """A layer tar under construction from host paths: parents first (in every layer, as image
    builders write them), symlink targets followed, owners normalized to root, each path at most
    once, and no file that a lower layer already has."""

    def __init__(self, tar: tarfile.TarFile, skip: set[str]) -> None:
        self.tar = tar
        self.names: set[str] = set()
        self.skip = skip  # non-directories already in a lower layer
        self.bytes = 0

    def _add(self, host: str, arcname: str) -> None:
        if arcname in self.names or (arcname in self.skip and not _is_real_dir(host)):
            return
        info = self.tar.gettarinfo(host, arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if info.isreg():
            with open(host, "rb") as f:
                self.tar.addfile(info, f)
            self.bytes += info.size
        else:
            self.tar.addfile(info)
        self.names.add(arcname)

    def add(self, path: str, arcname: str | None = None) -> None:
        """Add `path` (as `arcname`, default the same path) with its parent directories."""
        arc = (arcname or path).strip("/")
        parts = arc.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            host_parent = "/" + parent if arcname is None else None
            if host_parent and _is_real_dir(host_parent):
                self._add(host_parent, parent)
            elif parent not in self.names:
                info = tarfile.TarInfo(parent)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self.tar.addfile(info)
                self.names.add(parent)
        self._add(path, arc)

    def add_resolved(self, path: str) -> None:
        """Add a file reached through symlinks (/lib64/ld-linux... -> /usr/lib/...): every link on
        the way and the file, under their merged-/usr names."""
        seen = 0
        while seen < 16:
            real_dir = os.path.realpath(os.path.dirname(path))
            path = os.path.join(real_dir, os.path.basename(path))
            self.add(path)
            if not os.path.islink(path):
                return
            target = os.readlink(path)
            path = target if target.startswith("/") else os.path.join(real_dir, target)
            seen += 1

    def add_tree(self, top: str, budget: int | None = None) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            self.add(dirpath)
            for name in sorted(filenames):
                if budget is not None and self.bytes >= budget:
                    return
                self.add(os.path.join(dirpath, name))


def _is_real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _shared_libraries() -> list[str]:
    """Every library python3.11 and its extension modules load (ldd), as ldd names them."""
    binaries = [PYTHON, *sorted(str(p) for p in Path(STDLIB, "lib-dynload").glob("*.so"))]
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0]
            if path.startswith("/"):
                libs.add(path)
    return sorted(libs)


def _base(layer: _Layer, budget: int) -> None:
    for link, target in (
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ):
        info = tarfile.TarInfo(link)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        layer.tar.addfile(info)
        layer.names.add(link)
    layer.add("/bin/busybox", "usr/bin/busybox")
    for applet in ("sh", "ls", "cat", "env"):
        info = tarfile.TarInfo(f"usr/bin/{applet}")
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
        layer.tar.addfile(info)
    for name in ("passwd", "group"):
        data = b"root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else b"root:x:0:\n"
        info = tarfile.TarInfo(f"etc/{name}")
        info.size, info.mode = len(data), 0o644
        if "etc" not in layer.names:
            layer.add("/etc")
        layer.tar.addfile(info, io.BytesIO(data))
    layer.add("/tmp")
    for lib in _shared_libraries():
        layer.add_resolved(lib)


def _libs(layer: _Layer, budget: int) -> None:
    layer.add_tree("/usr/lib/x86_64-linux-gnu", budget)


def _python(layer: _Layer, budget: int) -> None:
    layer.add(PYTHON)
    info = tarfile.TarInfo("usr/bin/python3")
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, "python3.11", 0o777
    layer.tar.addfile(info)
    layer.add_tree(STDLIB)


def _site(layer: _Layer, budget: int) -> None:
    layer.add_tree("/usr/lib/python3/dist-packages")


# Bottom first; each fills a layer (the budget, in bytes, only limits `libs`).
LAYERS = (("base", _base), ("libs", _libs), ("python", _python), ("site", _site))


@dataclass
class _Blob:
    digest: str
    size: int


def _write_blob(layout: Path, data: bytes) -> _Blob:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return _Blob(f"sha256:{digest}", len(data))


def _gzip_layer(raw: Path, layout: Path) -> tuple[_Blob, str]:
    """gzip (level 6, as image builders do) into the layout; returns the blob and the diff_id."""
    diff = hashlib.sha256()
    out = layout / "blobs" / "sha256" / "layer.part"
    with (
        raw.open("rb") as src,
        out.open("wb") as dst,
        gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        while chunk := src.read(1 << 20):
            diff.update(chunk)
            gz.write(chunk)
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    blob = out.rename(out.parent / digest.hexdigest())
    return _Blob(f"sha256:{digest.hexdigest()}", blob.stat().st_size), f"sha256:{diff.hexdigest()}"


def input_image(libs_mib: int) -> Path:
    """The benchmark image as an OCI layout (tag `v1`), built once under build/bench/."""
    layout = ROOT / "build" / "bench" / f"optimize-v2-{libs_mib}m"
    if (layout / "index.json").exists():
        return layout
    part = layout.with_suffix(".part")
    shutil.rmtree(part, ignore_errors=True)
    (part / "blobs" / "sha256").mkdir(parents=True)
    layers: list[tuple[_Blob, str]] = []
    history = []
    below: set[str] = set()
    for name, fill in LAYERS:
        raw = part / f"{name}.tar"
        with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
            layer = _Layer(tar, below)
            fill(layer, libs_mib << 20)
        below |= layer.names
        layers.append(_gzip_layer(raw, part))
        raw.unlink()
        history.append({"created_by": f"bench layer {name}"})
    plat = host_platform()
    config = {
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3.11", "-c", WORKLOAD],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        "history": history,
    }
    cfg = _write_blob(part, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg.digest, "size": cfg.size},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b, _ in layers],
    }
    man = _write_blob(part, json.dumps(manifest).encode())
    (part / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": man.digest,
                "size": man.size,
                "annotations": {"org.opencontainers.image.ref.name": "v1"},
            }
        ],
    }
    (part / "index.json").write_text(json.dumps(index))
    part.rename(layout)
    return layout


# --- running and measuring ----------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    layer_sizes: list[int] = field(default_factory=list)
    prioritized: list[list[str]] = field(default_factory=list)  # entries before the landmark, per layer
    prefetch_bytes: list[int] = field(default_factory=list)

    def files(self, regular: list[set[str]]) -> list[list[str]]:
        """The prioritized entries that are regular files of the source layer."""
        return [[p for p in prio if p in reg] for prio, reg in zip(self.prioritized, regular, strict=True)]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    p = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL
    )
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {p.returncode}: {p.stderr[-3000:]}")
    return p.stdout + p.stderr


def inspect(result: Result, ref: str) -> Result:
    """Sizes and prioritized entries of the image at `ref`, as the upstream Go reader sees them."""
    p = subprocess.run([str(CHECK), "image", ref], capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode != 0:
        raise RuntimeError(f"estargz-check rejected {ref}: {p.stderr}")
    layers = json.loads(p.stdout)["manifests"][0]["layers"]
    result.layer_sizes = [layer["blob"]["blob_size"] for layer in layers]
    result.prioritized = [list(layer["blob"]["prioritized"] or []) for layer in layers]
    result.prefetch_bytes = [layer["blob"]["prefetch_bytes"] for layer in layers]
    return result


# Each run writes to a repository of its own: blobs already in the target repository would not be
# uploaded again, and every run must do the whole job.


def run_ours(stack: StargzStack, run: int) -> Result:
    src, dst = f"http://{stack.ref('src/bench:v1')}", f"http://{stack.ref(f'ours/r{run}/bench:esgz')}"
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        t0 = time.perf_counter()
        out = _run([*OURS, "image", "optimize", "--plain-http", "--oci", "--period", PERIOD, src, dst], env)
        seconds = time.perf_counter() - t0
    if "ok" not in out.split():
        raise RuntimeError(f"our profiling run did not print the workload's 'ok': {out[-2000:]}")
    return inspect(Result("ours", seconds, {"optimize": seconds}), dst.removeprefix("http://"))


def run_upstream(stack: StargzStack, run: int) -> Result:
    src, dst = stack.ref("src/bench:v1"), stack.ref(f"upstream/r{run}/bench:esgz")
    steps: dict[str, float] = {}
    for name, args in (
        ("pull", ["image", "pull", "--plain-http", src]),
        ("optimize", ["image", "optimize", "--oci", "--period", PERIOD, src, dst]),
        ("push", ["image", "push", "--plain-http", dst]),
    ):
        t0 = time.perf_counter()
        stack.ctr(*args)
        steps[name] = time.perf_counter() - t0
    # Leave containerd as empty as the next run expects it.
    stack.ctr("image", "rm", "--sync", src, dst)
    return inspect(Result("upstream", sum(steps.values()), steps), dst)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


def _regular_files(layout: Path) -> list[set[str]]:
    """Names of the regular files of each source layer (to tell files from directories)."""
    regular = []
    for layer in _layout_manifest(layout)["layers"]:
        blob = layout / "blobs" / "sha256" / layer["digest"].removeprefix("sha256:")
        with tarfile.open(blob, "r|gz") as tar:
            regular.append({m.name.removeprefix("./") for m in tar if m.isreg()})
    return regular


def _row(label: str, ours: float | str, upstream: float | str, ratio: float | None = None) -> str:
    r = "" if ratio is None else f"{ratio:.3f}"
    return f"{label:28}{ours:>12}{upstream:>12}{r:>16}"


def report(image: Path, ours: Result, upstream: Result) -> None:
    src_sizes = [layer["size"] for layer in _layout_manifest(image)["layers"]]
    regular = _regular_files(image)
    ours_files, up_files = ours.files(regular), upstream.files(regular)
    names = [name for name, _ in LAYERS]
    size_o, size_u = sum(ours.layer_sizes), sum(upstream.layer_sizes)
    print(f"input: {image} ({_mib(sum(src_sizes))} MiB gzip in {len(src_sizes)} layers)")
    print(f'workload: python3.11 -c "{WORKLOAD}"')
    print(f"{'':28}{'ours':>12}{'upstream':>12}{'ours/upstream':>16}")
    print(
        _row(
            "wall time (s)", f"{ours.seconds:.2f}", f"{upstream.seconds:.2f}", ours.seconds / upstream.seconds
        )
    )
    print(_row("output layers (MiB)", _mib(size_o), _mib(size_u), size_o / size_u))
    n_o, n_u = sum(map(len, ours.prioritized)), sum(map(len, upstream.prioritized))
    print(_row("prioritized entries", n_o, n_u, n_o / n_u if n_u else None))
    f_o, f_u = sum(map(len, ours_files)), sum(map(len, up_files))
    print(_row("prioritized regular files", f_o, f_u, f_o / f_u if f_u else None))
    p_o, p_u = sum(ours.prefetch_bytes), sum(upstream.prefetch_bytes)
    print(_row("prefetch range (MiB)", _mib(p_o), _mib(p_u), p_o / p_u if p_u else None))
    print("upstream steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in upstream.steps.items()))
    print(
        f"{'per layer':14}{'source MiB':>11}{'ours MiB':>10}{'up MiB':>9}{'ours files':>12}{'up files':>10}"
    )
    for i, name in enumerate(names):
        print(
            f"  {name:12}{_mib(src_sizes[i]):>11}{_mib(ours.layer_sizes[i]):>10}"
            f"{_mib(upstream.layer_sizes[i]):>9}{len(ours_files[i]):>12}{len(up_files[i]):>10}"
        )
    for i, name in enumerate(names):
        only_o = sorted(set(ours_files[i]) - set(up_files[i]))
        only_u = sorted(set(up_files[i]) - set(ours_files[i]))
        if only_o or only_u:
            print(f"  {name}: files only ours prioritized: {only_o or '-'}; only upstream: {only_u or '-'}")
    met = ours.seconds < upstream.seconds and size_o <= size_u
    print(
        f"target (faster at no larger output): {'met' if met else 'NOT met'} "
        f"(speed-up {upstream.seconds / ours.seconds:.2f}x, size {size_o / size_u:.3f})"
    )


def _layout_manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    return json.loads((layout / "blobs" / "sha256" / digest).read_text())


def main() -> None:
    runs = int(os.environ.get("BENCH_OPTIMIZE_RUNS", "1"))
    libs_mib = int(os.environ.get("BENCH_OPTIMIZE_LIBS_MIB", "200"))
    t0 = time.perf_counter()
    image = input_image(libs_mib)
    print(f"input image ready in {time.perf_counter() - t0:.1f} s", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-stack-", dir="/tmp") as base,
        start_stack(Path(base)) as stack,
    ):
        _run(
            ["skopeo", "copy", "-q", "--dest-tls-verify=false",
             f"oci:{image}:v1", f"docker://{stack.ref('src/bench:v1')}"],
        )  # fmt: skip
        best: dict[str, Result] = {}
        for run in range(runs):
            for tool in (run_ours, run_upstream):
                r = tool(stack, run)
                print(f"run {run}: {r.tool:8} {r.seconds:7.2f} s", flush=True)
                if r.tool not in best or r.seconds < best[r.tool].seconds:
                    best[r.tool] = r
    report(image, best["ours"], best["upstream"])


if __name__ == "__main__":
    main()
