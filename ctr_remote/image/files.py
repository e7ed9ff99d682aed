"""Writing files so that readers never see them half-written, and streaming content through a
digest check on the way to disk."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ctr_remote.image.digest import check, hasher
from ctr_remote.image.errors import ImageError
from ctr_remote.image.manifest import Descriptor
from ctr_remote.runstate import make_temp_file

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

CHUNK = 1 << 20


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Our own file writes failing (a full disk, a read-only one): one line naming where."""
    try:
        yield
    except OSError as e:
        raise ImageError(f"cannot write {dest}: {e.strerror or e}") from None


class _NamedWriter(io.BufferedWriter):
    """A buffered file whose write failures are ImageErrors naming it."""

    def __init__(self, raw: io.FileIO, dest: Path) -> None:
        super().__init__(raw)
        self.dest = dest

    def write(self, data: ReadableBuffer) -> int:
        with _writing(self.dest):
            return super().write(data)

    def flush(self) -> None:
        with _writing(self.dest):
            super().flush()


@contextlib.contextmanager
def _writer(fd: int, dest: Path) -> Iterator[BinaryIO]:
    f = _NamedWriter(io.FileIO(fd, "wb"), dest)
    try:
        yield f
        f.flush()
    finally:
        # A short write on a full disk leaves its tail in the buffer, and close() flushes it again:
        # that second ENOSPC must not replace the error that names the file. On success the buffer
        # is already flushed, so nothing is lost by ignoring it.
        with contextlib.suppress(OSError, ImageError):
            f.close()


@contextlib.contextmanager
def output_file(path: Path) -> Iterator[BinaryIO]:
    """`open(path, "wb")` for a work file: failures to create or write it are ImageErrors naming it."""
    with _writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    with _writer(fd, path) as f:
        yield f


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A temp file next to `dest`, renamed over it only if the block succeeds; removed otherwise.
    Failures to create, write, sync or rename it are ImageErrors naming `dest`."""
    with _writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Through the run record: a SIGKILLed run's janitor removes it.
        fd, tmp = make_temp_file(f".{dest.name}.", ".tmp", dest.parent)
        try:
            os.fchmod(fd, _mode_for(dest))
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    try:
        with _writer(fd, dest) as f:
            yield f
            f.flush()
            with _writing(dest):
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


def write_atomic(dest: Path, data: bytes) -> None:
    with atomic_file(dest) as f:
        f.write(data)


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
            f.write(chunk)
        check(what, desc.digest, desc.size, f"{h.name}:{h.hexdigest()}", n)
