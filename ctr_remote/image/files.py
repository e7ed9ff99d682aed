"""Writing files so that readers never see them half-written, and streaming content through a
digest check on the way to disk."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ctr_remote.image.digest import check, hasher
from ctr_remote.image.errors import ImageError
from ctr_remote.image.manifest import Descriptor
from ctr_remote.runstate import note_temp_file

CHUNK = 1 << 20


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Our own file writes failing (a full disk, a read-only one): one line naming where."""
    try:
        yield
    except OSError as e:
        raise ImageError(f"cannot write {dest}: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A temp file next to `dest`, renamed over it only if the block succeeds; removed otherwise.
    Failures to create, write (see `write_to`), sync or rename it are ImageErrors naming `dest`."""
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            note_temp_file(Path(tmp))  # a SIGKILLed run's janitor removes it
            os.fchmod(fd, _mode_for(dest))
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            with _writing(dest):
                f.flush()
                os.fsync(f.fileno())
        with _writing(dest):
            os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mode_for(dest: Path) -> int:
    """The mode a file written over `dest` gets: that of the file it replaces, else what open() would
    give a new file (0666 less the umask); mkstemp's 0600 would hide a layout from other users."""
    try:
        return stat.S_IMODE(os.stat(dest).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Read, not set and restored: os.umask() would change it for every thread for a moment.
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def write_to(f: BinaryIO, dest: Path, data: bytes) -> None:
    with _writing(dest):
        f.write(data)


def write_atomic(dest: Path, data: bytes) -> None:
    with atomic_file(dest) as f:
        write_to(f, dest, data)


def read_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


def copy_verified(chunks: Iterable[bytes], dest: Path, desc: Descriptor, what: str = "blob") -> None:
    """Write `chunks` to `dest` atomically, checking them against `desc` (nothing is left on a
    mismatch). Stops reading as soon as more than `desc.size` bytes arrive."""
    h = hasher(desc.digest)
    n = 0
    with atomic_file(dest) as f:
        for chunk in chunks:
            n += len(chunk)
            if n > desc.size:
                break
            h.update(chunk)
            write_to(f, dest, chunk)
        check(what, desc.digest, desc.size, f"{h.name}:{h.hexdigest()}", n)
