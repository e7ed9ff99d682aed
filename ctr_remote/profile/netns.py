"""Persistent network namespaces: a fresh netns pinned by a bind mount of its nsfs file, loopback up.

Like `ip netns add`, but under a directory of ours and without spawning processes: a short-lived thread
unshares its own network namespace (CLONE_NEWNET is per thread), bind-mounts `/proc/thread-self/ns/net`
onto an empty file, and brings `lo` up through a socket that belongs to the new namespace. When the
thread ends, the bind mount alone keeps the namespace alive until `remove_netns`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path

from ctr_remote.errors import CtrRemoteError

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")  # struct ifreq: name, then the ifr_flags member of the union

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class NetnsError(CtrRemoteError):
    """A network namespace could not be created or removed."""


def _check(rc: int, what: str, path: Path | str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


def _set_link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = _IFREQ.pack(name.encode(), 0)
        (_, flags) = _IFREQ.unpack(fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))


def _pin_new_netns(path: Path) -> None:
    """Runs on a dedicated thread: everything here happens in that thread's new namespace."""
    _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)", path)
    source = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    _check(_libc.mount(source.encode(), os.fsencode(path), None, _MS_BIND, None), "bind mount", path)
    _set_link_up("lo")


def create_netns(path: Path) -> None:
    """Create a network namespace pinned at `path` (which must not exist) with `lo` up.

    On failure nothing is left behind: no file, no mount.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    except OSError as e:
        raise NetnsError(f"cannot create network namespace file {path}: {e.strerror}") from e
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _pin_new_netns(path)
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, name=f"netns {path.name}")
    thread.start()
    thread.join()
    if failure:
        _discard(path)
        cause = failure[0]
        msg = cause.args[1] if isinstance(cause, OSError) and len(cause.args) > 1 else str(cause)
        raise NetnsError(f"cannot create network namespace {path}: {msg}") from cause


def remove_netns(path: Path) -> None:
    """Unmount and delete a namespace made by `create_netns`; a missing one is fine.

    The namespace itself goes away once nothing else (a container, a plugin) still holds it.
    """
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted, or not there at all
            raise NetnsError(f"cannot unmount network namespace {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise NetnsError(f"cannot remove network namespace file {path}: {e.strerror}") from e


def _discard(path: Path) -> None:
    """Undo a half-made namespace: unmount if the bind mount happened, and unlink in any case."""
    _libc.umount2(os.fsencode(path), _MNT_DETACH)
    with contextlib.suppress(OSError):
        path.unlink()


def is_netns_mounted(path: Path) -> bool:
    """Whether `path` is currently a mount point (of an nsfs file) in this mount namespace."""
    target = os.fsencode(path.absolute())
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)
