"""SIGKILL of the process running profile(): its janitor removes the container, the FUSE daemon's
mounts, the work dir and its record; with the janitor killed too, `ctr-remote cleanup` or the next run
does. Each test keeps its run records in a directory of its own (CTR_REMOTE_RUNS_DIR): another suite
running at the same time would otherwise sweep a dead run's record before the test looks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_remote.runstate import start_time
from tests.helpers.processes import children, janitors_of, still_running, wait_gone
from tests.profile.conftest import DRIVER_ENV, RECORDERS, ROOT, start_sleeping_workload


def runs_env(tmp_path: Path) -> dict[str, str]:
    return {**DRIVER_ENV, "CTR_REMOTE_RUNS_DIR": str(tmp_path / "runs")}


def cleanup(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctr_remote", "cleanup"],
        cwd=ROOT, env=runs_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def killed_run(tmp_path: Path, work: Path, layers: list[Path], recorder: str, *, janitor_too: bool):
    """Start a run, SIGKILL it (and its janitor if `janitor_too`); returns its helpers and record."""
    proc, _ = start_sleeping_workload(tmp_path, work, layers, recorder, env=runs_env(tmp_path))
    helpers = children(proc.pid)  # runc, the recorder's process, the janitor
    janitors = janitors_of(helpers)
    assert len(helpers) >= 3 and len(janitors) == 1, helpers
    records = list((tmp_path / "runs").glob(f"{proc.pid}-{start_time(proc.pid)}-*.json"))
    assert len(records) == 1, records
    record = records[0]
    if janitor_too:
        os.kill(janitors[0], signal.SIGKILL)
        wait_gone(janitors[0])
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return helpers, janitors[0], record


def assert_gone(helpers: list[tuple[int, int]], record: Path) -> None:
    alive = still_running(helpers)
    assert not alive, f"still running after the run was killed: {alive}"
    assert list(record.parent.iterdir()) == []  # no record, lock or temp file
    # The `work` fixture checks mounts, the sleeping workload and the work dir.


@pytest.mark.parametrize("recorder", RECORDERS)
def test_the_janitor_removes_what_a_killed_run_left(
    tmp_path: Path, work: Path, busybox_layer: Path, recorder: str
) -> None:
    helpers, janitor, record = killed_run(tmp_path, work, [busybox_layer], recorder, janitor_too=False)
    wait_gone(janitor)
    assert_gone(helpers, record)


def test_cleanup_removes_what_a_killed_run_and_its_janitor_left(
    tmp_path: Path, work: Path, busybox_layer: Path
) -> None:
    helpers, _, record = killed_run(tmp_path, work, [busybox_layer], "fuse", janitor_too=True)
    assert record.exists()
    done = cleanup(tmp_path)
    assert done.returncode == 0, done.stderr
    removed = done.stdout.splitlines()
    assert any(line.startswith("removed container ctr-remote-profile-") for line in removed), removed
    assert any(line.startswith("removed mount ") and str(work) in line for line in removed), removed
    assert any(line.startswith(f"removed directory {work}/") for line in removed), removed
    assert_gone(helpers, record)
    assert cleanup(tmp_path).stdout == ""  # nothing left to remove


def test_the_next_run_removes_what_a_killed_run_and_its_janitor_left(
    tmp_path: Path, work: Path, busybox_layer: Path
) -> None:
    helpers, _, record = killed_run(tmp_path, work, [busybox_layer], "fuse", janitor_too=True)
    # Any run sweeps first, whatever it then does (this one fails: there is no such source).
    missing = tmp_path / "no-such-layout"
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize",
         f"local://{missing}", f"local://{tmp_path / 'dst'}"],
        cwd=ROOT, env=runs_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    removed = [e["item"] for e in events if e["event"] == "removed what a dead run left behind"]
    assert any(item.startswith("container ctr-remote-profile-") for item in removed), events
    assert any(item.startswith(f"directory {work}/") for item in removed), events
    assert_gone(helpers, record)
