"""mount(2) / umount2(2) through libc, and a view of the current mount table."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

from ctr_remote.profile.errors import ProfileError

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: Path, fstype: str, options: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, options.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def umount(target: Path, *, lazy: bool = False) -> None:
    """Unmount `target`; a target that is not mounted (any more) is fine."""
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _libc.umount2(os.fsencode(target), flags) != 0:
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):
            return
        raise OSError(e, f"umount {target}: {os.strerror(e)}")


def mount_overlay(
    target: Path, lower_base: Path, lowers: list[str], upper: Path, work: Path, extra: str
) -> None:
    """Mount overlayfs with `lowers` (top first) given relative to `lower_base`.

    Relative names keep the option string short: mount(2) takes one page of options, which absolute
    paths would exhaust at ~100 layers (Docker allows 127, overlayfs 500). The `mount` binary runs with
    `lower_base` as its working directory, since changing our own would affect every thread.
    """
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},{extra}"
    done = subprocess.run(  # a missing `mount` was found by check_mount_binary before anything started
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        cwd=lower_base,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise OSError(errno.EINVAL, lines[-1] if lines else f"mount exited with {done.returncode}")


def check_mount_binary() -> None:
    """The overlay is mounted by util-linux's `mount` (see mount_overlay): say so if there is none."""
    if shutil.which("mount") is None:
        raise ProfileError(
            "no `mount` binary on PATH (util-linux): it mounts the image's layers with overlayfs"
        )


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo (three octal digits).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountpoints_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, deepest first (the order to unmount them in)."""
    prefix = str(root).rstrip("/")
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _unescape(line.split(" ", 5)[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)
