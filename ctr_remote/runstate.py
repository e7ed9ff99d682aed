"""What a run leaves on the host while it works, recorded so that nothing outlives it, even SIGKILL.

Each ctr-remote process that creates host state (temp dirs with mounts below them, a container, a
pinned network namespace) records it in `runs_dir()/<pid>-<start time>-<n>.json`, with its own pid
and start time (pids are reused; the pair is not). A janitor process, in a session of its own so that the
signal that kills the run's process group does not reach it, waits on a pipe from the run: when the
pipe closes while the record is still there, the run died without cleaning up, and the janitor
removes what the record lists. The next run, and `ctr-remote cleanup`, sweep the records of owners
that are gone (a janitor that was killed too, a reboot of the machine without /run on tmpfs).

A record is rewritten whole (a rename) as the run creates things; `<name>.lock` is flocked by whoever
sweeps it, so the janitor, a later run and `ctr-remote cleanup` never remove the same thing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ctr_remote.processes import wait_or_kill

log = structlog.get_logger()

ROOT_RUNS_DIR = Path("/run/ctr-remote/runs")


def runs_dir() -> Path | None:
    """Where run records live: `CTR_REMOTE_RUNS_DIR` if set; for root /run/ctr-remote/runs; for
    another user (image convert: no mounts, no container, only temp dirs) its $XDG_RUNTIME_DIR, and
    no records at all without one (never a directory of ours left in $TMPDIR)."""
    if override := os.environ.get("CTR_REMOTE_RUNS_DIR"):
        return Path(override)
    if os.geteuid() == 0:
        return ROOT_RUNS_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "ctr-remote" / "runs" if runtime else None


JANITOR_TIMEOUT = 30.0


@dataclass(frozen=True)
class RecordedContainer:
    runtime: str  # absolute path of the runtime binary
    state_root: str  # its `--root`
    container_id: str


@dataclass(frozen=True)
class RecordedNetwork:
    """A CNI attachment: DEL is run with the configuration and plugins it was added with."""

    netns: str  # the pin (bind mount) under /run/ctr-remote/netns
    container_id: str
    ifname: str
    conf_dir: str
    plugin_dir: str


@dataclass
class RunState:
    owner_pid: int
    owner_start: int  # the owner's start time in clock ticks after boot (/proc/PID/stat field 22)
    temp_dirs: list[str] = field(default_factory=list)  # removed with every mount below them
    # Written beside their destination and renamed over it when complete (a local:// target's blobs,
    # --record-out): one that still exists is a half-written file.
    temp_files: list[str] = field(default_factory=list)
    containers: list[RecordedContainer] = field(default_factory=list)
    networks: list[RecordedNetwork] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        return cls(
            owner_pid=int(data["owner_pid"]),
            owner_start=int(data["owner_start"]),
            temp_dirs=[str(p) for p in data.get("temp_dirs", [])],
            temp_files=[str(p) for p in data.get("temp_files", [])],
            containers=[RecordedContainer(**c) for c in data.get("containers", [])],
            networks=[RecordedNetwork(**n) for n in data.get("networks", [])],
        )


def start_time(pid: int) -> int | None:
    """The process's start time, or None if there is no such process or it has exited (a zombie whose
    parent has not reaped it yet cleans up nothing more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def owner_alive(state: RunState) -> bool:
    return start_time(state.owner_pid) == state.owner_start


