"""The recording FUSE daemon: read-only passthroughs of unpacked layer directories, one mount each.

Run as a script (not as part of the package, so it starts with nothing but mfusepy imported):

    python fuse_daemon.py READY_FD

Layers to serve arrive on stdin, one JSON object per line:
    {"index": 0, "root": DIR, "mountpoint": MNT, "log": FILE, "xattrs": JSON_FILE or null}
Each is served by its own thread (one interpreter for all layers: libfuse's loop runs without the
GIL, only the callbacks take it). The daemon writes "INDEX\n" to READY_FD once the kernel has
initialised a mount, or "INDEX !MESSAGE\n" if mounting failed, or later if the layer's accesses
could not all be logged (a full work directory): the parent then fails the run instead of reporting
an incomplete profile. Each layer's first accesses (first
open or read of a path) go to its LOG, NUL-terminated. The daemon exits once stdin is closed and every
mount is gone (unmounting a mount ends its thread).

What keeps it cheap (each request is a round trip into Python: ~16 µs of daemon CPU measured, plus
two context switches):
- long attr/entry/negative timeouts and kernel_cache: the lower layer never changes, so the kernel
  asks about each name once and reads each page once;
- no release/flush/opendir/access/statfs/getxattr callbacks unless needed: libfuse answers those
  itself (or the kernel stops asking after ENOSYS). getxattr is served, from memory, only for layers
  that carry xattrs (overlayfs needs `trusted.overlay.opaque`); otherwise overlayfs' probes and the
  kernel's security.capability checks stop after the first ENOSYS;
- reads use descriptors cached per path instead of a handle per open (no release callback);
- symlink targets are cached by the kernel (FUSE_CAP_CACHE_SYMLINKS): one readlink per link;
- directory listings are answered as READDIRPLUS (names with attributes), so the kernel needs no
  LOOKUP round trip per entry, and stat results are copied straight into libfuse's struct (`FastFUSE`).
Request counts per operation go to LOG.stats (JSON) at unmount, for the benchmark.

What remains is two synchronous round trips per file (OPEN, READ). On an idle VM their cost is mostly
waking the other vCPU: with the daemon and the workload pinned to one CPU the overhead of an
open-heavy workload halved in bench_record. We do not pin: it would change the workload's CPU count.
Answering OPEN with ENOSYS (no-open mode) would save a further ~25% there, but then files that are
opened and never read (empty ones, for instance) would go unrecorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import sys
import threading
from collections import Counter, OrderedDict

import mfusepy

_MAX_OPEN_FILES = 512
_FUSE_READDIR_PLUS = 1  # readdir flag: the kernel asked for READDIRPLUS
_FUSE_FILL_DIR_PLUS = 2  # filler flag: this entry carries valid attributes
_FUSE_CAP_CACHE_SYMLINKS = 1 << 23  # libfuse 3's FUSE_CAP_CACHE_SYMLINKS
_STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)


def _fill(st: mfusepy.c_stat, s: os.stat_result) -> None:
    st.st_ino = s.st_ino
    st.st_mode = s.st_mode
    st.st_nlink = s.st_nlink
    st.st_uid = s.st_uid
    st.st_gid = s.st_gid
    st.st_rdev = s.st_rdev
    st.st_size = s.st_size
    st.st_blksize = s.st_blksize
    st.st_blocks = s.st_blocks
    st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(s.st_atime_ns, 1_000_000_000)
    st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(s.st_mtime_ns, 1_000_000_000)
    st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(s.st_ctime_ns, 1_000_000_000)


class Recorder(mfusepy.Operations):
    """The layer's state: what was accessed, the log, open descriptors. mfusepy registers a libfuse
    callback for each operation defined here; the hot ones are served by `FastFUSE` on raw bytes."""

    use_ns = True

    def __init__(self, index: int, root: str, log_path: str, ready_fd: int) -> None:
        self.index = index
        self.root = root.rstrip("/").encode("utf-8", "surrogateescape")
        self.log_path = log_path
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.ready_fd = ready_fd
        self.seen: set[bytes] = set()
        self.fds: OrderedDict[bytes, int] = OrderedDict()
        self.listings: dict[bytes, list[tuple[bytes, os.stat_result | None]]] = {}
        self.stats: Counter[str] = Counter()
        self.log_failed = False

    def note(self, path: bytes) -> None:
        """Record the first access of `path` ("/etc/passwd") as a layer-relative name."""
        if path not in self.seen:
            self.seen.add(path)
            try:
                os.write(self.log_fd, path[1:] + b"\0")
            except OSError as e:
                # The workload's open still succeeds; the parent learns that this profile is incomplete.
                if not self.log_failed:
                    self.log_failed = True
                    os.write(
                        self.ready_fd, f"{self.index} !cannot write its access log: {e.strerror}\n".encode()
                    )

    def fd(self, path: bytes) -> int:
        """A descriptor for reading `path`, kept for later reads (no release callback needed)."""
        fd = self.fds.get(path)
        if fd is None:
            fd = os.open(self.root + path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self.fds[path] = fd
            if len(self.fds) > _MAX_OPEN_FILES:
                os.close(self.fds.popitem(last=False)[1])
        return fd

    def init_with_config(self, conn: mfusepy.fuse_conn_info | None, config: object) -> None:
        if conn is not None and conn.capable & _FUSE_CAP_CACHE_SYMLINKS:
            conn.want |= _FUSE_CAP_CACHE_SYMLINKS  # symlink targets stay in the page cache
        os.write(self.ready_fd, b"%d\n" % self.index)  # one small write: atomic on a pipe

    def readlink(self, path: str) -> str:
        self.stats["readlink"] += 1
        return os.readlink(os.fsdecode(self.root) + path)

    def destroy(self, path: str) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.log_fd)
        with contextlib.suppress(OSError), open(self.log_path + ".stats", "w", encoding="utf-8") as f:
            json.dump(dict(self.stats), f)  # for the benchmark only

    # Served by FastFUSE; defined so that mfusepy registers the callbacks.
    def getattr(self, path: str, fh: int | None = None) -> dict:
        raise NotImplementedError

    def readdir(self, path: str, fh: int) -> list:
        raise NotImplementedError

    def open(self, path: str, flags: int) -> int:
        raise NotImplementedError

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        raise NotImplementedError


class XattrRecorder(Recorder):
    """For layers that carry extended attributes: answered from the unpacker's table, no disk access."""

    def __init__(
        self, index: int, root: str, log_path: str, ready_fd: int, xattrs: dict[str, dict[str, bytes]]
    ) -> None:
        super().__init__(index, root, log_path, ready_fd)
        self.xattrs = xattrs

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        self.stats["getxattr"] += 1
        try:
            return self.xattrs[path][name]
        except KeyError:
            raise mfusepy.FuseOSError(errno.ENODATA) from None

    def listxattr(self, path: str) -> list[str]:
        return list(self.xattrs.get(path, ()))


class FastFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with the hot wrappers replaced by ones working on raw bytes paths and libfuse's
    structs: getattr fills `struct stat` from `os.lstat`, readdir answers READDIRPLUS, open records,
    read preads into libfuse's buffer."""

    def __init__(self, operations: Recorder, mountpoint: str, **options: object) -> None:
        self.rec = operations
        super().__init__(operations, mountpoint, **options)

    def fgetattr(self, path: bytes | None, buf, fip) -> int:
        self.rec.stats["getattr"] += 1
        if path is None:
            return -errno.ENOENT
        s = os.lstat(self.rec.root + path)
        ctypes.memset(buf, 0, _STAT_SIZE)
        _fill(buf.contents, s)
        return 0

    def open(self, path: bytes, fip) -> int:
        # Permissions were checked by the kernel (default_permissions) and writes refused (ro).
        self.rec.stats["open"] += 1
        self.rec.note(path)
        fip.contents.fh = 0
        return 0

    def read(self, path: bytes | None, buf, size: int, offset: int, fip) -> int:
        # Every read follows an open of the same path, so noting it never adds a first access; it
        # is what the recorder is asked to observe, and costs a set lookup.
        self.rec.stats["read"] += 1
        if path is None:
            return -errno.EBADF
        self.rec.note(path)
        data = os.pread(self.rec.fd(path), size, offset)
        ctypes.memmove(buf, data, len(data))
        return len(data)

    def readdir_fuse_3(self, path: bytes | None, buf, filler, offset: int, fip, flags: int) -> int:
        # Entries carry offsets: in that mode libfuse registers each READDIRPLUS entry with the kernel
        # (with offset 0 it sends them without node ids and the kernel looks every name up again).
        # The listing of a directory is taken once, at offset 0, and served from memory for later chunks.
        plus = flags & _FUSE_READDIR_PLUS
        self.rec.stats["readdirplus" if plus else "readdir"] += 1
        if path is None:
            return -errno.ENOENT
        listings = self.rec.listings
        if offset == 0 or path not in listings:
            directory = self.rec.root + path
            listing: list[tuple[bytes, os.stat_result | None]] = [(b".", os.lstat(directory)), (b"..", None)]
            with os.scandir(directory) as it:
                listing += [(e.name, e.stat(follow_symlinks=False)) for e in it]
            listings[path] = listing
        listing = listings[path]
        st = mfusepy.c_stat()
        for index in range(offset, len(listing)):
            name, s = listing[index]
            if s is None:
                full = filler(buf, name, None, index + 1, 0)
            else:
                _fill(st, s)
                full = filler(buf, name, st, index + 1, _FUSE_FILL_DIR_PLUS if plus and index > 1 else 0)
            if full:
                break
        else:
            del listings[path]  # listed to the end
        return 0


_MOUNT_OPTIONS: dict[str, object] = {
    "foreground": True,
    "nothreads": True,  # per mount: a serial workload gains nothing from threads contending for the GIL
    "allow_other": True,
    "default_permissions": True,
    "ro": True,
    "suid": True,
    "dev": True,
    "use_ino": True,
    "kernel_cache": True,
    "attr_timeout": 3600,
    "entry_timeout": 3600,
    "negative_timeout": 3600,
    "fsname": "ctr-remote-layer",
    "subtype": "ctr-remote",
}


def _serve(layer: dict, ready_fd: int) -> None:
    """Mount one layer and serve it until it is unmounted (runs on its own thread)."""
    index = int(layer["index"])
    try:
        ops: Recorder
        if layer.get("xattrs"):
            with open(layer["xattrs"], encoding="utf-8") as f:
                table = json.load(f)
            xattrs = {
                "/" + path if path else "/": {k: bytes.fromhex(v) for k, v in attrs.items()}
                for path, attrs in table.items()
            }
            ops = XattrRecorder(index, layer["root"], layer["log"], ready_fd, xattrs)
        else:
            ops = Recorder(index, layer["root"], layer["log"], ready_fd)
        FastFUSE(ops, layer["mountpoint"], **_MOUNT_OPTIONS)
    except BaseException as e:  # reported to the parent, which turns it into a one-line error
        message = " ".join(str(e).split()) or type(e).__name__
        os.write(ready_fd, f"{index} !{message}\n".encode(errors="replace")[:500])


def main(argv: list[str]) -> int:
    ready_fd = int(argv[0])
    threads = []
    for line in sys.stdin:
        thread = threading.Thread(target=_serve, args=(json.loads(line), ready_fd), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
