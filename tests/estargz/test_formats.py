"""The formats beside gzip eStargz: zstd:chunked, min chunk size (innerOffset), external TOC.

Every blob goes through the oracle (upstream v0.14.3's reader; v0.12's too where it reads the
format) and our own reader; entry order and grouping are compared with upstream's builder on the
same input (`estargz-check-gen`)."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import tarfile
from pathlib import Path

import pytest
import zstandard

from ctr_remote.check import blob_facts
from ctr_remote.estargz import (
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
    BuildOptions,
    EstargzError,
    LayerFormat,
    blob_kind,
    open_estargz,
)
from ctr_remote.estargz.toc import EXTERNAL_FOOTER_SIZE, TOC_NAME
from tests.conftest import Oracle
from tests.estargz.layers import (
    SMALL_CHUNK,
    check_converted,
    convert,
    edge_case_entries,
    f,
    make_tar,
    pattern,
    upstream_blob,
)

ZSTD = LayerFormat.ZSTD_CHUNKED
PRIORITIZED = ["etc/passwd", "usr/bin/many", "xattr"]


@pytest.fixture(scope="module")
def layer() -> bytes:
    return make_tar(edge_case_entries())


def names(path: Path, external_toc: bytes | None = None) -> list[str]:
    with path.open("rb") as fh:
        return [e.name for e in open_estargz(fh, external_toc).entries if e.type != "chunk"]


def groups(path: Path) -> list[list[tuple[str, int]]]:
    """The chunks of each member, in order: (file, chunk offset) by the member's compressed offset."""
    with path.open("rb") as fh:
        entries = open_estargz(fh).entries
    by_member: dict[int, list[tuple[str, int]]] = {}
    for e in entries:
        if e.type == "chunk" or (e.type == "reg" and e.size):
            by_member.setdefault(e.offset, []).append((e.name.removeprefix("./").lstrip("/"), e.chunk_offset))
    return list(by_member.values())


def read_all(path: Path, toc_digest: str, external_toc: bytes | None = None) -> None:
    """Our reader: the whole blob verified, every file read back through its chunks."""
    with path.open("rb") as fh:
        reader = open_estargz(fh, external_toc)
        reader.verify(toc_digest)
        for e in reader.entries:
            if e.type == "reg" and e.size:
                assert len(reader.read_file(e.name)) == e.size


# -- zstd:chunked


def test_zstd_chunked_passes_both_readers_with_upstreams_annotations(
    oracle: Oracle, layer: bytes, tmp_path: Path
) -> None:
    path, result = convert(
        tmp_path, layer, format=ZSTD, chunk_size=SMALL_CHUNK, prioritized_files=PRIORITIZED
    )
    report = oracle.check_blob(path, result.toc_digest)  # v0.14.3 and v0.12
    assert report["format"] == "zstd:chunked" and report["library_verify"] == "VerifyTOC"
    assert report["landmark"] == "prefetch" and report["prioritized"][:2] == ["etc", "etc/passwd"]
    assert (report["diff_id"], report["uncompressed_size"]) == (result.diff_id, result.uncompressed_size)
    # Upstream's names (the snapshotter) and containers/storage's, same values, as the oracle measures.
    for name in ZSTD_CHECKSUM_ANNOTATIONS:
        assert result.annotations[name] == report["zstd_manifest_checksum"]
    for name in ZSTD_POSITION_ANNOTATIONS:
        assert result.annotations[name] == report["zstd_manifest_position"]
    # zstd frames all through: a plain zstd reader sees the tar, without TOC entry or end blocks.
    plain = zstandard.ZstdDecompressor().decompressobj()
    data = path.read_bytes()
    with path.open("rb") as fh:
        reader = open_estargz(fh)
    tar = b""
    rest = data[: reader.payload_end]
    while rest:
        plain = zstandard.ZstdDecompressor().decompressobj()
        tar += plain.decompress(rest)
        rest = plain.unused_data
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == result.diff_id
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        assert TOC_NAME not in tf.getnames()
    read_all(path, result.toc_digest)


def test_zstd_chunked_entry_order_is_upstreams(oracle_gen: Path, layer: bytes, tmp_path: Path) -> None:
    mode = f"zstdchunked+chunk={SMALL_CHUNK}:{','.join(PRIORITIZED)}"
    upstream, annotations = upstream_blob(oracle_gen, tmp_path, layer, mode)
    ours, _ = convert(tmp_path, layer, format=ZSTD, chunk_size=SMALL_CHUNK, prioritized_files=PRIORITIZED)
    strip = [n.removeprefix("./").lstrip("/").rstrip("/") for n in names(upstream)]
    assert [n.removeprefix("./").lstrip("/").rstrip("/") for n in names(ours)] == strip
    assert groups(ours) == groups(upstream)
    # Upstream's diff ID and size are those of the same tar-without-TOC our blob decompresses to
    # (its builder re-encodes headers, ours copies them, so only the size is comparable here).
    assert int(annotations[UNCOMPRESSED_SIZE_ANNOTATION]) > 0
    assert ZSTD_CHECKSUM_ANNOTATIONS[0] in annotations
    # Our reader verifies upstream's zstd:chunked blob too.
    read_all(upstream, annotations[TOC_DIGEST_ANNOTATION])


