"""The recording FUSE daemon: read-only passthroughs of unpacked layer directories, one mount each,
speaking the kernel's FUSE protocol on /dev/fuse directly (no libfuse: Debian 12's 3.14 has no
passthrough API, and its kernel headers predate it, so the constants are defined here).

Run as a script (not as part of the package, so it starts with nothing but the standard library):

    python fuse_daemon.py READY_FD

Layers to serve arrive on stdin, one JSON object per line:
    {"index": 0, "root": DIR, "mountpoint": MNT, "log": FILE, "xattrs": JSON_FILE or null}
Each is mounted and served by its own thread (one interpreter for all layers: a thread waiting on
/dev/fuse holds no GIL). The daemon writes "INDEX\n" to READY_FD once the kernel has initialised a
mount, or "INDEX !MESSAGE\n" if mounting failed, or later if the layer's accesses could not all be
logged (a full work directory): the parent then fails the run instead of reporting an incomplete
profile. Each layer's first opens go to its LOG, NUL-terminated, layer-relative. The daemon exits
once stdin is closed and every mount is gone (unmounting a mount ends its thread).

What each open costs, and what was cut (counts per request type go to LOG.stats for the benchmark):
- READ: none. OPEN answers with FOPEN_PASSTHROUGH and a backing file registered once per node with
  FUSE_DEV_IOC_BACKING_OPEN (kernel 6.9+): reads and mmap go from the kernel to the layer's file and
  never reach this process. Without passthrough (older kernel, or a backing file the kernel refuses)
  READ is served here from a cached descriptor, with the page cache kept.
- OPEN: one synchronous round trip per open(2), which is what records the file (an opened-and-never-read
  file counts). RELEASE follows asynchronously: the closing process does not wait for it. No FLUSH
  (FOPEN_NOFLUSH).
- LOOKUP/GETATTR: once per name and node, cached for an hour (the layer never changes); a missing
  name is cached as a negative entry. Directory listings are READDIRPLUS, entries registered with
  their attributes, so the kernel looks nothing up after a listing.
- Waiting: after a request the daemon looks for the next one for SPIN_SECONDS before it sleeps in
  poll(). A workload opening files one after another asks again within microseconds, and a sleeping
  daemon's vCPU took tens of microseconds to wake on an idle VM, on every round trip. Not on a
  single CPU, where the opener needs the CPU the daemon would hold.
- OPENDIR, and for layers without extended attributes GETXATTR/LISTXATTR: answered ENOSYS once, after
  which the kernel stops asking. IOCTL (asked on every isatty() of a file opened on this mount itself;
  overlayfs does not pass it down) is answered ENOTTY without further ado. Symlink targets are cached
  (FUSE_CACHE_SYMLINKS).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import stat
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator

# <linux/fuse.h>, protocol 7.40+ (kernel 6.9 added passthrough).
FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 41
FUSE_ROOT_ID = 1
OPCODES = {
    1: "lookup", 2: "forget", 3: "getattr", 4: "setattr", 5: "readlink", 14: "open", 15: "read",
    17: "statfs", 18: "release", 22: "getxattr", 23: "listxattr", 25: "flush", 26: "init",
    27: "opendir", 28: "readdir", 29: "releasedir", 34: "access", 36: "interrupt", 38: "destroy",
    42: "batch_forget", 44: "readdirplus",
}  # fmt: skip
FUSE_ASYNC_READ = 1 << 0
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_INIT_EXT = 1 << 30
FUSE_PASSTHROUGH = 1 << 37
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5
FOPEN_PASSTHROUGH = 1 << 7
# _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t)
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502
# The FUSE superblock's stack depth with passthrough: overlayfs on top makes 2, the kernel's maximum.
MAX_STACK_DEPTH = 1
WANTED = (
    FUSE_ASYNC_READ
    | FUSE_DO_READDIRPLUS
    | FUSE_PARALLEL_DIROPS
    | FUSE_MAX_PAGES
    | FUSE_CACHE_SYMLINKS
    | FUSE_NO_OPENDIR_SUPPORT
    | FUSE_INIT_EXT
    | FUSE_PASSTHROUGH
)

IN_HEADER = struct.Struct("<IIQQIIIHH")
HEAD = struct.Struct("<IIQQ")  # the part of IN_HEADER the dispatch needs
OUT_HEADER = struct.Struct("<IiQ")
ATTR = "QQQQQQIIIIIIIIII"
ENTRY_OUT = struct.Struct("<QQQQII" + ATTR)
ATTR_OUT = struct.Struct("<QII" + ATTR)
INIT_IN = struct.Struct("<IIIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
OPEN_OUT = struct.Struct("<QIi")
READ_IN = struct.Struct("<QQII")
FORGET_ONE = struct.Struct("<QQ")
XATTR_OUT = struct.Struct("<II")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")
BACKING_MAP = struct.Struct("<iIQ")

OP_OPEN, OP_RELEASE, OP_IOCTL = 14, 18, 39
IOCTL_ANSWER = -errno.ENOTTY
OPENED_SIZE = OUT_HEADER.size + OPEN_OUT.size
PASSED = FOPEN_PASSTHROUGH | FOPEN_NOFLUSH
TIMEOUT = 3600  # seconds: entries, attributes and negative lookups (the layer never changes)
MAX_READ = 1 << 17  # without passthrough: the largest READ the kernel asks for
# Nothing is ever written to a layer, so the smallest write size the kernel allows: a request then
# fits in the smallest read buffer it allows, whose allocation per read() is cheap (a 132 KiB buffer,
# allocated and freed by the allocator's mmap on every request, more than doubled the daemon's CPU per
# request).
MAX_WRITE = 4096
BUFFER = 8192
_MAX_OPEN_FILES = 512
SPIN_SECONDS = float(os.environ.get("CTR_REMOTE_FUSE_SPIN", "0.0002"))  # "0": the benchmark's baseline
_NO_REPLY = ("forget", "batch_forget", "interrupt")

_U64 = (1 << 64) - 1
_libc = ctypes.CDLL(None, use_errno=True)


def _attr(s: os.stat_result) -> tuple[int, ...]:
    rdev = s.st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    return (
        s.st_ino, s.st_size, s.st_blocks,
        # Seconds are signed for the kernel: a time before 1970 (a tar may say so) as two's complement.
        s.st_atime_ns // 1_000_000_000 & _U64, s.st_mtime_ns // 1_000_000_000 & _U64,
        s.st_ctime_ns // 1_000_000_000 & _U64,
        s.st_atime_ns % 1_000_000_000, s.st_mtime_ns % 1_000_000_000, s.st_ctime_ns % 1_000_000_000,
        s.st_mode, s.st_nlink, s.st_uid, s.st_gid,
        (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12),  # the kernel's new_encode_dev
        s.st_blksize, 0,
    )  # fmt: skip


class Layer:
    """One mount: the node table (node id -> layer-relative path), the log, and the connection."""

    def __init__(self, index: int, root: str, log_path: str, ready_fd: int, xattrs: dict | None) -> None:
        self.index = index
        self.root = os.fsencode(root.rstrip("/"))
        self.log_path = log_path
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.ready_fd = ready_fd
        self.xattrs = xattrs  # path -> {name: value}; None: the layer has none (ENOSYS)
        self.dev = -1
        self.passthrough = False
        self.no_opendir = False
        self.paths: dict[int, bytes] = {FUSE_ROOT_ID: b""}  # "" is the root, "/a/b" below it
        self.lookups: dict[int, int] = {FUSE_ROOT_ID: 1}
        self.ids: dict[bytes, int] = {b"": FUSE_ROOT_ID}
        self.next_id = FUSE_ROOT_ID + 1
        self.backing: dict[int, int] = {}  # node id -> backing id
        self.fds: OrderedDict[int, int] = OrderedDict()  # node id -> descriptor, without passthrough
        self.listings: dict[int, list[tuple[bytes, os.stat_result]]] = {}
        self.seen: set[bytes] = set()
        self.stats: Counter[str] = Counter()
        self.failed = False

    # --- the connection ---------------------------------------------------------------------------

    def mount(self, mountpoint: str) -> None:
        self.dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        options = (
            f"fd={self.dev},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,"
            f"max_read={MAX_READ}"
        )
        # Read-only; suid and dev kept (a root mount would otherwise be nosuid,nodev): overlayfs on
        # top and the runtime decide what the container may do.
        ms_rdonly = 1
        target = os.fsencode(mountpoint)
        if _libc.mount(b"ctr-remote-layer", target, b"fuse.ctr-remote", ms_rdonly, options.encode()) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount: {os.strerror(e)}")

    def serve(self) -> None:
        """Answer requests until the mount goes away (the kernel then answers our read with ENODEV)."""
        handlers = {
            name: getattr(self, "op_" + name) for name in OPCODES.values() if hasattr(self, "op_" + name)
        }
        dev, write, stats, backing = self.dev, os.write, self.stats, self.backing
        for data in self._requests():
            _, opcode, unique, nodeid = HEAD.unpack_from(data)
            # The two requests of every open(2) after the first of a file, answered straight away.
            if opcode == OP_RELEASE:
                stats["release"] += 1
                write(dev, OUT_HEADER.pack(OUT_HEADER.size, 0, unique))
                continue
            if opcode == OP_IOCTL:  # e.g. every Python open() asks isatty(): TCGETS
                stats["ioctl"] += 1
                write(dev, OUT_HEADER.pack(OUT_HEADER.size, IOCTL_ANSWER, unique))
                continue
            if opcode == OP_OPEN and nodeid in backing:
                stats["open"] += 1
                write(
                    dev, OUT_HEADER.pack(OPENED_SIZE, 0, unique) + OPEN_OUT.pack(0, PASSED, backing[nodeid])
                )
                continue
            name = OPCODES.get(opcode, str(opcode))
            stats[name] += 1
            handler = handlers.get(name)
            try:
                reply = handler(nodeid, data) if handler else -errno.ENOSYS
            except OSError as e:
                reply = -(e.errno or errno.EIO)
            except Exception as e:  # a bug of ours: the opener gets EIO, the run fails with one line
                reply = -errno.EIO
                self.fail(f"failed to answer a {name} request: {' '.join(str(e).split())}")
            if name in _NO_REPLY:
                continue
            self.reply(unique, reply)

    def _requests(self) -> Iterator[bytes]:
        """Each request the kernel sends, until the mount goes away (our read then fails ENODEV).

        A workload opening files sends the next request within microseconds of our reply; sleeping
        in between would make it wait for this thread's vCPU to wake (tens of µs on an idle VM), so
        after each request the device is looked at again for SPIN_SECONDS before poll() sleeps. On a
        single CPU the opener needs the very CPU that would hold: it only delays the answer
        (measured: find 3.3x of overlayfs without it, 4.5x with it)."""
        dev, read, clock = self.dev, os.read, time.perf_counter
        spin = SPIN_SECONDS if len(os.sched_getaffinity(0)) > 1 else 0.0
        os.set_blocking(dev, False)
        poller = select.poll()
        poller.register(dev, select.POLLIN)
        deadline = 0.0
        while True:
            try:
                yield read(dev, BUFFER)
                deadline = clock() + spin
            except BlockingIOError:
                if clock() > deadline:
                    poller.poll()
                    deadline = clock() + spin
            except OSError as e:
                if e.errno == errno.ENODEV:
                    return
                if e.errno not in (errno.EINTR, errno.ENOENT):  # ENOENT: interrupted before we read it
                    raise

    def reply(self, unique: int, reply: bytes | int) -> None:
        if isinstance(reply, int):
            out = OUT_HEADER.pack(OUT_HEADER.size, reply, unique)
        else:
            out = OUT_HEADER.pack(OUT_HEADER.size + len(reply), 0, unique) + reply
        try:
            os.write(self.dev, out)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the requester was interrupted meanwhile
                raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        os.close(self.log_fd)
        if self.dev >= 0:
            os.close(self.dev)  # the backing files registered on it go with the connection
        with contextlib.suppress(OSError), open(self.log_path + ".stats", "w", encoding="utf-8") as f:
            json.dump(dict(self.stats), f)  # for the benchmark only

    # --- bookkeeping ------------------------------------------------------------------------------

    def note(self, path: bytes) -> None:
        """Record the first open of `path` ("/etc/passwd") as a layer-relative name."""
        if path in self.seen:
            return
        self.seen.add(path)
        try:
            os.write(self.log_fd, path[1:] + b"\0")
        except OSError as e:
            # The workload's open still succeeds; the parent learns that this profile is incomplete.
            self.fail(f"cannot write its access log: {e.strerror}")

    def fail(self, message: str) -> None:
        """Tell the parent (once) that this layer's record cannot be trusted: it fails the run."""
        if not self.failed:
            self.failed = True
            os.write(self.ready_fd, f"{self.index} !{message}\n".encode(errors="replace")[:500])

    def entry(self, path: bytes, s: os.stat_result) -> bytes:
        """An entry reply for `path`; the kernel now holds one more lookup of its node."""
        nodeid = self.ids.get(path)
        if nodeid is None:
            nodeid = self.next_id
            self.next_id += 1
            self.ids[path] = nodeid
            self.paths[nodeid] = path
            self.lookups[nodeid] = 0
        self.lookups[nodeid] += 1
        return ENTRY_OUT.pack(nodeid, 0, TIMEOUT, TIMEOUT, 0, 0, *_attr(s))

    def forget(self, nodeid: int, count: int) -> None:
        left = self.lookups.get(nodeid, 0) - count
        if left > 0 or nodeid == FUSE_ROOT_ID:
            self.lookups[nodeid] = left
            return
        path = self.paths.pop(nodeid, None)
        self.lookups.pop(nodeid, None)
        if path is not None:
            self.ids.pop(path, None)
        backing = self.backing.pop(nodeid, None)
        if backing is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.dev, FUSE_DEV_IOC_BACKING_CLOSE, struct.pack("<I", backing))
        fd = self.fds.pop(nodeid, None)
        if fd is not None:
            os.close(fd)

    # --- requests ---------------------------------------------------------------------------------

    def op_init(self, nodeid: int, data: bytes) -> bytes:
        major, minor, max_readahead, flags, flags2 = INIT_IN.unpack_from(data, IN_HEADER.size)
        if major != FUSE_KERNEL_VERSION:
            raise OSError(errno.EPROTO, f"FUSE protocol {major} is not supported")
        offered = flags | (flags2 << 32 if flags & FUSE_INIT_EXT else 0)
        want = offered & WANTED
        if os.environ.get("CTR_REMOTE_FUSE_PASSTHROUGH") == "0":  # as on a kernel without it (tests)
            want &= ~FUSE_PASSTHROUGH
        self.passthrough = bool(want & FUSE_PASSTHROUGH)
        self.no_opendir = bool(want & FUSE_NO_OPENDIR_SUPPORT)
        reply = INIT_OUT.pack(
            FUSE_KERNEL_VERSION,
            min(minor, FUSE_KERNEL_MINOR_VERSION),
            max_readahead,
            want & 0xFFFFFFFF,
            16,  # max_background
            12,  # congestion_threshold
            MAX_WRITE,
            1,  # time_gran: nanoseconds
            MAX_READ // 4096,  # max_pages
            0,
            want >> 32,
            MAX_STACK_DEPTH if self.passthrough else 0,
            0,
        )
        return reply

    def op_lookup(self, nodeid: int, data: bytes) -> bytes:
        name = data[IN_HEADER.size : data.index(b"\0", IN_HEADER.size)]
        path = self.paths[nodeid] + b"/" + name
        try:
            s = os.lstat(self.root + path)
        except FileNotFoundError:
            # Node id 0 with a timeout: a negative entry the kernel keeps, instead of asking again.
            return ENTRY_OUT.pack(0, 0, TIMEOUT, 0, 0, 0, *(0,) * 16)
        return self.entry(path, s)

    def op_forget(self, nodeid: int, data: bytes) -> None:
        self.forget(nodeid, struct.unpack_from("<Q", data, IN_HEADER.size)[0])

    def op_batch_forget(self, nodeid: int, data: bytes) -> None:
        (count,) = struct.unpack_from("<I", data, IN_HEADER.size)
        for i in range(count):
            nid, n = FORGET_ONE.unpack_from(data, IN_HEADER.size + 8 + i * FORGET_ONE.size)
            self.forget(nid, n)

    def op_getattr(self, nodeid: int, data: bytes) -> bytes:
        return ATTR_OUT.pack(TIMEOUT, 0, 0, *_attr(os.lstat(self.root + self.paths[nodeid])))

    def op_readlink(self, nodeid: int, data: bytes) -> bytes:
        return os.readlink(self.root + self.paths[nodeid])

    def op_open(self, nodeid: int, data: bytes) -> bytes:
        # Permissions were checked by the kernel (default_permissions) and writes refused (ro).
        path = self.paths[nodeid]
        self.note(path)
        if self.passthrough:
            backing = self.backing.get(nodeid)
            if backing is None:
                backing = self._register(path)
            if backing is not None:
                self.backing[nodeid] = backing
                return OPEN_OUT.pack(0, PASSED, backing)
        return OPEN_OUT.pack(0, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH, 0)

    def _register(self, path: bytes) -> int | None:
        """The layer's file as a backing file of the connection; None if the kernel refuses it (the
        file is then read through this daemon)."""
        fd = os.open(self.root + path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # A mutable buffer: ioctl() then returns the call's result, the backing id.
            return fcntl.ioctl(self.dev, FUSE_DEV_IOC_BACKING_OPEN, bytearray(BACKING_MAP.pack(fd, 0, 0)))
        except OSError:
            self.stats["passthrough_refused"] += 1
            return None
        finally:
            os.close(fd)

    def op_read(self, nodeid: int, data: bytes) -> bytes:
        _, offset, size, _ = READ_IN.unpack_from(data, IN_HEADER.size)
        fd = self.fds.get(nodeid)
        if fd is None:
            fd = os.open(self.root + self.paths[nodeid], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self.fds[nodeid] = fd
            if len(self.fds) > _MAX_OPEN_FILES:
                os.close(self.fds.popitem(last=False)[1])
        return os.pread(fd, size, offset)

    def op_release(self, nodeid: int, data: bytes) -> bytes:
        return b""

    op_releasedir = op_release

    def op_opendir(self, nodeid: int, data: bytes) -> bytes | int:
        if self.no_opendir:
            return -errno.ENOSYS  # from now on the kernel opens directories without asking
        return OPEN_OUT.pack(0, FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, 0)

    def op_statfs(self, nodeid: int, data: bytes) -> bytes:
        v = os.statvfs(self.root)
        return STATFS_OUT.pack(
            v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree, v.f_bsize, v.f_namemax, v.f_frsize, 0
        )

    def op_getxattr(self, nodeid: int, data: bytes) -> bytes | int:
        if self.xattrs is None:
            return -errno.ENOSYS
        (size,) = struct.unpack_from("<I", data, IN_HEADER.size)
        start = IN_HEADER.size + 8
        name = data[start : data.index(b"\0", start)].decode("utf-8", "surrogateescape")
        value = self.xattrs.get(self.paths[nodeid], {}).get(name)
        if value is None:
            return -errno.ENODATA
        return self._sized(value, size)

    def op_listxattr(self, nodeid: int, data: bytes) -> bytes | int:
        if self.xattrs is None:
            return -errno.ENOSYS
        (size,) = struct.unpack_from("<I", data, IN_HEADER.size)
        names = b"".join(
            n.encode("utf-8", "surrogateescape") + b"\0" for n in self.xattrs.get(self.paths[nodeid], {})
        )
        return self._sized(names, size)

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes | int:
        if size == 0:
            return XATTR_OUT.pack(len(value), 0)
        return value if len(value) <= size else -errno.ERANGE

    def op_readdirplus(self, nodeid: int, data: bytes) -> bytes:
        return self._readdir(nodeid, data, plus=True)

    def op_readdir(self, nodeid: int, data: bytes) -> bytes:
        return self._readdir(nodeid, data, plus=False)

    def _readdir(self, nodeid: int, data: bytes, *, plus: bool) -> bytes:
        # Offsets are indexes into the listing, which is taken once, at offset 0, and kept until the
        # kernel asks past its end (it always does, once, to learn that the listing is over: that
        # request used to list and stat the whole directory again, for nothing).
        _, offset, size, _ = READ_IN.unpack_from(data, IN_HEADER.size)
        path = self.paths[nodeid]
        listing = self.listings.get(nodeid)
        if offset == 0 or listing is None:
            directory = self.root + path
            listing = [(b".", os.lstat(directory)), (b"..", os.lstat(directory))]
            with os.scandir(directory) as it:
                listing += [(e.name, e.stat(follow_symlinks=False)) for e in it]
            self.listings[nodeid] = listing
        if offset >= len(listing):
            del self.listings[nodeid]
            return b""
        out = []
        used = 0
        for index in range(offset, len(listing)):
            name, s = listing[index]
            padded = (DIRENT.size + len(name) + 7) & ~7
            record = padded + (ENTRY_OUT.size if plus else 0)
            if used + record > size:
                break
            if plus:
                if name in (b".", b".."):  # not linked by the kernel: no node
                    out.append(ENTRY_OUT.pack(0, 0, 0, 0, 0, 0, *(0,) * 16))
                else:
                    out.append(self.entry(path + b"/" + name, s))
            dirent = DIRENT.pack(s.st_ino, index + 1, len(name), stat.S_IFMT(s.st_mode) >> 12) + name
            out.append(dirent + b"\0" * (padded - len(dirent)))
            used += record
        return b"".join(out)


def _serve(request: dict, ready_fd: int) -> None:
    """Mount one layer and serve it until it is unmounted (runs on its own thread)."""
    index = int(request["index"])
    layer: Layer | None = None
    try:
        xattrs = None
        if request.get("xattrs"):
            with open(request["xattrs"], encoding="utf-8") as f:
                table = json.load(f)
            xattrs = {
                os.fsencode("/" + path if path else ""): {k: bytes.fromhex(v) for k, v in attrs.items()}
                for path, attrs in table.items()
            }
        layer = Layer(index, request["root"], request["log"], ready_fd, xattrs)
        layer.mount(request["mountpoint"])
        _answer_init(layer)
        os.write(ready_fd, b"%d\n" % index)  # one small write: atomic on a pipe
        layer.serve()
    except BaseException as e:  # reported to the parent, which turns it into a one-line error
        message = " ".join(str(e).split()) or type(e).__name__
        os.write(ready_fd, f"{index} !{message}\n".encode(errors="replace")[:500])
    finally:
        if layer is not None:
            layer.close()


def _answer_init(layer: Layer) -> None:
    """The first request on a new connection is INIT; nothing else is served before it is answered."""
    data = os.read(layer.dev, BUFFER)
    _, opcode, unique, nodeid, _, _, _, _, _ = IN_HEADER.unpack_from(data)
    if OPCODES.get(opcode) != "init":
        raise OSError(errno.EPROTO, f"expected INIT, got opcode {opcode}")
    layer.stats["init"] += 1
    layer.reply(unique, layer.op_init(nodeid, data))


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
