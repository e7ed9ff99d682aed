"""The eStargz reader: footer, TOC, and verification of every chunk against its digest.

It reads every format the writer writes: gzip eStargz (TOC member and 51-byte footer), eStargz
with an external TOC (46-byte footer; the TOC blob is passed in), and zstd:chunked (TOC and footer
in zstd skippable frames), with or without `innerOffset` (min chunk size).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from ctr_remote.estargz.codec import DECODE_ERRORS, decompressor
from ctr_remote.estargz.errors import EstargzError
from ctr_remote.estargz.options import LayerFormat
from ctr_remote.estargz.tar import BLOCK, REG, TOC_TYPES, TarHeader, padding, read_header
from ctr_remote.estargz.toc import (
    EXTERNAL_FOOTER_SIZE,
    FOOTER_SIZE,
    SKIPPABLE_MAGIC,
    TOC_NAME,
    ZSTD_FOOTER_SIZE,
    TOCEntry,
    encode_footer,
    encode_zstd_footer,
    is_external_footer,
    parse_footer,
    parse_zstd_footer,
    zstd_position,
)

_MAX_TOC_BYTES = 512 << 20
_MEMBER = {
    LayerFormat.ESTARGZ: "gzip member",
    LayerFormat.ZSTD_CHUNKED: "zstd frame",
}  # refuse absurd TOCs instead of exhausting memory on a hostile blob


def is_estargz(f: BinaryIO) -> bool:
    """Whether the seekable file `f` ends with an eStargz, external-TOC or zstd:chunked footer
    (nothing else is checked)."""
    return blob_kind(f) is not None


def blob_kind(f: BinaryIO) -> str | None:
    """ "estargz", "estargz-external-toc" or "zstd:chunked" by the footer of the seekable blob `f`;
    None if it has none of them."""
    size = f.seek(0, os.SEEK_END)
    if _footer_offset(f) is not None:
        return "estargz"
    if size >= ZSTD_FOOTER_SIZE:
        f.seek(size - ZSTD_FOOTER_SIZE)
        if parse_zstd_footer(f.read(ZSTD_FOOTER_SIZE)) is not None:
            return LayerFormat.ZSTD_CHUNKED.value
    if size >= EXTERNAL_FOOTER_SIZE:
        f.seek(size - EXTERNAL_FOOTER_SIZE)
        if is_external_footer(f.read(EXTERNAL_FOOTER_SIZE)):
            return "estargz-external-toc"
    return None


def open_estargz(f: BinaryIO, external_toc: bytes | None = None) -> EstargzReader:
    """Parse the footer and TOC of the seekable blob `f`; raises EstargzError if it is not eStargz
    or zstd:chunked. A blob whose TOC is external needs that TOC blob (`external_toc`: the layer of
    the `-esgztoc` image, a gzip member holding a tar of `stargz.index.json`)."""
    kind = blob_kind(f)
    size = f.seek(0, os.SEEK_END)
    if kind == LayerFormat.ZSTD_CHUNKED.value:
        return _open_zstd(f, size)
    if kind == "estargz-external-toc":
        if external_toc is None:
            raise EstargzError(
                "the blob's TOC is external (STARGZEXTERNALTOC footer): its TOC blob is needed"
            )
        toc_bytes = _toc_from_member(external_toc, "the external TOC blob")
        end = size - EXTERNAL_FOOTER_SIZE
        return _reader(f, size, LayerFormat.ESTARGZ, end, end, toc_bytes, external=True)
    toc_offset = _footer_offset(f)
    if toc_offset is None:
        raise EstargzError("not an eStargz blob: no eStargz footer")
    toc_end = size - FOOTER_SIZE
    if not 0 <= toc_offset < toc_end:
        raise EstargzError(f"not an eStargz blob: footer points at {toc_offset}, outside the blob")
    if toc_end - toc_offset > _MAX_TOC_BYTES:
        raise EstargzError(f"invalid eStargz blob: its TOC member is over {_MAX_TOC_BYTES} bytes")
    f.seek(toc_offset)
    toc_bytes = _toc_from_member(f.read(toc_end - toc_offset), "the TOC")
    return _reader(f, size, LayerFormat.ESTARGZ, toc_offset, toc_offset, toc_bytes)


def _open_zstd(f: BinaryIO, size: int) -> EstargzReader:
    f.seek(size - ZSTD_FOOTER_SIZE)
    parsed = parse_zstd_footer(f.read(ZSTD_FOOTER_SIZE))
    assert parsed is not None
    toc_offset, clen, raw_len = parsed
    if toc_offset < 8 or toc_offset + clen != size - ZSTD_FOOTER_SIZE:
        raise EstargzError(
            f"invalid zstd:chunked blob: a {clen}-byte TOC at {toc_offset} does not end at the footer"
        )
    if raw_len > _MAX_TOC_BYTES or clen > _MAX_TOC_BYTES:
        raise EstargzError(f"invalid zstd:chunked blob: its TOC is over {_MAX_TOC_BYTES} bytes")
    f.seek(toc_offset - 8)
    frame = f.read(clen + 8)
    if frame[:4] != SKIPPABLE_MAGIC or struct.unpack("<I", frame[4:8])[0] != clen:
        raise EstargzError("invalid zstd:chunked blob: the TOC is not one skippable frame")
    compressed = frame[8:]
    try:
        toc_bytes = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise EstargzError(f"invalid zstd:chunked blob: corrupt TOC: {e}") from None
    if len(toc_bytes) != raw_len:
        raise EstargzError(
            f"invalid zstd:chunked blob: the TOC is {len(toc_bytes)} bytes, the footer says {raw_len}"
        )
    reader = _reader(f, size, LayerFormat.ZSTD_CHUNKED, toc_offset, toc_offset - 8, toc_bytes)
    reader.zstd_checksum = "sha256:" + hashlib.sha256(compressed).hexdigest()
    reader.zstd_position = zstd_position(toc_offset, clen, raw_len)
    return reader


def _toc_from_member(data: bytes, what: str) -> bytes:
    """The TOC JSON from a gzip member holding the tar entry `stargz.index.json`."""
    member = _gunzip_member(data, what)
    view = io.BytesIO(member)
    header = read_header(view)
    if header is None or header.header.name != TOC_NAME or header.header.typeflag != REG:
        raise EstargzError(f"not an eStargz blob: the member at the footer's offset is not {TOC_NAME}")
    toc_bytes = view.read(header.header.size)
    if len(toc_bytes) != header.header.size:
        raise EstargzError("invalid eStargz blob: truncated TOC")
    return toc_bytes


def _reader(
    f: BinaryIO, size: int, fmt: LayerFormat, toc_offset: int, payload_end: int, toc_bytes: bytes,
    external: bool = False,
) -> EstargzReader:  # fmt: skip
    try:
        doc = json.loads(toc_bytes)
    except (ValueError, UnicodeDecodeError) as e:
        raise EstargzError(f"invalid eStargz TOC JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("entries"), list):
        raise EstargzError("invalid eStargz TOC: expected version 1 with an entries list")
    entries = tuple(TOCEntry.from_json(e) for e in doc["entries"])
    digest = "sha256:" + hashlib.sha256(toc_bytes).hexdigest()
    return EstargzReader(f, size, toc_offset, digest, entries, toc_bytes, fmt, payload_end, external)


@dataclass(frozen=True)
class Verified:
    """What reading a whole blob measured: the plain tar's digest and size (what a runtime that
    knows nothing of eStargz unpacks) and how many chunks were checked against their digests."""

    diff_id: str
    uncompressed_size: int
    chunks: int


@dataclass
class EstargzReader:
    """An opened eStargz (or zstd:chunked) blob. `entries` are the TOC entries in order, chunks
    included. `payload_end`: where the members holding the tar end (the TOC member, the TOC's
    skippable frame or the footer start there)."""

    file: BinaryIO
    size: int
    toc_offset: int
    toc_digest: str
    entries: tuple[TOCEntry, ...]
    toc_json: bytes = field(default=b"", repr=False)  # the TOC exactly as stored
    format: LayerFormat = LayerFormat.ESTARGZ
    payload_end: int = -1
    external_toc: bool = False
    zstd_checksum: str | None = None  # zstd:chunked: sha256 of the compressed TOC
    zstd_position: str | None = None  # zstd:chunked: offset:length:uncompressed length:type

    def __post_init__(self) -> None:
        if self.payload_end < 0:
            self.payload_end = self.toc_offset

    @property
    def kind(self) -> str:
        """What `image check` calls the format."""
        if self.external_toc:
            return "estargz-external-toc"
        return self.format.value

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
        self._verify_footer()
        stream = _Members(
            self.file, self.payload_end if self._toc_outside_tar else self.size - FOOTER_SIZE, self.format
        )
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
        if self._toc_outside_tar:
            _zeros_to_end(stream)
        else:
            self._verify_tail(stream)
        return Verified(
            diff_id="sha256:" + stream.hash.hexdigest(),
            uncompressed_size=stream.total,
            chunks=sum(1 for e in self.entries if e.chunk_digest),
        )

    @property
    def _toc_outside_tar(self) -> bool:
        """zstd:chunked and external-TOC blobs hold no TOC entry (and no end-of-archive) in the tar."""
        return self.external_toc or self.format is LayerFormat.ZSTD_CHUNKED

    def _verify_footer(self) -> None:
        if self.external_toc:
            return  # recognised by its exact bytes
        if self.format is LayerFormat.ZSTD_CHUNKED:
            clen = self.size - ZSTD_FOOTER_SIZE - self.toc_offset
            self.file.seek(self.size - ZSTD_FOOTER_SIZE)
            if self.file.read(ZSTD_FOOTER_SIZE) != encode_zstd_footer(
                self.toc_offset, clen, len(self.toc_json)
            ):
                raise EstargzError("invalid zstd:chunked blob: the footer is not the canonical one")
            return
        self.file.seek(self.size - FOOTER_SIZE)
        if not _footer_matches(self.file.read(FOOTER_SIZE), self.toc_offset):
            raise EstargzError("invalid eStargz blob: the footer is not the canonical empty gzip member")

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
        if not 0 <= c.offset < self.payload_end or want <= 0:
            raise EstargzError(f"invalid TOC: bad offset or chunk bounds for {c.name!r}")
        self.file.seek(c.offset)
        d = decompressor(self.format)
        out = bytearray()
        remaining = self.payload_end - c.offset
        while len(out) < c.inner_offset + want and remaining > 0 and not d.eof:
            data = self.file.read(min(remaining, 1 << 20))
            remaining -= len(data)
            try:
                out += d.decompress(data, c.inner_offset + want - len(out))
                while d.unconsumed_tail and len(out) < c.inner_offset + want:
                    out += d.decompress(d.unconsumed_tail, c.inner_offset + want - len(out))
            except DECODE_ERRORS as e:
                raise EstargzError(
                    f"corrupt {_MEMBER[self.format]} at offset {c.offset} ({c.name!r}): {e}"
                ) from None
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
        if c.inner_offset < 0 or c.offset not in stream.member_starts(stream.pos - c.inner_offset):
            raise EstargzError(
                f"the chunk of {name!r} at {c.chunk_offset} is not {c.inner_offset} bytes into "
                f"the member at {c.offset}"
            )
        chunk_hash = hashlib.sha256()
        for data in _pieces(stream, end - c.chunk_offset, name):
            chunk_hash.update(data)
            file_hash.update(data)
        if "sha256:" + chunk_hash.hexdigest() != c.chunk_digest:
            raise EstargzError(f"chunk digest mismatch in {name!r} at offset {c.chunk_offset}")
    if chunks[0].digest and "sha256:" + file_hash.hexdigest() != chunks[0].digest:
        raise EstargzError(f"content digest mismatch in {name!r}")


def _zeros_to_end(stream: _Members) -> None:
    """After the last entry of a tar without a TOC entry: nothing but zero blocks (or nothing)."""
    while data := stream.read(1 << 20):
        if data.count(0) != len(data):
            raise EstargzError("invalid blob: data after the last entry the TOC lists")


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
    """The members (gzip members or zstd frames) of `f` from offset 0 to `end`, decompressed in
    sequence (what a plain tar.gz or tar.zst reader sees), remembering at which uncompressed offsets
    members start. Each member's CRC (checksum) and size are checked; memory stays bounded whatever
    the members hold."""

    def __init__(self, f: BinaryIO, end: int, fmt: LayerFormat = LayerFormat.ESTARGZ) -> None:
        self._f = f
        self._end = end
        self._fmt = fmt
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
            self._d = decompressor(self._fmt)
            self._starts.setdefault(self.pos + len(self._out), []).append(self._cpos)
        try:
            data = self._d.decompress(self._input, 1 << 20)
        except DECODE_ERRORS as e:
            raise EstargzError(f"corrupt {_MEMBER[self._fmt]} after offset {self._cpos}: {e}") from None
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