def test_zstd_chunked_is_reproducible_at_any_thread_count(
    oracle: Oracle, layer: bytes, tmp_path: Path
) -> None:
    big = make_tar([*edge_case_entries(), f("big", pattern(3 << 20, 7)), f("big2", pattern(2 << 20, 8))])
    blobs = [convert(tmp_path, big, f"z{w}", format=ZSTD, chunk_size=64 << 10, workers=w) for w in (1, 2, 5)]
    assert len({(r.digest, r.toc_digest, r.diff_id) for _, r in blobs}) == 1
    check_converted(oracle, *blobs[0])  # the same bytes at every thread count


def test_zstd_level_is_used_and_checked(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    data = make_tar([f("text", pattern(1 << 20, 3))])
    blobs = {lvl: convert(tmp_path, data, f"l{lvl}", format=ZSTD, compression_level=lvl) for lvl in (1, 19)}
    for blob in blobs.values():
        check_converted(oracle, *blob)
    sizes = {lvl: result.size for lvl, (_, result) in blobs.items()}
    assert sizes[19] < sizes[1]
    assert BuildOptions(format=ZSTD).level == 3 and BuildOptions().level == 9
    with pytest.raises(EstargzError, match=r"zstd compression level must be 1\.\.22, not 23"):
        BuildOptions(format=ZSTD, compression_level=23)


# -- min chunk size


@pytest.mark.parametrize("fmt", [LayerFormat.ESTARGZ, ZSTD], ids=["gzip", "zstd"])
@pytest.mark.parametrize(
    ("min_chunk", "prioritized"), [(1000, PRIORITIZED), (8192, None), (65536, PRIORITIZED)]
)
def test_min_chunk_size_groups_entries_as_upstream(
    oracle: Oracle,
    oracle_gen: Path,
    layer: bytes,
    tmp_path: Path,
    fmt: LayerFormat,
    min_chunk: int,
    prioritized: list[str] | None,
) -> None:
    ours, result = convert(
        tmp_path,
        layer,
        format=fmt,
        chunk_size=SMALL_CHUNK,
        min_chunk_size=min_chunk,
        prioritized_files=prioritized,
    )
    # v0.12 reads innerOffset chunks from their member's start: only v0.14.3 can read these.
    report = oracle.check_blob(ours, result.toc_digest, older_reader=False)
    assert report["inner_offset_chunks"] > 0
    kind = "estargz" if fmt is LayerFormat.ESTARGZ else "zstdchunked"
    mode = f"{kind}+chunk={SMALL_CHUNK}+minchunk={min_chunk}" + (
        ":" + ",".join(prioritized) if prioritized else ""
    )
    upstream, _ = upstream_blob(oracle_gen, tmp_path, layer, mode)
    assert groups(ours) == groups(upstream)
    read_all(ours, result.toc_digest)


def test_min_chunk_size_members_close_at_the_threshold(oracle: Oracle, tmp_path: Path) -> None:
    """Upstream's rule on a layer of many small files and a few chunked ones: a member that is not
    the last and not closed for a landmark holds at least min_chunk_size compressed bytes, and a
    landmark always starts its own member (the prefetch boundary stays exact)."""
    entries = [f(f"small/{i:03}", pattern(300 + 37 * i, i)) for i in range(150)]
    entries += [f("chunked", pattern(5 * SMALL_CHUNK + 11, 999))]
    data = make_tar(entries)
    prio = ["small/010", "small/020"]
    path, result = convert(
        tmp_path, data, chunk_size=SMALL_CHUNK, min_chunk_size=4096, prioritized_files=prio
    )
    oracle.check_blob(path, result.toc_digest, older_reader=False)
    with path.open("rb") as fh:
        reader = open_estargz(fh)
    chunks = [e for e in reader.entries if e.type == "chunk" or (e.type == "reg" and e.size)]
    starts = sorted({e.offset for e in chunks})
    landmark = next(e for e in chunks if e.name == ".prefetch.landmark")
    assert landmark.inner_offset == 0 and landmark.offset in starts
    for a, b in itertools.pairwise(starts):
        opened_by = next(e for e in chunks if e.offset == b and e.inner_offset == 0)
        if opened_by.name != ".prefetch.landmark":
            assert b - a >= 4096, (a, b)
    assert len(starts) < len(chunks) / 2  # small files do share members
    sizes = {w: convert(tmp_path, data, f"w{w}", chunk_size=SMALL_CHUNK, min_chunk_size=4096,
                        prioritized_files=prio, workers=w)[1].digest for w in (1, 3)}  # fmt: skip
    assert sizes[1] == sizes[3] == result.digest


def test_upstreams_min_chunk_blobs_verify_with_our_reader(
    oracle_gen: Path, layer: bytes, tmp_path: Path
) -> None:
    for mode in (
        f"estargz+chunk={SMALL_CHUNK}+minchunk=1000",
        f"zstdchunked+chunk={SMALL_CHUNK}+minchunk=1000",
    ):
        path, annotations = upstream_blob(oracle_gen, tmp_path, layer, mode)
        read_all(path, annotations[TOC_DIGEST_ANNOTATION])


# -- external TOC


def test_external_toc_blob_and_toc_blob_pass_upstreams_externaltoc_reader(
    oracle: Oracle, layer: bytes, tmp_path: Path
) -> None:
    path, result = convert(
        tmp_path, layer, external_toc=True, chunk_size=SMALL_CHUNK, prioritized_files=PRIORITIZED
    )
    assert result.external_toc is not None
    toc_blob = tmp_path / "toc.gz"
    toc_blob.write_bytes(result.external_toc)
    report = oracle.check_blob(path, result.toc_digest, older_reader=False, external_toc=toc_blob)
    assert report["library_verify"] == "VerifyTOC" and report["footer_size"] == EXTERNAL_FOOTER_SIZE
    assert report["landmark"] == "prefetch"
    # The TOC blob: one gzip member, a tar of stargz.index.json alone, whose bytes the digest names.
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(result.external_toc))) as tf:
        (member,) = tf.getmembers()
        assert member.name == TOC_NAME
        toc = tf.extractfile(member).read()  # type: ignore[union-attr]
    assert "sha256:" + hashlib.sha256(toc).hexdigest() == result.toc_digest
    # The layer: no TOC in its tar and no end-of-archive blocks, as upstream writes it.
    plain = gzip.decompress(path.read_bytes())
    assert TOC_NAME.encode() not in plain and "sha256:" + hashlib.sha256(plain).hexdigest() == result.diff_id
    read_all(path, result.toc_digest, result.external_toc)
    with path.open("rb") as fh:
        assert blob_kind(fh) == "estargz-external-toc"
        with pytest.raises(EstargzError, match="TOC is external"):
            open_estargz(fh)


