"""Fixtures for the profiling runner's tests: a busybox base layer, a work dir per test, and a check,
after every test, that nothing was left behind (mounts, processes, files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from ctr_remote.profile import ProfileResult, Workload, profile
from ctr_remote.profile.workload import RecorderKind
from tests.helpers.images import LayerBuilder, image_config

ROOT = Path(__file__).resolve().parents[2]
# Tests that must be interrupted sleep this long; no such process may survive. Unique to this pytest
# process: other suites running at the same time on the machine sleep their own.
SENTINEL = f"98{os.getpid() % 10_000:04d}"


@pytest.fixture(autouse=True)
def logs_on_stderr() -> Iterator[None]:
    """As the CLI has them: the workload's stdout is then what the tests see on stdout."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bottom layer: busybox-static, /etc/passwd, /etc/group, /tmp."""
    return LayerBuilder().busybox().write(tmp_path_factory.mktemp("base") / "busybox.tar.gz")


def _processes_mentioning(needles: Sequence[str]) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{pid}: {cmdline}")
    return found


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def assert_no_leftovers(tmp_path: Path, work: Path) -> None:
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(tmp_path) in line]
    assert not mounts, f"mounts left behind: {mounts}"
    procs = _processes_mentioning([str(tmp_path), f"sleep {SENTINEL}"])
    assert not procs, f"processes left behind: {procs}"
    groups = [
        fd for fd in os.listdir("/proc/self/fd") if _link(f"/proc/self/fd/{fd}") == "anon_inode:[fanotify]"
    ]
    assert not groups, f"fanotify groups left open: {groups}"
    assert list(work.iterdir()) == [], f"files left in the work dir: {list(work.iterdir())}"


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """The `workdir` for profile(); after the test it must be empty, with no mounts or processes left."""
    path = tmp_path / "work"
    path.mkdir()
    yield path
    assert_no_leftovers(tmp_path, path)


RECORDERS = [kind.value for kind in RecorderKind]


@pytest.fixture
def recorder() -> str:
    """The `--recorder` of the `run` fixture; `parametrize("recorder", RECORDERS)` runs a test with each."""
    return RecorderKind.FUSE.value


@pytest.fixture
def run(work: Path, busybox_layer: Path, recorder: str):
    """run(script, *upper_layers, **workload fields) -> ProfileResult: `sh -c script` on busybox + layers."""

    def _run(script: str | None, *layers: Path, config: dict | None = None, **fields: Any) -> ProfileResult:
        from tests.helpers.images import image_config

        cfg = config or image_config(cmd=["/bin/sh", "-c", script or "true"])
        fields.setdefault("period", 30)
        fields.setdefault("recorder", RecorderKind(recorder))
        return profile([busybox_layer, *layers], cfg, Workload(**fields), workdir=work)

    return _run


def driver_command(
    tmp_path: Path, work: Path, layers: Sequence[Path], config: dict, workload: dict[str, Any]
) -> tuple[list[str], Path]:
    """The command that runs profile() in its own process (tests.profile.driver), and its result file."""
    spec = tmp_path / "driver.json"
    result = tmp_path / "result.json"
    spec.write_text(
        json.dumps(
            {
                "layers": [str(p) for p in layers],
                "config": config,
                "workload": workload,
                "workdir": str(work),
                "result": str(result),
            }
        )
    )
    return [sys.executable, "-m", "tests.profile.driver", str(spec)], result


DRIVER_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def start_driver(
    tmp_path: Path, work: Path, layers: Sequence[Path], config: dict, workload: dict[str, Any], **popen: Any
) -> tuple[subprocess.Popen, Path]:
    """Start profile() in a separate process; returns (process, result file)."""
    cmd, result = driver_command(tmp_path, work, layers, config, workload)
    popen.setdefault("env", DRIVER_ENV)
    return subprocess.Popen(cmd, cwd=ROOT, **popen), result


LINE_TIMEOUT = 60.0


def wait_for_line(proc: subprocess.Popen, text: str) -> list[str]:
    """Read the driver's stdout until a line contains `text` (the workload's readiness marker)."""
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + LINE_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            raise AssertionError(f"driver ended before printing {text!r}: {seen}")
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {LINE_TIMEOUT}s: {seen}")


def start_sleeping_workload(
    tmp_path: Path,
    work: Path,
    layers: Sequence[Path],
    recorder: str = RecorderKind.FUSE.value,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, Path]:
    """profile() in a separate process on a workload that reads /data/before.txt, says READY and then
    sleeps through a 600 s period; returns once READY was printed (the caller stops it)."""
    script = f"cat /data/before.txt; echo; echo READY; sleep {SENTINEL}"
    proc, result = start_driver(
        tmp_path, work, layers, image_config(cmd=["/bin/sh", "-c", script]),
        {"period": 600, "recorder": recorder},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or DRIVER_ENV,
    )  # fmt: skip
    try:
        wait_for_line(proc, "READY")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, result
