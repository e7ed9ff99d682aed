"""A file being written into place outside the run's temp dirs (a local:// target's blob, the
--record-out file) when the run is SIGKILLed: its janitor removes the half-written temp file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
