"""The eStargz reader: footer, TOC, and verification of every chunk against its digest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.tar import BLOCK, REG, TOC_TYPES, TarHeader, padding, read_header
from ctr_remote.estargz.toc import FOOTER_SIZE, TOC_NAME, TOCEntry, encode_footer, parse_footer

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
    digest = "sha256:" + hashlib.sha256(toc_bytes).hexdigest()
    return EstargzReader(f, size, toc_offset, digest, entries, toc_bytes)


@dataclass(frozen=True)
class Verified:
    """What reading a whole blob measured: the plain tar's digest and size (what a runtime that
    knows nothing of eStargz unpacks) and how many chunks were checked against their digests."""

    diff_id: str
    uncompressed_size: int
    chunks: int


@dataclass
class EstargzReader:
    """An opened eStargz blob. `entries` are the TOC entries in order, chunks included."""

    file: BinaryIO
    size: int
    toc_offset: int
    toc_digest: str
    entries: tuple[TOCEntry, ...]
    toc_json: bytes = field(default=b"", repr=False)  # the TOC exactly as stored

    def verify(self, expected_toc_digest: str | None = None) -> Verified:
        """Check the TOC digest (when given), then read the whole blob as a plain tar.gz would be
        read and check that it is the blob the TOC describes: every gzip member intact (CRC and
        size), the tar entries those of the TOC in its order with the same names, types, sizes,
        link targets, modes, owners, devices and xattrs, every chunk starting the member at its
        `offset` and matching its digest, the TOC last, and the footer exact.

        Only bytes that carry nothing (gzip header MTIME, XFL and OS fields) may differ from what
        the TOC implies. Raises EstargzError naming the first thing that does not match; returns
        what the whole read measured.
        """
        if expected_toc_digest is not None and expected_toc_digest != self.toc_digest:
            raise EstargzError(
                f"TOC digest mismatch: expected {expected_toc_digest}, blob has {self.toc_digest}"
            )
        files = self._files()  # also checks that chunks follow their files
        footer_at = self.size - FOOTER_SIZE
        self.file.seek(footer_at)
        if not _footer_matches(self.file.read(FOOTER_SIZE), self.toc_offset):
            raise EstargzError("invalid eStargz blob: the footer is not the canonical empty gzip member")
        stream = _Members(self.file, footer_at)
        i = 0
        while i < len(self.entries):
            e = self.entries[i]
            raw = read_header(stream)
            if raw is None:
                raise EstargzError(f"the blob's tar ends before TOC entry {e.name!r}")
            _check_header(e, raw.header)
            i += 1
            if e.type != "reg" or e.size == 0:
                continue
            chunks = files[e.name]
            if chunks[0] is not e:
                raise EstargzError(f"invalid TOC: {e.name!r} is listed twice as a non-empty file")
            _verify_file(stream, e.name, chunks)
            i += len(chunks) - 1
            _skip(stream, padding(e.size), e.name)
        self._verify_tail(stream)
        return Verified(
            diff_id="sha256:" + stream.hash.hexdigest(),
            uncompressed_size=stream.total,
            chunks=sum(1 for e in self.entries if e.chunk_digest),
        )

    def _verify_tail(self, stream: _Members) -> None:
        """After the entries: (the end-of-archive of a lossless blob), the TOC member, the footer."""
        while True:
            at, starts = stream.pos, stream.member_starts(stream.pos)
            block = stream.read(BLOCK)
            if block != bytes(BLOCK):
                break
        if self.toc_offset not in starts:
            raise EstargzError("invalid eStargz blob: the TOC does not start the member the footer points at")
        raw = read_header(_Prefixed(block, stream))
        if raw is None or raw.header.name != TOC_NAME or raw.header.typeflag != REG:
            raise EstargzError(f"invalid eStargz blob: an entry at {at} of the tar is not in the TOC")
        toc_hash = hashlib.sha256()
        for data in _pieces(stream, raw.header.size, TOC_NAME):
            toc_hash.update(data)
        _skip(stream, padding(raw.header.size), TOC_NAME)
        if "sha256:" + toc_hash.hexdigest() != self.toc_digest:
            raise EstargzError("invalid eStargz blob: the TOC in the tar stream differs from the one read")
        tail = 0
        while data := stream.read(1 << 20):
            if data.count(0) != len(data):
                raise EstargzError("invalid eStargz blob: data after the TOC")
            tail += len(data)
        if tail < 2 * BLOCK:
            raise EstargzError("invalid eStargz blob: no end-of-archive marker after the TOC")

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


def _footer_matches(footer: bytes, toc_offset: int) -> bool:
    """Whether `footer` is exactly what a writer writes for `toc_offset`, but for MTIME, XFL and OS."""
    expected = encode_footer(toc_offset)
    return len(footer) == FOOTER_SIZE and footer[:4] == expected[:4] and footer[10:] == expected[10:]


def _check_header(e: TOCEntry, h: TarHeader) -> None:
    """The TOC entry `e` describes the tar entry `h` (the fields readers act on)."""
    toc_type = TOC_TYPES.get(h.typeflag)
    if e.name != h.name or e.type != toc_type:
        raise EstargzError(f"TOC entry {e.name!r} ({e.type}) is {h.name!r} ({toc_type}) in the tar")
    wanted = {
        "size": (e.size, h.size if e.type == "reg" else 0),
        "link target": (e.link_name, h.linkname if e.type in ("hardlink", "symlink") else ""),
        "mode": (e.mode, h.mode),
        "uid": (e.uid, h.uid),
        "gid": (e.gid, h.gid),
        "device": (
            (e.dev_major, e.dev_minor),
            (h.devmajor, h.devminor) if e.type in ("char", "block") else (0, 0),
        ),
        "xattrs": (e.xattrs, h.xattrs),
    }
    for what, (toc, tar) in wanted.items():
        if toc != tar:
            raise EstargzError(f"TOC entry {e.name!r}: {what} {toc!r} differs from the tar's {tar!r}")


def _verify_file(stream: _Members, name: str, chunks: list[TOCEntry]) -> None:
    size = chunks[0].size
    file_hash = hashlib.sha256()
    for i, c in enumerate(chunks):
        end = chunks[i + 1].chunk_offset if i + 1 < len(chunks) else size
        if (i == 0 and c.chunk_offset != 0) or end <= c.chunk_offset:
            raise EstargzError(f"invalid TOC: chunks of {name!r} are not contiguous")
        if not c.chunk_digest:
            raise EstargzError(f"invalid TOC: a chunk of {name!r} has no chunkDigest")
        if c.inner_offset or c.offset not in stream.member_starts(stream.pos):
            raise EstargzError(
                f"the chunk of {name!r} at {c.chunk_offset} does not start the member at {c.offset}"
            )
        chunk_hash = hashlib.sha256()
        for data in _pieces(stream, end - c.chunk_offset, name):
            chunk_hash.update(data)
            file_hash.update(data)
        if "sha256:" + chunk_hash.hexdigest() != c.chunk_digest:
            raise EstargzError(f"chunk digest mismatch in {name!r} at offset {c.chunk_offset}")
    if chunks[0].digest and "sha256:" + file_hash.hexdigest() != chunks[0].digest:
        raise EstargzError(f"content digest mismatch in {name!r}")


def _pieces(stream: _Members, n: int, name: str) -> Iterator[bytes]:
    """The next `n` bytes of the stream, a piece at a time: a hostile TOC may claim any size."""
    while n > 0:
        data = stream.read(min(n, 1 << 20))
        if not data:
            raise EstargzError(f"the blob's tar ends inside {name!r}")
        n -= len(data)
        yield data


def _skip(stream: _Members, n: int, name: str) -> None:
    if len(stream.read(n)) != n:
        raise EstargzError(f"the blob's tar ends inside the padding of {name!r}")


class _Prefixed:
    """`head`, then the rest of `rest`: puts back a block read ahead."""

    def __init__(self, head: bytes, rest: _Members) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int) -> bytes:
        head, self._head = self._head[:n], self._head[n:]
        return head + self._rest.read(n - len(head)) if len(head) < n else head


class _Members:
    """The gzip members of `f` from offset 0 to `end`, decompressed in sequence (what a plain
    tar.gz reader sees), remembering at which uncompressed offsets members start. Each member's
    CRC and size are checked; memory stays bounded whatever the members hold."""

    def __init__(self, f: BinaryIO, end: int) -> None:
        self._f = f
        self._end = end
        self._cpos = 0  # compressed offset of self._input[0]
        self._input = b""
        self._d: Any = None
        self._out = bytearray()
        self.pos = 0  # uncompressed offset of the next byte read() returns
        self.hash = hashlib.sha256()  # of everything decompressed so far: the diff ID at the end
        self.total = 0
        self._starts: dict[int, list[int]] = {}
        f.seek(0)

    def read(self, n: int) -> bytes:
        while len(self._out) < n and self._fill():
            pass
        data = bytes(self._out[:n])
        del self._out[:n]
        self.pos += len(data)
        return data

    def member_starts(self, upos: int) -> list[int]:
        """Compressed offsets of the members whose output starts at uncompressed offset `upos`."""
        while self.pos + len(self._out) <= upos and self._fill():
            pass
        return self._starts.get(upos, [])

    def _fill(self) -> bool:
        """Decompress some more; False at the end of the last member."""
        if not self._input:
            n = min(1 << 20, self._end - self._cpos)
            if n <= 0:
                if self._d is not None:
                    raise EstargzError(f"truncated gzip member before offset {self._end}")
                return False
            self._input = self._f.read(n)
            if len(self._input) != n:
                raise EstargzError("the blob is shorter than it was")
        if self._d is None:
            self._d = zlib.decompressobj(31)
            self._starts.setdefault(self.pos + len(self._out), []).append(self._cpos)
        try:
            data = self._d.decompress(self._input, 1 << 20)
        except zlib.error as e:
            raise EstargzError(f"corrupt gzip member after offset {self._cpos}: {e}") from None
        self._out += data
        self.hash.update(data)
        self.total += len(data)
        rest = self._d.unused_data if self._d.eof else self._d.unconsumed_tail
        self._cpos += len(self._input) - len(rest)
        self._input = rest
        if self._d.eof:
            self._d = None
        return True


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
