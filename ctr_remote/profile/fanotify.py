"""The fanotify recorder (`--recorder fanotify`), as upstream records since v0.4: one notification
group with a FAN_MARK_FILESYSTEM mark on the container's overlay superblock, fd events, each event's
path read back with readlink(/proc/self/fd/N).

The overlay superblock belongs to this run only, so every event is the container's (or runc's, whose
reads of /etc/passwd and /etc/group happen after the mark). The workload is never held up: the kernel
queues the event and the open returns; a reader thread names the files while the workload runs, and
the queue is drained once the container is gone. No FUSE round trips at all, but only opens are seen
(FAN_ACCESS adds reads through descriptors opened before the mark, which there are none of).

Paths are merged-view paths, in first-open order; `attribute.attribute_merged` assigns them to layers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path

import structlog

from ctr_remote.profile.errors import ProfileError

log = structlog.get_logger()

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
FAN_Q_OVERFLOW = 0x4000
FANOTIFY_METADATA_VERSION = 3
MASK = FAN_OPEN | FAN_OPEN_EXEC | FAN_ACCESS
_AT_FDCWD = -100

# The descriptors the kernel creates for us: close-on-exec, so that a runtime command started while
# they are open cannot keep the overlay busy; non-blocking, so that naming a FIFO never waits.
_EVENT_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC | os.O_NONBLOCK
_METADATA = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
_READ_SIZE = 1 << 16
# How long the reader lets events gather after the first one arrives (measured on the node workload:
# the workload's CPU time under the recorder went from 1.33x to 1.0-1.2x of overlayfs alone).
BATCH_SECONDS = 0.002
_DELETED = b" (deleted)"

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


class FanotifyRecorder:
    """Records the regular files opened on one overlay mount, from `start()` until `close()`."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        self._host_prefix = os.fsencode(rootfs) + b"/"
        self._seen: set[bytes] = set()  # as readlink gave them
        self._named: set[bytes] = set()  # as recorded
        self.paths: list[str] = []  # merged-view paths ("usr/bin/python3"), first open first
        self.events = 0
        self.unnamed = 0  # events whose file the kernel could not open for us (e.g. a tty node)
        self.overflowed = False
        self.cpu_seconds = 0.0  # the reader thread's, for the logs
        self.failure: str | None = None
        self._fd = -1
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark the overlay's superblock and start naming events. Call after the mount and before
        anything the workload does: runc's own reads at container start are recorded too."""
        self._fd = _init()
        target = os.fsencode(self.rootfs)
        if _libc.fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, MASK, _AT_FDCWD, target) != 0:
            e = ctypes.get_errno()
            self.close()
            raise ProfileError(f"cannot watch the container's root filesystem: {os.strerror(e)}")
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._loop, name="fanotify-reader", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Name what is still queued, then release the group: afterwards no descriptor of ours (an
        event's, or a queued event's reference) keeps the overlay busy. Call once the container is gone;
        idempotent, and safe after a failed start."""
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    def check(self) -> None:
        """After close(): fail with one line if the record is known to be incomplete."""
        if self.failure is not None:
            raise ProfileError(f"the fanotify recorder failed: {self.failure}")
        if self.overflowed:
            raise ProfileError("the fanotify queue overflowed; the recorded accesses would be incomplete")

    def _loop(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while True:
                done = any(fd == self._wake_r for fd, _ in poller.poll())
                # Let events gather: one wake-up per batch instead of one per open, and a file's
                # reads merge into its queued open event (the kernel merges events not yet read).
                done = done or bool(select.select([self._wake_r], [], [], BATCH_SECONDS)[0])
                self._drain()
                if done:
                    return  # the container is gone: what it queued was just drained
        except Exception as e:  # reported by check(): the run must not pass for a complete one
            self.failure = " ".join(str(e).split()) or type(e).__name__
        finally:
            self.cpu_seconds = time.thread_time()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        offset = 0
        while offset + _METADATA.size <= len(data):
            event_len, version, _, _, mask, fd, _ = _METADATA.unpack_from(data, offset)
            offset += event_len
            if version != FANOTIFY_METADATA_VERSION:
                raise RuntimeError(f"unexpected fanotify metadata version {version}")
            self.events += 1
            if mask & FAN_Q_OVERFLOW:
                self.overflowed = True
            if fd < 0:
                self.unnamed += fd != -1  # -1 is FAN_NOFD (the overflow event); below it, -errno
                continue
            try:
                self._name(fd)
            finally:
                os.close(fd)

    def _name(self, fd: int) -> None:
        raw = os.readlink(b"/proc/self/fd/%d" % fd)
        if raw in self._seen:  # the common case: a read, or another open, of a file already named
            return
        self._seen.add(raw)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return  # device nodes and FIFOs are served by their drivers, not by the layers
        path = raw
        if path.startswith(self._host_prefix):  # opened through our own mount namespace's path
            path = path[len(self._host_prefix) - 1 :]
        if path.endswith(_DELETED) and not self._names_this(path, st):
            # Removed by the workload since it opened it: the name it had is the one to record.
            path = path[: -len(_DELETED)]
        if path not in self._named:
            self._named.add(path)
            self.paths.append(path[1:].decode("utf-8", "surrogateescape"))

    def _names_this(self, path: bytes, st: os.stat_result) -> bool:
        """Whether `path` (in the container) still names the opened file: only a file really called
        "x (deleted)" does. Looked up through the overlay (its own device: nothing else can match)."""
        try:
            found = os.lstat(os.fsencode(self.rootfs) + path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino)
