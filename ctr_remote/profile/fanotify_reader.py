"""The fanotify recorder's reader: names the events of a notification group, in a process of its own.

Run as a script, started by `fanotify.FanotifyRecorder` (stdlib only, so it starts fast):

    python fanotify_reader.py GROUP_FD ROOTFS OUT

It reads fd events from GROUP_FD (marked on the overlay mounted at ROOTFS), names each event's file with
readlink(/proc/self/fd/N), and appends each new regular file's merged-view path to OUT, NUL-terminated,
in first-open order. When its stdin is closed (the container is gone), it drains the queue and exits 0;
3 if the queue overflowed (the record would be incomplete); 1 with a message on stderr on any failure.

When it names: once the container is gone, and before that only when the queue grows past
MAX_QUEUED_BYTES (a bound on the kernel memory it holds). Naming costs about as much CPU as the opens
it names (the kernel opens each file again for us, and the path is read back); done while the workload
runs, it took that CPU from the workload, and on a busy 2-core machine the workload's time went from
~1.0x to 1.3-1.7x of overlayfs alone, even from a reader at nice 19. The kernel holds the events
meanwhile (a file's reads merge into its queued open event). The price: a file renamed after its
open is named by its new name, which no layer has (a removed one keeps its name: see `name`). Drains
during the run happen at nice 19; the final one at normal priority.
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import struct
import sys
import termios

FANOTIFY_METADATA_VERSION = 3
FAN_Q_OVERFLOW = 0x4000
FAN_NOFD = -1
METADATA = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata
READ_SIZE = 1 << 16
DELETED = b" (deleted)"
# Queued events (as read: 24 bytes each, ~90,000 here) above which they are named during the run.
MAX_QUEUED_BYTES = int(os.environ.get("CTR_REMOTE_FANOTIFY_MAX_QUEUED", 2 << 20))  # a knob for tests
CHECK_SECONDS = 0.1
EXIT_OVERFLOW = 3


class Reader:
    def __init__(self, group: int, rootfs: bytes, out: int) -> None:
        self.group = group
        self.rootfs = rootfs
        self.host_prefix = rootfs + b"/"
        self.out = out
        self.seen: set[bytes] = set()  # as readlink gave them
        self.named: set[bytes] = set()  # as recorded
        self.overflowed = False

    def drain(self) -> None:
        found: list[bytes] = []
        while True:
            try:
                data = os.read(self.group, READ_SIZE)
            except BlockingIOError:
                break
            offset = 0
            while offset + METADATA.size <= len(data):
                event_len, version, _, _, mask, fd, _ = METADATA.unpack_from(data, offset)
                offset += event_len
                if version != FANOTIFY_METADATA_VERSION:
                    raise RuntimeError(f"unexpected fanotify metadata version {version}")
                if mask & FAN_Q_OVERFLOW:
                    self.overflowed = True
                if fd < 0:
                    continue  # FAN_NOFD, or -errno: a file the kernel could not open for us (a tty node)
                try:
                    path = self.name(fd)
                finally:
                    os.close(fd)
                if path is not None:
                    found.append(path[1:] + b"\0")
        if found:
            data = b"".join(found)
            while data:
                data = data[os.write(self.out, data) :]

    def name(self, fd: int) -> bytes | None:
        """The new merged-view path ("/usr/bin/python3") `fd` was opened as, or None."""
        raw = os.readlink(b"/proc/self/fd/%d" % fd)
        if raw in self.seen:  # the common case: a read, or another open, of a file already named
            return None
        self.seen.add(raw)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None  # device nodes and FIFOs are served by their drivers, not by the layers
        path = raw
        if path.startswith(self.host_prefix):  # opened through the profiler's mount namespace
            path = path[len(self.host_prefix) - 1 :]
        if path.endswith(DELETED) and not self.names(path, st):
            # Removed by the workload since it opened it: the name it had is the one to record.
            path = path[: -len(DELETED)]
        if path in self.named:
            return None
        self.named.add(path)
        return path

    def names(self, path: bytes, st: os.stat_result) -> bool:
        """Whether `path` still names the opened file: only a file really called "x (deleted)" does.
        Looked up through the overlay (its own device: nothing else can match)."""
        try:
            found = os.lstat(self.rootfs + path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino)

    def queued_bytes(self) -> int:
        buf = bytearray(4)
        fcntl.ioctl(self.group, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def run(self) -> None:
        while True:
            if select.select([0], [], [], CHECK_SECONDS)[0]:  # stdin closed: the container is gone
                os.setpriority(os.PRIO_PROCESS, 0, 0)
                self.drain()
                return
            if self.queued_bytes() > MAX_QUEUED_BYTES:
                self.drain()


def main(argv: list[str]) -> int:
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    reader = Reader(int(argv[0]), os.fsencode(argv[1]), os.open(argv[2], os.O_WRONLY | os.O_APPEND))
    try:
        reader.run()
    except Exception as e:
        print(" ".join(str(e).split()) or type(e).__name__, file=sys.stderr)
        return 1
    return EXIT_OVERFLOW if reader.overflowed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
