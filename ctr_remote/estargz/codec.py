"""The compressions a blob's members are written and read in: gzip (eStargz) and zstd (zstd:chunked).

A member is one gzip member or one zstd frame: a reader decompresses it on its own from its
compressed offset. The writer compresses whole members in its pool (`compress`), or, with a min
chunk size, one member at a time as it goes (`stream`: it must know the compressed size so far
before each chunk). Readers walk members with `decompressor`.
"""

from __future__ import annotations

import threading
import zlib
from typing import Protocol, cast

import deflate
import zstandard
from zlib_ng import zlib_ng

from ctr_remote.estargz.options import LayerFormat

_GZIP_WBITS = 31  # deflate with a gzip header and trailer: one complete member
_SMALL_MEMBER = 4 << 10  # below this, zlib-ng compresses better than libdeflate (see GzipCodec)


class MemberStream(Protocol):
    """One member being written: `flush` makes everything written so far decodable (and countable)."""

    def write(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...
    def finish(self) -> bytes: ...


class Decompressor(Protocol):
    """zlib's decompressobj interface, which zstandard's follows: one member, then `eof`."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = 0) -> bytes: ...


class Codec(Protocol):
    format: LayerFormat

    def compress(self, member: list[bytes]) -> bytes: ...
    def stream(self) -> MemberStream: ...


class GzipCodec:
    """libdeflate, at the same level, takes about a quarter less CPU than zlib-ng and writes slightly
    smaller output, except on tiny inputs (a few tar headers and a small file), where zlib-ng's is
    smaller. libdeflate needs the whole input at once, which a member (a chunk plus headers) is."""

    format = LayerFormat.ESTARGZ

    def __init__(self, level: int) -> None:
        self.level = level

    def compress(self, member: list[bytes]) -> bytes:
        data = b"".join(member)
        if len(data) < _SMALL_MEMBER:
            return zlib_ng.compress(data, self.level, _GZIP_WBITS)
        # A bytearray, which every consumer (file writes, len, hashing) takes as bytes: no copy.
        return cast(bytes, deflate.gzip_compress(data, self.level))

    def stream(self) -> MemberStream:
        return _GzipStream(self.level)


class _GzipStream:
    def __init__(self, level: int) -> None:
        self._z = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _GZIP_WBITS)

    def write(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush(zlib_ng.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib_ng.Z_FINISH)


class ZstdCodec:
    """zstd frames with a content checksum, as upstream's encoder (klauspost's) writes them.
    zstandard's compressors are not thread-safe: each pool thread keeps its own."""

    format = LayerFormat.ZSTD_CHUNKED

    def __init__(self, level: int) -> None:
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        return c

    def compress(self, member: list[bytes]) -> bytes:
        return self._compressor().compress(b"".join(member))

    def stream(self) -> MemberStream:
        return _ZstdStream(self._compressor().compressobj())


class _ZstdStream:
    def __init__(self, obj: zstandard.ZstdCompressionObj) -> None:
        self._obj = obj

    def write(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def codec_for(fmt: LayerFormat, level: int) -> Codec:
    return GzipCodec(level) if fmt is LayerFormat.ESTARGZ else ZstdCodec(level)


# Compressed bytes handed to the zstd decoder per call: its output per call is unbounded, and an
# RLE block expands 4 bytes to 128 KiB, so 2 KiB of input can give at most ~64 MiB.
ZSTD_PIECE = 2 << 10


class _ZstdMember:
    """A zstd frame decoder with zlib's `decompress(data, max_length)` contract, so readers walk
    zstd frames with the code that walks gzip members: input not fed yet is handed back in
    `unconsumed_tail` (to pass again), what follows the frame in `unused_data`. Input goes in
    ZSTD_PIECE pieces until `max_length` is reached, so the output may pass it by one piece's
    worth: memory stays bounded either way."""

    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._after = b""  # input that followed the frame's end
        self.unconsumed_tail = b""

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data + self._after if self._d.eof else b""

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        out: list[bytes] = []
        n = i = 0
        while i < len(data) and not self._d.eof and (not max_length or n < max_length):
            piece = self._d.decompress(data[i : i + ZSTD_PIECE])
            out.append(piece)
            n += len(piece)
            i += ZSTD_PIECE
        if self._d.eof:
            self._after += data[i:]
            self.unconsumed_tail = b""
        else:
            self.unconsumed_tail = data[i:]
        return b"".join(out)


def decompressor(fmt: LayerFormat) -> Decompressor:
    """A fresh decoder for one member of a blob in `fmt`; its errors are in DECODE_ERRORS."""
    if fmt is LayerFormat.ESTARGZ:
        return cast(Decompressor, zlib_ng.decompressobj(_GZIP_WBITS))  # 1.8x the stdlib's speed
    return _ZstdMember()


# zlib_ng's stub types its error as an instance; it is a class (not a subclass of zlib.error).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    zlib.error,
    cast(type[Exception], zlib_ng.error),
    zstandard.ZstdError,
)
