"""The eStargz reader: accepts what upstream writes, and rejects every kind of damage."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from ctr_remote.estargz import EstargzError, is_estargz, open_estargz
from tests.estargz.layers import (
    SMALL_CHUNK,
    convert,
    edge_case_entries,
    make_tar,
    tar_contents,
    upstream_layer,
)


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
def blob(tmp_path: Path) -> tuple[bytes, str]:
    path, result = convert(tmp_path, make_tar(edge_case_entries()), chunk_size=SMALL_CHUNK)
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
