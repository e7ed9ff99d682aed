"""Layer compression: detect it from magic bytes and open a decompressed stream.

Every consumer of layer blobs (the eStargz writer, the layer unpacker, the reader) goes through
`open_tar_stream`, so a layer is sniffed and decompressed the same way everywhere.
"""

from __future__ import annotations

import enum
import hashlib
import io
from typing import BinaryIO

import zstandard
from zlib_ng import gzip_ng_threaded, zlib_ng

from ctr_remote.errors import CtrRemoteError
from ctr_remote.layer.gzip_helper import GzipHelper

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class CorruptLayerError(CtrRemoteError):
    """A layer's compressed stream could not be decoded."""


def detect(head: bytes) -> Compression:
    """Compression of a stream that begins with `head` (at least 4 bytes when available)."""
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


class _Prefixed(io.RawIOBase):
    """A stream that yields `head` and then the rest of `rest`: lets us sniff unseekable input."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]  # io passes a memoryview
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


# Compressed bytes handed to the zstd decoder per call. Its output per call is unbounded, and an
# RLE block expands 4 bytes to 128 KiB: 2 KiB of input can give at most ~64 MiB, however hostile.
_ZSTD_PIECE = 2 << 10


class _ZstdReader(io.RawIOBase):
    """Decodes concatenated zstd frames; unlike zstandard's stream_reader, a truncated frame is an
    error rather than a silent short read. Input goes in small pieces, so a zstd bomb (kilobytes
    that decode to gigabytes) never sits in memory whole."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._input = b""
        self._in_pos = 0
        self._pending = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]  # io passes a memoryview
        while self._pos >= len(self._pending):
            self._pending, self._pos = b"", 0
            if self._in_pos >= len(self._input):
                self._input, self._in_pos = self._raw.read(1 << 20), 0
                if not self._input:
                    if self._in_frame:
                        raise EOFError("stream ended inside a zstd frame")
                    return 0
            piece = self._input[self._in_pos : self._in_pos + _ZSTD_PIECE]
            self._in_frame = True
            self._pending = self._obj.decompress(piece)
            self._in_pos += len(piece)
            if self._obj.eof:  # the frame ended inside this piece: the rest starts the next one
                self._in_pos -= len(self._obj.unused_data)
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
        n = min(len(b), len(self._pending) - self._pos)
        b[:n] = self._pending[self._pos : self._pos + n]
        self._pos += n
        return n


class _Checked(io.RawIOBase):
    """Turns a decompressor's low-level exceptions into one CorruptLayerError naming the layer."""

    def __init__(self, inner: BinaryIO, what: str, kind: Compression) -> None:
        self._inner = inner
        self._what = what
        self._kind = kind

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]  # io passes a memoryview
        try:
            data = self._inner.read(len(b))
        except (OSError, EOFError, zlib_ng.error, zstandard.ZstdError) as e:  # type: ignore[misc]  # the stub says zlib_ng.error is an instance
            raise CorruptLayerError(f"{self._what}: corrupt {self._kind.value} stream: {e}") from None
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def open_tar_stream(
    raw: BinaryIO, what: str = "layer", gzip_helper: GzipHelper | None = None
) -> tuple[BinaryIO, Compression]:
    """Sniff `raw` and return (uncompressed tar stream, detected compression).

    `raw` may be unseekable. `what` names the input in error messages. `gzip_helper`: decompress
    gzip with that program instead (`--estargz-gzip-helper`).
    """
    head = raw.read(4)
    kind = detect(head)
    prefixed = io.BufferedReader(_Prefixed(head, raw), buffer_size=1 << 20)
    if kind is Compression.NONE:
        return prefixed, kind
    inner: BinaryIO
    if kind is Compression.GZIP and gzip_helper is not None:
        inner = gzip_helper.open(prefixed, what)
    elif kind is Compression.GZIP:
        # Decompression in a helper thread overlaps with whatever consumes the tar.
        inner = gzip_ng_threaded.open(prefixed, "rb", threads=1)
    else:
        inner = _ZstdReader(prefixed)  # type: ignore[assignment]
    return io.BufferedReader(_Checked(inner, what, kind), buffer_size=1 << 20), kind


def uncompress(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Write the plain tar of the layer blob `src` to `dst`; its sha256 (the layer's new digest and
    its diff ID alike) and size."""
    stream, _ = open_tar_stream(src, "layer")
    h, size = hashlib.sha256(), 0
    with stream:
        while data := stream.read(1 << 20):
            dst.write(data)
            h.update(data)
            size += len(data)
    return "sha256:" + h.hexdigest(), size
