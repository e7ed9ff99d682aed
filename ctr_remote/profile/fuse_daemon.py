"""The per-layer recording FUSE daemon: a read-only passthrough of one unpacked layer directory.

Run as a script (not as part of the package, so it starts with nothing but mfusepy imported):

    python fuse_daemon.py ROOT MOUNTPOINT LOG READY_FD [XATTRS_JSON]

It writes each layer-relative path the first time it is opened or read, NUL-terminated, to LOG, and
one byte to READY_FD once the kernel has initialised the mount. It exits when MOUNTPOINT is unmounted.

What keeps it cheap (each request is a round trip into Python, ~50-100 µs):
- long attr/entry/negative timeouts and kernel_cache: the lower layer never changes, so the kernel
  asks about each name once and reads each page once;
- no release/flush/opendir/access/statfs/getxattr callbacks unless needed: libfuse answers those
  itself (or the kernel stops asking after ENOSYS). getxattr is served, from memory, only for layers
  that carry xattrs (overlayfs needs `trusted.overlay.opaque`); otherwise overlayfs' probes and the
  kernel's security.capability checks stop after the first ENOSYS;
- reads use descriptors cached per path instead of a handle per open (no release callback).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections import OrderedDict

import mfusepy

_MAX_OPEN_FILES = 512


class Recorder(mfusepy.Operations):
    use_ns = True

    def __init__(self, root: str, log_fd: int, ready_fd: int) -> None:
        self.root = root.rstrip("/")
        self.log_fd = log_fd
        self.ready_fd = ready_fd
        self.seen: set[str] = set()
        self.fds: OrderedDict[str, int] = OrderedDict()

    def _note(self, path: str) -> None:
        if path not in self.seen:
            self.seen.add(path)
            os.write(self.log_fd, path[1:].encode("utf-8", "surrogateescape") + b"\0")

    def init(self, path: str) -> None:
        os.write(self.ready_fd, b"R")
        os.close(self.ready_fd)

    def getattr(self, path: str, fh: int | None = None) -> dict:
        s = os.lstat(self.root + path)
        return {
            "st_mode": s.st_mode,
            "st_ino": s.st_ino,
            "st_nlink": s.st_nlink,
            "st_uid": s.st_uid,
            "st_gid": s.st_gid,
            "st_size": s.st_size,
            "st_rdev": s.st_rdev,
            "st_blocks": s.st_blocks,
            "st_blksize": s.st_blksize,
            "st_atime": s.st_atime_ns,
            "st_mtime": s.st_mtime_ns,
            "st_ctime": s.st_ctime_ns,
        }

    def readlink(self, path: str) -> str:
        return os.readlink(self.root + path)

    def readdir(self, path: str, fh: int) -> list:
        entries: list = [".", ".."]
        with os.scandir(self.root + path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    mode = stat.S_IFDIR
                elif e.is_symlink():
                    mode = stat.S_IFLNK
                elif e.is_file(follow_symlinks=False):
                    mode = stat.S_IFREG
                else:
                    mode = e.stat(follow_symlinks=False).st_mode
                entries.append((e.name, {"st_mode": mode, "st_ino": e.inode()}, 0))
        return entries

    def open(self, path: str, flags: int) -> int:
        # Permissions were checked by the kernel (default_permissions) and writes refused (ro).
        self._note(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        # Every read follows an open of the same path, so this never adds a new first access, but it
        # is what the issue asks the recorder to observe (and is free: a set lookup).
        self._note(path)
        fd = self.fds.get(path)
        if fd is None:
            fd = os.open(self.root + path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self.fds[path] = fd
            if len(self.fds) > _MAX_OPEN_FILES:
                os.close(self.fds.popitem(last=False)[1])
        return os.pread(fd, size, offset)

    def destroy(self, path: str) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.log_fd)


class XattrRecorder(Recorder):
    """For layers that carry extended attributes: answered from the unpacker's table, no disk access."""

    def __init__(self, root: str, log_fd: int, ready_fd: int, xattrs: dict[str, dict[str, bytes]]) -> None:
        super().__init__(root, log_fd, ready_fd)
        self.xattrs = xattrs

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            return self.xattrs[path][name]
        except KeyError:
            raise mfusepy.FuseOSError(errno.ENODATA) from None

    def listxattr(self, path: str) -> list[str]:
        return list(self.xattrs.get(path, ()))


def main(argv: list[str]) -> int:
    root, mountpoint, log_path, ready_fd = argv[0], argv[1], argv[2], int(argv[3])
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    ops: Recorder
    if len(argv) > 4:
        with open(argv[4], encoding="utf-8") as f:
            table = json.load(f)
        xattrs = {
            "/" + path if path else "/": {k: bytes.fromhex(v) for k, v in attrs.items()}
            for path, attrs in table.items()
        }
        ops = XattrRecorder(root, log_fd, ready_fd, xattrs)
    else:
        ops = Recorder(root, log_fd, ready_fd)
    mfusepy.FUSE(
        ops,
        mountpoint,
        foreground=True,
        nothreads=True,
        allow_other=True,
        default_permissions=True,
        ro=True,
        suid=True,
        dev=True,
        use_ino=True,
        kernel_cache=True,
        attr_timeout=3600,
        entry_timeout=3600,
        negative_timeout=3600,
        fsname="ctr-remote-layer",
        subtype="ctr-remote",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
