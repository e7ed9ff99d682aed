"""Reading a layer blob's tar entries with Python's tarfile, safely: bounded memory whatever the
blob holds. Everything that walks a layer with tarfile (the profiler's unpacker, `--prefetch-list`)
opens it here."""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ctr_remote.layer.compression import open_tar_stream

MAX_SPECIAL_HEADER = 1 << 20  # as Go's archive/tar (maxSpecialFileSize)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_SPECIAL_HEADER_TYPES = (*_PAX_TYPES, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a PAX header or a GNU long name into memory whatever its size (a 1 MB gzip blob
    made the unpacker take 2 GB); refused above Go archive/tar's limit for them."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:  # tarfile's own hook
        if self.type in _SPECIAL_HEADER_TYPES and self.size > MAX_SPECIAL_HEADER:
            raise tarfile.ReadError(
                f"a {'PAX header' if self.type in _PAX_TYPES else 'GNU long name'} of {self.size} bytes, "
                f"more than the limit of {MAX_SPECIAL_HEADER}"
            )
        return super()._proc_member(archive)  # type: ignore[misc]


@contextlib.contextmanager
def open_layer(blob: Path, what: str = "layer") -> Iterator[tarfile.TarFile]:
    """The layer blob (tar, tar+gzip or tar+zstd) as a streaming TarFile; walk it with `members`.
    Raises tarfile.TarError on a bad archive, CorruptLayerError on a broken compressed stream."""
    with open(blob, "rb") as raw:
        stream, _ = open_tar_stream(raw, what)
        with tarfile.open(
            fileobj=stream, mode="r|", errorlevel=1, errors="surrogateescape", tarinfo=_BoundedTarInfo
        ) as tf:
            yield tf


def members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's entries one by one. Iterating the TarFile itself would keep every entry in
    `tf.members` (~450 bytes each: gigabytes for a small blob of millions of empty entries)."""
    while (member := tf.next()) is not None:
        tf.members.clear()  # type: ignore[attr-defined]  # real, but not in typeshed
        yield member
