"""Looking at processes that are not the test's children: a run's helpers (runc, the recorder, the
janitor), waited for through a pidfd, told apart from a reused pid by their start time."""

from __future__ import annotations

import ctypes
import os
import select
import signal
from pathlib import Path

from ctr_remote.runstate import start_time


def children(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of the live processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
            start = start_time(int(entry))
            if start is not None:
                found.append((int(entry), start))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def janitors_of(helpers: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, _ in helpers if "ctr_remote.janitor" in cmdline(pid)]


def still_running(helpers: list[tuple[int, int]]) -> list[tuple[int, str]]:
    return [(pid, cmdline(pid)) for pid, start in helpers if start_time(pid) == start]


def wait_gone(pid: int, timeout: float = 120.0) -> None:
    """Wait for a process that is not our child to exit (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"{pid} ({cmdline(pid)}) still running"
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)


def signal_a_thread(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the newest of `pid`'s threads other than its main one. The kernel may hand a
    process's signal to any thread that does not block it, and CPython runs handlers on the main
    thread only: a Ctrl-C must stop a run whichever thread took it."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert tids, f"{pid} ({cmdline(pid)}) has no thread besides its main one"
    if _libc.tgkill(pid, max(tids), sig) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
