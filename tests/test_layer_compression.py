import gzip
import io
import subprocess
import sys

import pytest
import zstandard

from ctr_remote.layer.compression import Compression, CorruptLayerError, open_tar_stream
from tests.conftest import ROOT
from tests.helpers.streams import OneWay

pytestmark = pytest.mark.unit

DATA = b"layer bytes " * 50_000


@pytest.mark.parametrize(
    ("blob", "kind"),
    [
        (DATA, Compression.NONE),
        (gzip.compress(DATA), Compression.GZIP),
        (gzip.compress(DATA[:700]) + gzip.compress(DATA[700:]), Compression.GZIP),
        (zstandard.ZstdCompressor().compress(DATA), Compression.ZSTD),
        (
            zstandard.ZstdCompressor().compress(DATA[:700]) + zstandard.ZstdCompressor().compress(DATA[700:]),
            Compression.ZSTD,
        ),
    ],
)
def test_detect_and_decompress_unseekable(blob: bytes, kind: Compression) -> None:
    stream, detected = open_tar_stream(OneWay(blob))
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


_BOMB = """
import io, sys, zlib, zstandard
from ctr_remote.layer.compression import open_tar_stream

if sys.argv[1] == "zstd":
    z = zstandard.ZstdCompressor(level=1).compressobj()
    blob = b"".join([z.compress(bytes(1 << 20)) for _ in range(512)] + [z.flush()])
else:
    g = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = b"".join([g.compress(bytes(1 << 20)) for _ in range(512)] + [g.flush()])
stream, _ = open_tar_stream(io.BytesIO(blob))
n = 0
while data := stream.read(1 << 20):
    n += len(data)
print(len(blob), n, int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]))
"""


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_decompression_bomb_is_streamed_in_bounded_memory(kind: str) -> None:
    """512 MiB of zeros from tens of kilobytes of zstd (RLE blocks) used to be decoded in one call,
    all of it in memory at once."""
    p = subprocess.run(
        [sys.executable, "-c", _BOMB, kind], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    compressed, decompressed, peak_kib = map(int, p.stdout.split())
    assert decompressed == 512 << 20 and compressed < 1 << 20
    assert peak_kib < 150 << 10, f"peak RSS {peak_kib >> 10} MiB"
