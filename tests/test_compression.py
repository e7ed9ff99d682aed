import gzip
import io

import pytest
import zstandard

from ctr_remote.compression import Compression, CorruptLayerError, open_tar_stream

DATA = b"layer bytes " * 50_000


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        return self._b.readinto(b)


@pytest.mark.parametrize(
    ("blob", "kind"),
    [
        (DATA, Compression.NONE),
        (gzip.compress(DATA), Compression.GZIP),
        (gzip.compress(DATA[:700]) + gzip.compress(DATA[700:]), Compression.GZIP),
        (zstandard.ZstdCompressor().compress(DATA), Compression.ZSTD),
    ],
)
def test_detect_and_decompress_unseekable(blob: bytes, kind: Compression) -> None:
    stream, detected = open_tar_stream(_Unseekable(blob))
    assert detected is kind
    assert stream.read() == DATA


@pytest.mark.parametrize(
    "blob",
    [gzip.compress(DATA)[:-50], zstandard.ZstdCompressor().compress(DATA)[:-50]],
)
def test_truncated_stream_is_a_clear_error(blob: bytes) -> None:
    stream, _ = open_tar_stream(io.BytesIO(blob), what="layer sha256:abc")
    with pytest.raises(CorruptLayerError, match="layer sha256:abc: corrupt"):
        stream.read()
