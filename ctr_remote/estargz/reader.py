"""The eStargz reader: footer, TOC, and verification of every chunk against its digest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.tar import REG, read_header
from ctr_remote.estargz.toc import FOOTER_SIZE, TOC_NAME, TOCEntry, parse_footer

_MAX_TOC_BYTES = 512 << 20  # refuse absurd TOCs instead of exhausting memory on a hostile blob


def is_estargz(f: BinaryIO) -> bool:
    """Whether the seekable file `f` ends with an eStargz footer (nothing else is checked)."""
    return _footer_offset(f) is not None


def open_estargz(f: BinaryIO) -> EstargzReader:
    """Parse the footer and TOC of the seekable blob `f`; raises EstargzError if it is not eStargz."""
    size = f.seek(0, os.SEEK_END)
    toc_offset = _footer_offset(f)
    if toc_offset is None:
        raise EstargzError("not an eStargz blob: no eStargz footer")
    toc_end = size - FOOTER_SIZE
    if not 0 <= toc_offset < toc_end:
        raise EstargzError(f"not an eStargz blob: footer points at {toc_offset}, outside the blob")
    if toc_end - toc_offset > _MAX_TOC_BYTES:
        raise EstargzError(f"invalid eStargz blob: its TOC member is over {_MAX_TOC_BYTES} bytes")
    f.seek(toc_offset)
    member = _gunzip_member(f.read(toc_end - toc_offset), "the TOC")
    view = io.BytesIO(member)
    header = read_header(view)
    if header is None or header.header.name != TOC_NAME or header.header.typeflag != REG:
        raise EstargzError(f"not an eStargz blob: the member at the footer's offset is not {TOC_NAME}")
    toc_bytes = view.read(header.header.size)
    if len(toc_bytes) != header.header.size:
        raise EstargzError("invalid eStargz blob: truncated TOC")
    try:
        doc = json.loads(toc_bytes)
    except (ValueError, UnicodeDecodeError) as e:
        raise EstargzError(f"invalid eStargz TOC JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise EstargzError("invalid eStargz TOC: expected version 1 with an entries list")
    entries = tuple(TOCEntry.from_json(e) for e in doc["entries"])
    return EstargzReader(f, size, toc_offset, "sha256:" + hashlib.sha256(toc_bytes).hexdigest(), entries)


@dataclass
class EstargzReader:
    """An opened eStargz blob. `entries` are the TOC entries in order, chunks included."""

    file: BinaryIO
    size: int
    toc_offset: int
    toc_digest: str
    entries: tuple[TOCEntry, ...]

    def verify(self, expected_toc_digest: str | None = None) -> None:
        """Check the TOC digest (when given) and every chunk and file against its recorded digest.

        Raises EstargzError naming the first entry that does not match.
        """
        if expected_toc_digest is not None and expected_toc_digest != self.toc_digest:
            raise EstargzError(
                f"TOC digest mismatch: expected {expected_toc_digest}, blob has {self.toc_digest}"
            )
        for name, chunks in self._files().items():
            size = chunks[0].size
            file_hash = hashlib.sha256()
            pos = 0
            for i, c in enumerate(chunks):
                if c.chunk_offset != pos:
                    raise EstargzError(f"invalid TOC: chunks of {name!r} are not contiguous")
                if not c.chunk_digest:
                    raise EstargzError(f"invalid TOC: a chunk of {name!r} has no chunkDigest")
                data = self._read_chunk(c, chunks[i + 1].chunk_offset if i + 1 < len(chunks) else size)
                if _sha256(data) != c.chunk_digest:
                    raise EstargzError(f"chunk digest mismatch in {name!r} at offset {c.chunk_offset}")
                file_hash.update(data)
                pos += len(data)
            if pos != size:
                raise EstargzError(f"invalid TOC: chunks of {name!r} cover {pos} of {size} bytes")
            if chunks[0].digest and "sha256:" + file_hash.hexdigest() != chunks[0].digest:
                raise EstargzError(f"content digest mismatch in {name!r}")

    def read_file(self, name: str) -> bytes:
        """The contents of the regular file `name` (its TOC name), verified chunk by chunk."""
        chunks = self._files().get(name)
        if chunks is None:
            raise EstargzError(f"no regular file {name!r} in the eStargz blob")
        out = []
        for i, c in enumerate(chunks):
            data = self._read_chunk(c, chunks[i + 1].chunk_offset if i + 1 < len(chunks) else chunks[0].size)
            if _sha256(data) != c.chunk_digest:
                raise EstargzError(f"chunk digest mismatch in {name!r} at offset {c.chunk_offset}")
            out.append(data)
        return b"".join(out)

    def _files(self) -> dict[str, list[TOCEntry]]:
        files: dict[str, list[TOCEntry]] = {}
        current: list[TOCEntry] | None = None
        for e in self.entries:
            if e.type == "reg" and e.size > 0:
                current = files[e.name] = [e]
            elif e.type == "chunk":
                if current is None or current[0].name != e.name:
                    raise EstargzError(f"invalid TOC: chunk of {e.name!r} does not follow its file")
                current.append(e)
            else:
                current = None
        return files

    def _read_chunk(self, c: TOCEntry, end: int) -> bytes:
        """Decompress the member at `c.offset` far enough to return the chunk's bytes."""
        want = end - c.chunk_offset
        if not 0 <= c.offset < self.toc_offset or want <= 0:
            raise EstargzError(f"invalid TOC: bad offset or chunk bounds for {c.name!r}")
        self.file.seek(c.offset)
        d = zlib.decompressobj(31)
        out = bytearray()
        remaining = self.toc_offset - c.offset
        while len(out) < c.inner_offset + want and remaining > 0 and not d.eof:
            data = self.file.read(min(remaining, 1 << 20))
            remaining -= len(data)
            try:
                out += d.decompress(data, c.inner_offset + want - len(out))
                while d.unconsumed_tail and len(out) < c.inner_offset + want:
                    out += d.decompress(d.unconsumed_tail, c.inner_offset + want - len(out))
            except zlib.error as e:
                raise EstargzError(f"corrupt gzip member at offset {c.offset} ({c.name!r}): {e}") from None
        if len(out) < c.inner_offset + want:
            raise EstargzError(f"chunk of {c.name!r} at offset {c.offset} is truncated")
        return bytes(out[c.inner_offset : c.inner_offset + want])


def _footer_offset(f: BinaryIO) -> int | None:
    size = f.seek(0, os.SEEK_END)
    if size < FOOTER_SIZE:
        return None
    f.seek(size - FOOTER_SIZE)
    return parse_footer(f.read(FOOTER_SIZE))


def _gunzip_member(data: bytes, what: str) -> bytes:
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data, _MAX_TOC_BYTES)
    except zlib.error as e:
        raise EstargzError(f"invalid eStargz blob: corrupt gzip in {what}: {e}") from None
    if d.unconsumed_tail:
        raise EstargzError(f"invalid eStargz blob: {what} is larger than {_MAX_TOC_BYTES} bytes")
    if not d.eof:
        raise EstargzError(f"invalid eStargz blob: {what} is truncated")
    if d.unused_data:
        raise EstargzError(f"invalid eStargz blob: trailing bytes after {what}")
    return out


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
