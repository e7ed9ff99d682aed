"""Whether a process is still running, asked while it exits.

A process that exits between the open and the read of its /proc/PID/stat makes the read fail with
ESRCH, not ENOENT. The lazy-pull stack's teardown once took that for an error, stopped killing the
container it was cleaning up, and left it running (a CI failure, about once in a few hundred runs).
"""

from __future__ import annotations

import builtins
import subprocess
from typing import IO, Any

import pytest

from ctr_remote import runstate
from tests.lazypull.stack import running

pytestmark = pytest.mark.unit


def test_a_process_exiting_while_its_stat_is_read_is_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "60"])
    real_open = builtins.open

    def open_then_reap(path: Any, *args: Any, **kwargs: Any) -> IO[Any]:
        f = real_open(path, *args, **kwargs)
        if str(path) == f"/proc/{child.pid}/stat":
            child.kill()
            child.wait()  # reaped: the open file now reads ESRCH
        return f

    monkeypatch.setattr(runstate, "open", open_then_reap, raising=False)
    try:
        assert not running(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_live_process_is_running() -> None:
    with subprocess.Popen(["sleep", "60"]) as child:
        try:
            assert running(child.pid)
        finally:
            child.kill()
    assert not running(child.pid)