class RunRecord:
    """The record of this process's run, and its janitor. Use `recorded()`."""

    def __init__(self, directory: Path | None) -> None:
        pid = os.getpid()
        start = start_time(pid)
        assert start is not None
        self.state = RunState(pid, start)
        # A name of its own even within the process: a batch whose running jobs all end closes the
        # record while the next job opens another, and the first one's janitor, finding a record
        # under its name, would take the new run for its dead one and remove what it lists.
        name = f"{pid}-{start}-{next(_record_numbers)}.json"
        self.path = directory / name if directory is not None else None
        self._lock = threading.Lock()
        self._janitor: subprocess.Popen[bytes] | None = None

    def _write(self) -> None:
        if self.path is None:
            return
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(asdict(self.state)), encoding="utf-8")
        temp.replace(self.path)

    def _save(self) -> None:
        """An update during the run: failing to record (a full /run) must not fail the run."""
        try:
            self._write()
        except OSError as e:
            log.warning("cannot update this run's record", path=str(self.path), error=e.strerror or str(e))

    def open(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._write()
        except OSError as e:  # the run itself can still go ahead, with nothing to clean up after a kill
            log.warning("cannot record this run's state", path=str(self.path), error=e.strerror or str(e))
            self.path = None
            return
        self._janitor = subprocess.Popen(
            [sys.executable, "-m", "ctr_remote.janitor", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # if it fails, the record stays for the next run and `cleanup`
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
            start_new_session=True,  # `timeout -s KILL` and a terminal's Ctrl-C signal the whole group
        )

    def close(self) -> None:
        """The run cleaned up after itself: drop the record, then let the janitor go."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._janitor is not None and self._janitor.stdin is not None:
            with contextlib.suppress(OSError):
                self._janitor.stdin.close()
            wait_or_kill(self._janitor, JANITOR_TIMEOUT)

    def make_temp_dir(self, prefix: str, parent: Path | None = None) -> Path:
        """`tempfile.mkdtemp`, recorded before it exists: a SIGKILL between creating and recording it
        would leave a directory nobody knows of."""
        return self._create(lambda path: os.mkdir(path, 0o700), self.state.temp_dirs, prefix, "", parent)[1]

    def make_temp_file(self, prefix: str, suffix: str, parent: Path) -> tuple[int, Path]:
        """`tempfile.mkstemp` (its descriptor and path), recorded before it exists, as `make_temp_dir`.
        Inside one of the run's temp dirs nothing more is recorded: the directory goes whole."""
        if any(parent.absolute().is_relative_to(d) for d in self.state.temp_dirs):
            return _create_unrecorded(prefix, suffix, parent)
        return self._create(_exclusive_file, self.state.temp_files, prefix, suffix, parent)

    def _create(
        self, create: Callable[[Path], Any], entries: list[str], prefix: str, suffix: str, parent: Path | None
    ) -> tuple[Any, Path]:
        base = Path(parent or tempfile.gettempdir()).absolute()
        for _ in range(_TRIES):
            path = base / f"{prefix}{secrets.token_hex(5)}{suffix}"
            self._add(entries, path)
            try:
                return create(path), path
            except BaseException as e:
                # Taken (someone else's) or not created at all: no sweep may remove it in our name.
                self._forget(entries, path)
                if not isinstance(e, FileExistsError):
                    raise
        raise FileExistsError(f"no free temp name {prefix}*{suffix} in {base}")

    def add_container(self, container: RecordedContainer) -> None:
        with self._lock:
            self.state.containers.append(container)
            self._save()

    def add_network(self, network: RecordedNetwork) -> None:
        with self._lock:
            self.state.networks.append(network)
            self._save()

    def _add(self, entries: list[str], path: Path) -> None:
        with self._lock:
            entries.append(str(path.absolute()))
            self._save()

    def _forget(self, entries: list[str], path: Path) -> None:
        with self._lock:
            entries.remove(str(path.absolute()))
            self._save()


_TRIES = 100
_record_numbers = itertools.count()


def _exclusive_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


def _create_unrecorded(prefix: str, suffix: str, parent: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
    return fd, Path(name)


_current: list[RunRecord] = []
_users = 0  # runs of this process in the record (a batch runs several jobs at once)
_current_lock = threading.Lock()


@contextlib.contextmanager
def recorded() -> Iterator[RunRecord]:
    """This process's run record, shared by every run in it (a batch's concurrent jobs): opened,
    with its janitor, by the first and closed by the last. Leaving the block normally or by an
    exception means the run cleaned up; only a dead process leaves its record to the janitor."""
    global _users
    with _current_lock:
        if not _current:
            record = RunRecord(runs_dir())
            record.open()
            _current.append(record)
        _users += 1
        record = _current[0]
    try:
        yield record
    finally:
        with _current_lock:
            _users -= 1
            last = _users == 0
            if last:
                _current.clear()
        if last:
            record.close()


def current() -> RunRecord | None:
    return _current[0] if _current else None


def make_temp_file(prefix: str, suffix: str, parent: Path) -> tuple[int, Path]:
    """A temp file (descriptor, path) to be renamed into place, created through this process's run
    record when there is one, so that a run that dies before the rename leaves nothing behind."""
    if _current:
        return _current[0].make_temp_file(prefix, suffix, parent)
    return _create_unrecorded(prefix, suffix, parent)


# -- sweeping ---------------------------------------------------------------------------------------


def sweep(*, wait: bool) -> list[str]:
    """Remove what runs whose owner is gone left behind; returns what was removed, one item each.
    `wait`: block on records another process is sweeping (their janitor), so that everything is gone
    on return; otherwise those are skipped."""
    removed: list[str] = []
    directory = runs_dir()
    if directory is None:
        return removed
    try:
        names = sorted(p for p in directory.iterdir() if p.suffix == ".json")
    except OSError:  # none yet, or not ours to read
        return removed
    for path in names:
        removed += sweep_record(path, wait=wait)
    for lock in directory.glob("*.lock"):  # left by a sweeper killed after removing its record
        if not lock.with_suffix(".json").exists():
            lock.unlink(missing_ok=True)
    for temp in directory.glob("*.tmp"):  # an update its owner was killed writing: PID-START-N.tmp
        pid, _, rest = temp.stem.partition("-")
        start = rest.partition("-")[0]
        if pid.isdigit() and start.isdigit() and start_time(int(pid)) != int(start):
            temp.unlink(missing_ok=True)
    return removed


def _read(path: Path) -> RunState | None:
    """The record, or None if it is gone (swept, or the run finished)."""
    try:
        return RunState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:  # its owner died writing it, before the rename
        log.warning("unreadable run record removed", path=str(path), error=str(e))
        path.unlink(missing_ok=True)
        return None


def sweep_record(path: Path, *, wait: bool, owner_gone: bool = False) -> list[str]:
    """Sweep one record unless its owner is alive (`owner_gone`: the janitor knows it is not).

    The lock is taken only for a record whose owner is gone, and removed with the record: live runs
    leave no lock files behind. Whoever gets the lock reads the record again, since the holder before
    may have swept it (the record goes before the lock)."""
    first = _read(path)
    if first is None or (not owner_gone and owner_alive(first)):
        return []
    lock_path = path.with_suffix(".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return []
        state = _read(path)
        if state is None:
            lock_path.unlink(missing_ok=True)
            return []
        from ctr_remote.leftovers import remove_leftovers  # only a sweep that acts needs it

        removed = remove_leftovers(state)
        path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
        return removed
    finally:
        os.close(fd)
