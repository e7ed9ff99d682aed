"""First pass over the input tar: spool it to a temp file and index its entries.

Upstream's ordering needs the whole layer (a later duplicate replaces an earlier entry and takes
its position; prioritized files may come from anywhere), so the layer is copied once to an
unlinked temp file while its headers are parsed and its payloads hashed; the writer then reads
entries back from the spool in output order. Only small per-entry records stay in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.tar import HARDLINK, REG, padding, read_header
from ctr_remote.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME
from ctr_remote.layer.paths import clean_name

_PIECE = 1 << 20
#: Input entries dropped on conversion: they are regenerated (idempotent re-conversion).
_RESERVED = {TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}


@dataclass(slots=True)
class Scanned:
    """An input entry: where its bytes are in the spool, and what ordering and the TOC need early."""

    key: str  # clean name: the entry's identity
    typeflag: str
    link_key: str | None  # clean target of a hardlink
    raw_start: int  # spool offset of its first header block (lossless: right after the previous entry)
    data_start: int  # spool offset of its payload
    size: int  # payload bytes
    # Raw sha256 digests (not hex strings: a layer may have 100k+ entries): of the payload of a
    # regular file, and of each chunk of a file of more than one chunk.
    digest: bytes
    chunk_digests: tuple[bytes, ...]


class _Spooling:
    """Reads from the tar stream, copies everything read to the spool, and counts."""

    def __init__(self, src: BinaryIO, spool: IO[bytes]) -> None:
        self._src = src
        self._spool = spool
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self._src.read(n)
        with _spool_errors():
            self._spool.write(data)
        self.pos += len(data)
        return data

    def flush(self) -> None:
        with _spool_errors():
            self._spool.flush()


@contextlib.contextmanager
def _spool_errors() -> Iterator[None]:
    try:
        yield
    except OSError as e:  # a full disk or a file size limit: the layer may be a gzip bomb
        raise EstargzError(f"cannot spool the layer to a temp file in {tempfile.gettempdir()}: {e}") from None


def scan(
    tar: BinaryIO, spool: IO[bytes], chunk_size: int, lossless: bool = False
) -> tuple[list[Scanned], int]:
    """Copy the tar stream to `spool` and return its entries, and the spool offset where they end
    (the end-of-archive and whatever follows start there).

    Normally the entries are in upstream's order (duplicates resolved: the later one wins), without
    the reserved TOC and landmark entries, and PAX global headers fall between entries. `lossless`
    keeps every entry in input order, each starting right where the previous one's padding ends
    (so its header bytes include any PAX global header before it), and refuses a TOC entry."""
    r = _Spooling(tar, spool)
    entries: list[Scanned | None] = []
    latest: dict[str, int] = {}
    while True:
        end = r.pos
        raw = read_header(r)
        if raw is None:
            break
        start = end if lossless else r.pos - len(raw.raw)
        h = raw.header
        size = h.payload_size
        digest, chunks = _copy_payload(r, size, chunk_size, h.name) if h.typeflag == REG else (b"", ())
        if padding(size) and len(r.read(padding(size))) != padding(size):
            raise EstargzError(f"truncated tar: stream ended inside the padding of {h.name!r}")
        key = clean_name(h.name)
        if lossless and key == TOC_NAME:
            # Dropping it would change the tar; keeping it would give the blob two TOCs.
            raise EstargzError(f"the layer already holds {TOC_NAME!r}: it cannot be converted losslessly")
        if key in _RESERVED and not lossless:
            continue
        if key in latest and not lossless:
            entries[latest[key]] = None
        latest[key] = len(entries)
        link_key = clean_name(h.linkname) if h.typeflag == HARDLINK else None
        entries.append(
            Scanned(key, h.typeflag, link_key, start, r.pos - size - padding(size), size, digest, chunks)
        )
    # Drain, so a corrupt tail of a compressed layer is still noticed; lossless keeps the tail.
    drain = r.read if lossless else tar.read
    while drain(_PIECE):
        pass
    r.flush()
    return [e for e in entries if e is not None], end


def _copy_payload(r: _Spooling, size: int, chunk_size: int, name: str) -> tuple[bytes, tuple[bytes, ...]]:
    file_hash = hashlib.sha256()
    multi = size > chunk_size
    chunk_hash = hashlib.sha256() if multi else None
    chunk_digests: list[bytes] = []
    remaining, chunk_left = size, min(size, chunk_size)
    while remaining:
        data = r.read(min(_PIECE, chunk_left))
        if not data:
            raise EstargzError(f"truncated tar: stream ended inside the payload of {name!r}")
        file_hash.update(data)
        remaining -= len(data)
        chunk_left -= len(data)
        if chunk_hash is not None:
            chunk_hash.update(data)
            if chunk_left == 0:
                chunk_digests.append(chunk_hash.digest())
                chunk_hash = hashlib.sha256()
                chunk_left = min(remaining, chunk_size)
    return file_hash.digest(), tuple(chunk_digests)
