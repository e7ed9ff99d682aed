"""Unpack one layer blob into its own directory, in overlayfs form, without trusting the tar.

`.wh.NAME` becomes an overlay whiteout (a 0/0 character device), `.wh..wh..opq` the
`trusted.overlay.opaque=y` xattr on its directory. Ownership, modes (setuid too), xattrs, device
nodes, fifos, hardlinks and mtimes are kept.

Hostile entries are neutralised or refused, never followed out of the layer directory:
- names are cleaned like upstream's estargz (`path.Clean("/" + name)`), so `../x` and `/x` mean `x`;
- every directory on the way is opened relative to its parent with O_NOFOLLOW, so an entry below a
  symlink (or a regular file) is refused rather than written through it;
- hardlinks must point at an entry this layer already unpacked (again resolved without following);
- `trusted.*` and `user.overlay.*` xattrs from the tar are dropped: they would steer overlayfs
  (redirects, opaque, whiteouts, metacopy).
Device nodes are created as they are: the work directory is private to root and the container's device
cgroup denies them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ctr_remote.layer.archive import members, open_layer
from ctr_remote.layer.paths import OPAQUE_MARKER, WHITEOUT_PREFIX, clean_name
from ctr_remote.profile.errors import ProfileError

log = structlog.get_logger()

OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIRS = 256
MAX_REFUSALS_KEPT = 100
PATH_MAX = 4096
# Python 3.11's shutil.rmtree recurses once per level (its limit: ~1,000 frames), as does any tool
# walking the tree recursively; no real image nests this deep.
MAX_DEPTH = 512
# overlayfs reads its state from trusted.overlay.* (and user.overlay.* when mounted with userxattr):
# from a tar they would redirect, hide or whiteout as if the overlay had written them.
_DROPPED_XATTR_PREFIXES = ("trusted.", "user.overlay.")


@dataclass
class UnpackedLayer:
    """A layer directory in overlay form.

    `xattrs` maps layer-relative paths to the extended attributes set on them (including the opaque
    marker), so the FUSE recorder can answer getxattr without touching the disk; empty when the layer
    has none, which lets the recorder refuse xattrs altogether (no round trips).
    """

    root: Path
    xattrs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # the first MAX_REFUSALS_KEPT reasons
    refused_count: int = 0

    def refuse(self, what: str, entry: str, reason: str) -> None:
        """Note a skipped entry; a layer made of millions of them costs neither memory nor log lines."""
        self.refused_count += 1
        if self.refused_count <= MAX_REFUSALS_KEPT:
            reason = _shown(reason, 1000)  # names in it are cut already; this bounds the rest
            self.refused.append(reason)
            log.warning("refused layer entry", layer=what, entry=_shown(entry), reason=reason)


def _shown(text: str, limit: int = 300) -> str:
    """Names in messages and logs cut short: a tar name may be up to MAX_SPECIAL_HEADER bytes."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class _Refused(Exception):
    """This entry cannot be unpacked safely; it is skipped and logged."""


