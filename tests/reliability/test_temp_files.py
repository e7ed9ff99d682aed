"""A file being written into place outside the run's temp dirs (a local:// target's blob, the
--record-out file) when the run is SIGKILLed: its janitor removes the half-written temp file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ctr_remote import runstate
from ctr_remote.runstate import RunRecord
from tests.helpers.processes import children, janitors_of, wait_gone

ROOT = Path(__file__).resolve().parents[2]
# A run writing `dest` in place, stopped half-way (it waits on stdin) until it is killed.
WRITER = """
import sys
from pathlib import Path
from ctr_remote.image.files import atomic_file
from ctr_remote.runstate import recorded
with recorded(), atomic_file(Path(sys.argv[1])) as f:
    f.write(b"half of a blob")
    f.flush()
    print("WRITING", flush=True)
    sys.stdin.read()
"""


def test_a_killed_runs_half_written_file_is_removed(tmp_path: Path) -> None:
    layout = tmp_path / "layout" / "blobs" / "sha256"
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTR_REMOTE_RUNS_DIR": str(runs)}
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(layout / ("a" * 64))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert p.stdout is not None and p.stdout.readline() == b"WRITING\n"
        assert [f.name for f in layout.iterdir() if f.name.endswith(".tmp")]
        janitors = janitors_of(children(p.pid))
        assert len(janitors) == 1
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate()
    wait_gone(janitors[0])
    assert list(layout.iterdir()) == []
    assert list(runs.iterdir()) == []


def _listed(record: RunRecord) -> dict:
    assert record.path is not None
    return json.loads(record.path.read_text())


@pytest.mark.unit
def test_a_temp_dir_or_file_is_recorded_before_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILL cannot be aimed at the microseconds between creating and recording: the record is
    read from disk at the moment of creation instead (a spy on the system calls)."""
    (tmp_path / "runs").mkdir()
    record = RunRecord(tmp_path / "runs")
    seen: list[tuple[str, bool]] = []
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path: object, mode: int = 0o777) -> None:
        seen.append((str(path), str(path) in _listed(record)["temp_dirs"]))
        real_mkdir(path, mode)  # type: ignore[arg-type]

    def open_(path: object, flags: int, mode: int = 0o777) -> int:
        seen.append((str(path), str(path) in _listed(record)["temp_files"]))
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    work = record.make_temp_dir("ctr-remote-", tmp_path)
    fd, temp = record.make_temp_file(".blob.", ".tmp", tmp_path / "runs")
    os.close(fd)
    assert seen == [(str(work), True), (str(temp), True)]
    assert work.is_dir() and work.name.startswith("ctr-remote-") and temp.is_file()


@pytest.mark.unit
def test_a_taken_name_is_not_left_in_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone else's directory with the name drawn first: the next name is used, and the record (which
    a sweep acts on) never keeps the other one."""
    (tmp_path / "runs").mkdir()
    theirs = tmp_path / "ctr-remote-0000000000"
    theirs.mkdir()
    tokens = iter(["0000000000", "1111111111"])
    monkeypatch.setattr(runstate.secrets, "token_hex", lambda _n: next(tokens))
    record = RunRecord(tmp_path / "runs")
    ours = record.make_temp_dir("ctr-remote-", tmp_path)
    assert ours == tmp_path / "ctr-remote-1111111111"
    assert _listed(record)["temp_dirs"] == [str(ours)]
    assert theirs.is_dir()


@pytest.mark.unit
def test_a_closing_runs_janitor_leaves_the_next_runs_record_alone(tmp_path: Path) -> None:
    """A batch whose running jobs all end closes the process's record while the next job opens a new
    one. Closing removes the record, then releases the janitor, which sweeps whatever record it then
    finds under its name: with one name per process, that was the next run's record, which the closing
    one could also delete, and its temp dir went in the middle of the run (seen under load). The
    threads' interleaving is replayed in order here."""
    runs = tmp_path / "runs"
    first = RunRecord(runs)
    first.open()
    assert first.path is not None
    first.path.unlink()  # first.close(), up to releasing its janitor
    second = RunRecord(runs)
    second.open()
    theirs = second.make_temp_dir("ctr-remote-", tmp_path)
    first.close()  # its janitor runs now, and is waited for
    assert second.path is not None and second.path.exists()  # still recorded: a SIGKILL is covered
    assert theirs.is_dir()
    second.close()
    assert list(runs.iterdir()) == []