def test_external_toc_with_min_chunk_size(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    path, result = convert(tmp_path, layer, external_toc=True, chunk_size=SMALL_CHUNK, min_chunk_size=2000)
    toc_blob = tmp_path / "toc.gz"
    toc_blob.write_bytes(result.external_toc or b"")
    report = oracle.check_blob(path, result.toc_digest, older_reader=False, external_toc=toc_blob)
    assert report["inner_offset_chunks"] > 0


def test_external_toc_is_gzip_only() -> None:
    with pytest.raises(EstargzError, match="only defined for gzip"):
        BuildOptions(format=ZSTD, external_toc=True)


# -- image check's view


def test_check_reports_each_format(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    cases = {
        "estargz": {},
        "zstd:chunked": {"format": ZSTD},
        "estargz-external-toc": {"external_toc": True},
    }
    for kind, opts in cases.items():
        path, result = convert(tmp_path, layer, kind.replace(":", "-"), min_chunk_size=1000, **opts)
        check_converted(oracle, path, result)
        facts = blob_facts(path, result.external_toc)
        assert (facts.format, facts.problem, facts.toc_digest) == (kind, None, result.toc_digest)
        assert facts.diff_id == result.diff_id
        if kind == "zstd:chunked":
            assert facts.zstd_checksum == result.annotations[ZSTD_CHECKSUM_ANNOTATIONS[0]]
    # Without its TOC blob, an external-TOC layer is a problem, not "not eStargz".
    facts = blob_facts(path)
    assert facts.format == "estargz-external-toc" and "TOC is external" in (facts.problem or "")


@pytest.mark.parametrize("min_chunk", [0, 100_000])
def test_zstd_chunked_frames_larger_than_a_read_verify(
    oracle: Oracle, tmp_path: Path, min_chunk: int
) -> None:
    """Frames of several MiB decode across the reader's 1 MiB reads (chunks of 4 MiB)."""
    big = pattern(5 << 20, 1)
    data = make_tar([f("big", big), f("mid", pattern(2 << 20, 2)), f("small", b"x" * 100)])
    path, result = convert(tmp_path, data, format=ZSTD, min_chunk_size=min_chunk)
    check_converted(oracle, path, result)
    read_all(path, result.toc_digest)
    with path.open("rb") as fh:
        assert open_estargz(fh).read_file("big") == big
