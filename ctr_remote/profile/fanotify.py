"""The fanotify recorder (`--recorder fanotify`), as upstream records since v0.4: one notification
group with a FAN_MARK_FILESYSTEM mark on the container's overlay superblock, fd events, each event's
path read back with readlink(/proc/self/fd/N) by `fanotify_reader.py`, a process of its own.

The overlay superblock belongs to this run only, so every event is the container's (or runc's, whose
reads of /etc/passwd and /etc/group happen after the mark). The workload is never held up: the kernel
queues the event and the open returns; the reader names the files while the workload runs, and drains
the queue once the container is gone. Only the reader holds the group: when it exits (or is killed),
the group and every queued event go with it, so nothing of ours keeps the overlay busy at unmount.

Paths are merged-view paths, in first-open order; `attribute.attribute_merged` assigns them to layers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ctr_remote.processes import wait_or_kill
from ctr_remote.profile.children import die_with_parent
from ctr_remote.profile.errors import ProfileError

# <linux/fanotify.h>; FAN_REPORT_FD_ERROR (6.13) is defined here, Debian 12's headers predate it.
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_UNLIMITED_QUEUE = 0x10
FAN_REPORT_FD_ERROR = 0x2000
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_ACCESS = 0x1
FAN_OPEN = 0x20
FAN_OPEN_EXEC = 0x1000
MASK = FAN_OPEN | FAN_OPEN_EXEC | FAN_ACCESS
_AT_FDCWD = -100

# The descriptors the kernel creates for the reader: close-on-exec; non-blocking, so that naming a
# FIFO never waits.
_EVENT_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NONBLOCK

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def _init() -> int:
    """A notification group; FAN_REPORT_FD_ERROR where the kernel has it (a file we cannot open then
    costs one event, not the read that would otherwise fail with the open's error)."""
    base = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
    for flags in (base | FAN_REPORT_FD_ERROR, base):
        fd = _libc.fanotify_init(flags, _EVENT_FLAGS)
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        if e != errno.EINVAL:
            break
    raise ProfileError(
        f"cannot use fanotify ({os.strerror(e)}): --recorder fanotify needs root in the initial user "
        "namespace and a kernel with fanotify"
    )


def check_fanotify() -> None:
    """One-line error up front for a machine (or user) that cannot create a notification group."""
    os.close(_init())


READER = Path(__file__).with_name("fanotify_reader.py")
EXIT_TIMEOUT = 60.0  # the final drain of a large queue, at normal priority
_EXIT_OVERFLOW = 3


class FanotifyRecorder:
    """Records the regular files opened on the overlay mounted at `rootfs`, from `start()` to `close()`."""

    def __init__(self, rootfs: Path, state: Path) -> None:
        self.rootfs = rootfs
        self.out = state / "fanotify.paths"
        self.stderr_path = state / "fanotify.err"
        self.process: subprocess.Popen[bytes] | None = None
        self._group = -1  # our copy, until the mark is made

    def launch(self, on_exit: Callable[[], None]) -> None:
        """Create the group and start the reader (early: its start-up overlaps the unpacking). It sees
        nothing until start(). `on_exit` is called, from a watcher thread, if the reader ends before
        close(): nothing more would be recorded."""
        self._group = _init()
        self.out.touch(mode=0o600)
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-I", str(READER), str(self._group), str(self.rootfs), str(self.out)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(self._group,),
                preexec_fn=die_with_parent,
                start_new_session=True,  # the terminal's Ctrl-C is ours to handle, not the reader's
            )
        process = self.process

        def wait() -> None:
            process.wait()
            on_exit()

        threading.Thread(target=wait, name="fanotify-reader-watch", daemon=True).start()

    def start(self) -> None:
        """Mark the overlay's superblock. Call after the mount and before anything the workload does:
        runc's own reads at container start are recorded too."""
        target = os.fsencode(self.rootfs)
        if _libc.fanotify_mark(self._group, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, MASK, _AT_FDCWD, target) != 0:
            e = ctypes.get_errno()
            raise ProfileError(f"cannot watch the container's root filesystem: {os.strerror(e)}")
        self._close_group()  # the reader's copy is the only one left

    def _close_group(self) -> None:
        if self._group >= 0:
            os.close(self._group)
            self._group = -1

    def check(self) -> None:
        """After the run, before close(): fail with one line if the reader died (its record would end
        where it died)."""
        if self.process is not None and self.process.poll() is not None:
            raise ProfileError(self._failure(self.process.returncode, during_run=True))

    def close(self) -> None:
        """Let the reader drain what is queued and exit (kill it if it does not); with it goes the group.
        Call once the container is gone; idempotent, and safe whatever did not happen."""
        self._close_group()
        if self.process is None or self.process.stdin is None or self.process.stdin.closed:
            return
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        wait_or_kill(self.process, EXIT_TIMEOUT)

    def paths(self) -> list[str]:
        """After close(): merged-view paths ("usr/bin/python3"), first open first; one-line error if
        the record is known to be incomplete."""
        assert self.process is not None
        if self.process.returncode != 0:
            raise ProfileError(self._failure(self.process.returncode, during_run=False))
        data = self.out.read_bytes()
        return [p.decode("utf-8", "surrogateescape") for p in data.split(b"\0") if p]

    def _failure(self, status: int, *, during_run: bool) -> str:
        if status == _EXIT_OVERFLOW:
            return "the fanotify queue overflowed; the recorded accesses would be incomplete"
        if status < 0:
            how = f"killed by {signal.Signals(-status).name}"
        else:
            try:
                text = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                text = ""
            how = text.splitlines()[-1] if text else f"exit status {status}"
        when = "during the run" if during_run else "while naming the files"
        return f"the fanotify reader died {when} ({how}); the recorded accesses would be incomplete"
