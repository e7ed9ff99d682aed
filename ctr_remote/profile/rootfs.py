"""Looking things up in the container's root filesystem before it runs: users, groups, the binary.

Paths are resolved as the container would see them (symlinks followed relative to the root, never
out of it), so a hostile `etc -> /` leads to the rootfs' own root, not the host's.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ctr_remote.profile.errors import ProfileError

MAX_SYMLINKS = 40
MAX_DB_SIZE = 16 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def resolve_in_root(root: Path, path: str) -> Path:
    """`path` (absolute, as seen inside the container) as a host path below `root`."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            done.append(part)  # does not exist (yet): nothing more to follow
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise ProfileError(f"too many levels of symbolic links resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
        else:
            done.append(part)
    return root.joinpath(*done)


def _read_db(root: Path, path: str) -> list[list[str]]:
    """Colon-separated records of /etc/passwd or /etc/group; missing file = no records.

    Only a regular file of at most MAX_DB_SIZE bytes is read: the image could make it a fifo (the
    open would block forever), a device node (the host's: /dev/zero would never end, a disk would be
    read) or a huge file.
    """
    host = resolve_in_root(root, path)
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise ProfileError(f"cannot read the image's {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProfileError(f"the image's {path} is not a regular file")
        chunks = []
        left = MAX_DB_SIZE + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > MAX_DB_SIZE:
        raise ProfileError(f"the image's {path} is larger than {MAX_DB_SIZE} bytes")
    text = data.decode("utf-8", "surrogateescape")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = field(default=())


def resolve_user(root: Path, spec: str) -> User:
    """`user`, `uid`, `user:group` or `uid:gid` (empty = root), names looked up in the image."""
    if not spec:
        return User(0, 0)
    user_part, _, group_part = spec.partition(":")
    passwd = [r for r in _read_db(root, "/etc/passwd") if len(r) >= 4]
    entry = next((r for r in passwd if r[0] == user_part), None)
    if entry is None and user_part.isdigit():
        entry = next((r for r in passwd if r[2] == user_part), None)
    if entry is None and not user_part.isdigit():
        raise ProfileError(f"user {user_part!r} not found in the image's /etc/passwd")
    try:
        uid = int(entry[2]) if entry else int(user_part)
        gid = int(entry[3]) if entry else 0
    except ValueError:
        raise ProfileError(f"malformed /etc/passwd entry for user {user_part!r} in the image") from None
    groups = [r for r in _read_db(root, "/etc/group") if len(r) >= 3]
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = next((r for r in groups if r[0] == group_part), None)
            if match is None:
                raise ProfileError(f"group {group_part!r} not found in the image's /etc/group")
            gid = int(match[2])
    name = entry[0] if entry else None
    extra = sorted(
        {
            int(r[2])
            for r in groups
            if name and len(r) >= 4 and name in r[3].split(",") and r[2].isdigit() and int(r[2]) != gid
        }
    )
    return User(uid, gid, tuple(extra))


def env_value(env: list[str], key: str) -> str | None:
    for item in reversed(env):
        k, sep, v = item.partition("=")
        if sep and k == key:
            return v
    return None


def check_executable(root: Path, argv0: str, env: list[str], cwd: str) -> None:
    """Fail with one line when the workload's binary is not in the image (runc's message is worse)."""
    if "/" in argv0:
        candidates = [posixpath.join(cwd, argv0)]
    else:
        search = env_value(env, "PATH") or DEFAULT_PATH
        candidates = [posixpath.join(d or ".", argv0) for d in search.split(":")]
    for candidate in candidates:
        host = resolve_in_root(root, posixpath.join("/", candidate))
        try:
            st = os.stat(host)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return
    where = "" if "/" in argv0 else f" (searched PATH={env_value(env, 'PATH') or DEFAULT_PATH})"
    raise ProfileError(f"workload executable {argv0!r} not found in the image{where}")
