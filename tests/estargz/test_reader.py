"""The eStargz reader: accepts what upstream writes, and rejects every kind of damage."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import pytest

from ctr_remote.estargz import EstargzError, is_estargz, open_estargz
from tests.estargz.layers import (
    SMALL_CHUNK,
    Entry,
    convert,
    d,
    edge_case_entries,
    f,
    make_tar,
    pattern,
    tar_contents,
    upstream_layer,
)

pytestmark = pytest.mark.unit


def test_reads_and_verifies_upstream_blobs(oracle_gen: Path, tmp_path: Path) -> None:
    layer = make_tar(edge_case_entries())
    blob, toc_digest = upstream_layer(oracle_gen, tmp_path, layer, ["etc/passwd"])
    with blob.open("rb") as fh:
        assert is_estargz(fh)
        reader = open_estargz(fh)
        assert reader.toc_digest == toc_digest
        reader.verify(toc_digest)
        for name, data in tar_contents(layer).items():
            if data:
                assert reader.read_file(name) == data


@pytest.fixture
def blob(oracle, tmp_path: Path) -> tuple[bytes, str]:
    """A good blob of ours (the oracle agrees) for the tests to damage."""
    path, result = convert(tmp_path, make_tar(edge_case_entries()), chunk_size=SMALL_CHUNK)
    oracle.check_blob(path, result.toc_digest)
    return path.read_bytes(), result.toc_digest


def test_wrong_toc_digest(blob: tuple[bytes, str]) -> None:
    data, _ = blob
    with pytest.raises(EstargzError, match="TOC digest mismatch: expected sha256:00"):
        open_estargz(io.BytesIO(data)).verify("sha256:" + "0" * 64)


def test_a_flipped_byte_in_any_payload_member_is_caught(blob: tuple[bytes, str]) -> None:
    data, toc_digest = blob
    reader = open_estargz(io.BytesIO(data))
    payload_members = sorted({e.offset for e in reader.entries if e.offset})
    # Flip the first deflate byte of every payload member (bytes past a chunk's end may encode only
    # padding and headers, which no chunk digest covers).
    for start in payload_members:
        broken = bytearray(data)
        broken[start + 10] ^= 0xFF
        with pytest.raises(EstargzError, match=r"mismatch|corrupt gzip|truncated"):
            open_estargz(io.BytesIO(bytes(broken))).verify(toc_digest)


def test_toc_tampering_is_caught(blob: tuple[bytes, str]) -> None:
    data, toc_digest = blob
    reader = open_estargz(io.BytesIO(data))
    broken = bytearray(data)
    broken[reader.toc_offset + 30] ^= 0xFF
    with pytest.raises(EstargzError):
        open_estargz(io.BytesIO(bytes(broken))).verify(toc_digest)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:-1], "no eStargz footer"),
        (lambda d: d[:-51] + d[-51:].replace(b"STARGZ", b"STARGY"), "no eStargz footer"),
        (lambda d: d[:-51] + d[-51:].replace(d[-51:][16:32], b"%016x" % (len(d) + 5)), "outside the blob"),
        (lambda d: d[:-51] + d[-51:].replace(d[-51:][16:32], b"%016x" % 0), "trailing bytes after the TOC"),
        (lambda d: gzip.compress(b"plain"), "no eStargz footer"),
    ],
    ids=["truncated", "bad-magic", "offset-past-end", "offset-not-toc", "plain-gzip"],
)
def test_not_estargz(blob: tuple[bytes, str], mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    data, _ = blob
    with pytest.raises(EstargzError, match=message):
        open_estargz(io.BytesIO(mangle(data)))


def _members(blob: bytes) -> list[int]:
    """Compressed offsets of the blob's gzip members, found by decompressing it in sequence."""
    starts, pos = [], 0
    while pos < len(blob):
        starts.append(pos)
        d = zlib.decompressobj(31)
        d.decompress(blob[pos:])
        assert d.eof
        pos = len(blob) - len(d.unused_data)
    return starts


def _gunzip_all(blob: bytes) -> bytes | None:
    out, rest = b"", blob
    try:
        while rest:
            d = zlib.decompressobj(31)
            out += d.decompress(rest)
            if not d.eof:
                return None
            rest = d.unused_data
    except zlib.error:
        return None
    return out


FLIP_LAYER = [
    d("a/"),
    f("a/x", b"hello"),
    f("a/big", pattern(300, 1)),
    Entry("a/l", tarfile.SYMTYPE, linkname="x"),
    Entry("a/h", tarfile.LNKTYPE, linkname="a/x"),
    Entry("a/fifo", tarfile.FIFOTYPE),
    f("e"),
    f("x", b"xattrs", pax={"SCHILY.xattr.user.k": "v"}),
]


@pytest.mark.parametrize("writer", ["ours", "upstream"])
def test_every_byte_flip_fails_verify_unless_content_preserving(
    oracle, oracle_gen: Path, tmp_path: Path, writer: str
) -> None:
    """Like upstream's TestEveryByteFlip: a blob with any one byte XOR-ed with 0xff must fail
    `verify`, unless the byte is a gzip header's MTIME/XFL/OS field or the flipped blob decompresses
    to exactly the same stream (an unused Huffman code length). Before the reader decompressed the
    whole blob, flips in member trailers (CRC), in tar headers after a chunk and in the footer's
    deflate block passed."""
    layer = make_tar(FLIP_LAYER)
    if writer == "ours":
        path, result = convert(tmp_path, layer, chunk_size=128, prioritized_files=["a/h", "e"])
        oracle.check_blob(path, result.toc_digest)
        blob, toc_digest = path.read_bytes(), result.toc_digest
    else:
        path, toc_digest = upstream_layer(oracle_gen, tmp_path, layer, ["a/h", "e"])
        blob = path.read_bytes()
    open_estargz(io.BytesIO(blob)).verify(toc_digest)
    content = _gunzip_all(blob)
    header_fields = {start + i for start in _members(blob) for i in range(4, 10)}
    passed = []
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0xFF
        try:
            open_estargz(io.BytesIO(bytes(flipped))).verify(toc_digest)
        except EstargzError as e:
            assert "\n" not in str(e)
            continue
        if i not in header_fields and _gunzip_all(bytes(flipped)) != content:
            passed.append(i)
    assert passed == [], f"flips at {passed} change the layer but pass verify"


def test_verify_streams_large_chunks(oracle, tmp_path: Path) -> None:
    """A chunk is hashed piece by piece: a TOC may claim (or a writer may choose) chunks of any size."""
    path, result = convert(tmp_path, make_tar([f("zeros", bytes(48 << 20))]), chunk_size=1 << 30)
    oracle.check_blob(path, result.toc_digest)
    with path.open("rb") as fh:
        reader = open_estargz(fh)
        tracemalloc.start()
        try:
            reader.verify(result.toc_digest)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, f"verify peaked at {peak >> 20} MiB for one 48 MiB chunk"