class _Tree:
    """Creates entries below `root_fd`, opening every directory relative to its parent, never following."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self._dirs: dict[str, int] = {}

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def dir_fd(self, rel: str, *, create: bool) -> int:
        """The directory `rel`, opened from its deepest cached ancestor down, one level at a time
        (iteratively: a hostile name may be 2,000 directories deep)."""
        if rel == "":
            return self.root_fd
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        parts = rel.split("/")
        start, fd = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            cached = self._dirs.get("/".join(parts[:i]))
            if cached is not None:
                start, fd = i, cached
                break
        for i in range(start, len(parts)):
            fd = self._open_dir(fd, parts[i], "/".join(parts[: i + 1]), create=create)
        return fd

    def _open_dir(self, parent: int, base: str, rel: str, *, create: bool) -> int:
        try:
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise _Refused(f"{_shown(rel)} does not exist in this layer") from None
            os.mkdir(base, 0o755, dir_fd=parent)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Refused(f"{_shown(rel)} is a symlink or not a directory") from None
            raise
        if len(self._dirs) >= _MAX_CACHED_DIRS:
            self.close()  # `parent` is not needed any more
        self._dirs[rel] = fd
        return fd

    def clear(self, parent: int, base: str, *, keep_dir: bool) -> None:
        """Make room for a new entry `base`: remove what is there unless it is a directory to keep."""
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            self.close()  # cached descriptors may point into the directory being removed
            shutil.rmtree(base, dir_fd=parent)
        else:
            os.unlink(base, dir_fd=parent)


def _xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    found = {}
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PAX_PREFIX):
            name = key[len(_XATTR_PAX_PREFIX) :]
            if name.startswith(_DROPPED_XATTR_PREFIXES):
                continue
            found[name] = value.encode("utf-8", "surrogateescape")
    return found


def _set_xattrs(target: int | str, member: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    for name, value in list(xattrs.items()):
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as e:  # e.g. a malformed security.capability the kernel rejects
            log.warning("dropped an extended attribute", entry=member.name, xattr=name, reason=e.strerror)
            del xattrs[name]


def _set_metadata(parent: int, base: str, member: tarfile.TarInfo, xattrs: dict[str, bytes]) -> None:
    os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
    if not member.issym():
        # After chown, which clears setuid/setgid bits. We created this non-symlink ourselves.
        os.chmod(base, member.mode & 0o7777, dir_fd=parent)
    _set_xattrs(f"/proc/self/fd/{parent}/{base}", member, xattrs)
    mtime_ns = int(member.mtime * 1_000_000_000)
    os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)


def _write_regular(
    tree: _Tree,
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    parent: int,
    base: str,
    xattrs: dict[str, bytes],
) -> None:
    """The common case, kept to descriptor calls: create, copy, then metadata through the same fd."""
    try:
        fd = os.open(base, _CREATE_FLAGS, 0o600, dir_fd=parent)
    except FileExistsError:
        tree.clear(parent, base, keep_dir=False)
        fd = os.open(base, _CREATE_FLAGS, 0o600, dir_fd=parent)
    try:
        src = tf.extractfile(member)
        assert src is not None
        while chunk := src.read(1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid/setgid bits
        _set_xattrs(fd, member, xattrs)
        mtime_ns = int(member.mtime * 1_000_000_000)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _unpack_member(tree: _Tree, tf: tarfile.TarFile, member: tarfile.TarInfo, layer: UnpackedLayer) -> None:
    rel = clean_name(member.name)
    if rel == "":
        return  # the layer root itself: overlay takes the root's attributes from the upper dir
    if len(rel.encode("utf-8", "surrogateescape")) >= PATH_MAX:
        raise _Refused(f"{_shown(rel)}: longer than PATH_MAX, no path could reach it")
    if rel.count("/") >= MAX_DEPTH:
        raise _Refused(f"{_shown(rel)}: more than {MAX_DEPTH} directories deep")
    head, _, base = rel.rpartition("/")
    parent = tree.dir_fd(head, create=True)

    if base == OPAQUE_MARKER:
        os.setxattr(f"/proc/self/fd/{parent}", OPAQUE_XATTR, b"y")
        layer.xattrs.setdefault(head, {})[OPAQUE_XATTR] = b"y"
        return
    if base.startswith(WHITEOUT_PREFIX):
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", ".."):
            raise _Refused(f"{_shown(rel)}: whiteout without a name")
        tree.clear(parent, name, keep_dir=False)
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        return

    xattrs = _xattrs_of(member)
    if member.isreg():
        _write_regular(tree, tf, member, parent, base, xattrs)
        if xattrs:
            layer.xattrs[rel] = xattrs
        return
    if member.isdir():
        try:
            os.mkdir(base, 0o700, dir_fd=parent)
        except FileExistsError:
            tree.clear(parent, base, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=parent)
    elif member.islnk():
        target = clean_name(member.linkname)
        t_head, _, t_base = target.rpartition("/")
        t_parent = tree.dir_fd(t_head, create=False)
        try:
            st = os.stat(t_base, dir_fd=t_parent, follow_symlinks=False)
        except FileNotFoundError:
            raise _Refused(f"hardlink {_shown(rel)} -> {_shown(target)}: target not in this layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise _Refused(f"hardlink {_shown(rel)} -> {_shown(target)}: target is a directory")
        tree.clear(parent, base, keep_dir=False)
        os.link(t_base, base, src_dir_fd=t_parent, dst_dir_fd=parent, follow_symlinks=False)
        if target in layer.xattrs:
            layer.xattrs[rel] = layer.xattrs[target]
        return  # a hardlink shares the target's inode and metadata
    else:
        tree.clear(parent, base, keep_dir=False)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            raise _Refused(f"{_shown(rel)}: unsupported tar entry type {member.type!r}")
    _set_metadata(parent, base, member, xattrs)
    if xattrs:
        layer.xattrs[rel] = xattrs


def unpack_layer(blob: Path, dest: Path, what: str = "layer") -> UnpackedLayer:
    """Unpack `blob` (tar, tar+gzip or tar+zstd) into the new directory `dest`.

    Refused entries are skipped and logged. A blob that is not a readable tar raises ProfileError
    (CorruptLayerError for a broken compressed stream); `what` names the layer in messages.
    """
    dest.mkdir(mode=0o755)
    layer = UnpackedLayer(root=dest)
    root_fd = os.open(dest, _DIR_FLAGS)
    tree = _Tree(root_fd)
    dir_times: list[tuple[str, int]] = []
    try:
        with open_layer(blob, what) as tf:
            for member in members(tf):
                try:
                    _unpack_member(tree, tf, member, layer)
                except (_Refused, ValueError, OverflowError) as e:  # the latter: absurd device numbers
                    layer.refuse(what, member.name, str(e))
                    continue
                except OSError as e:
                    raise ProfileError(
                        f"{what}: cannot unpack {_shown(repr(member.name))}: {e.strerror}"
                    ) from None
                if member.isdir() and clean_name(member.name):
                    dir_times.append((clean_name(member.name), int(member.mtime * 1_000_000_000)))
        # Directory mtimes last: creating their children changed them.
        if layer.refused_count > MAX_REFUSALS_KEPT:
            log.warning("refused layer entries in all", layer=what, count=layer.refused_count)
        for rel, mtime_ns in reversed(dir_times):
            head, _, base = rel.rpartition("/")
            try:
                parent = tree.dir_fd(head, create=False)
                os.utime(base, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
            except (_Refused, FileNotFoundError):
                continue
    except tarfile.TarError as e:
        raise ProfileError(f"{what}: not a valid tar archive: {e}") from None
    finally:
        tree.close()
        os.close(root_fd)
    return layer
