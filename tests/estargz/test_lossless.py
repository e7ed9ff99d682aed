"""Lossless layers (`BuildOptions(lossless=True)`, convert's `--estargz-keep-diff-id`): the blob
decompresses to exactly the input's tar, its TOC is external, and upstream's `AppendTarLossLess`
(through `estargz-check-gen`'s `lossless` mode) lays out the same entries in the same members."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from ctr_remote.estargz import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_DIGEST_ANNOTATION,
    BuildOptions,
    BuildResult,
    EstargzError,
    TOCEntry,
    open_estargz,
)
from tests.conftest import Oracle
from tests.estargz.layers import (
    MTIME,
    SMALL_CHUNK,
    Entry,
    check_converted,
    compress,
    convert,
    edge_case_entries,
    f,
    make_tar,
    pattern,
    tar_contents,
    upstream_blob,
)

LOSSLESS = {"lossless": True, "external_toc": True, "chunk_size": SMALL_CHUNK}
TRAILER = b"bytes after the end-of-archive, kept\n"
# A lossless layer has no landmark of its own; its source's global headers, trailer and misplaced
# landmark are kept.
ALLOWED = (
    "no landmark",
    "after the tar's end-of-archive marker",
    "PAX global header at",
    "is not the first entry",
)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime = len(data), MTIME
    tar.addfile(ti, io.BytesIO(data))


def _global(tar: tarfile.TarFile, buf: io.BytesIO, comment: str) -> None:
    """A PAX global header between entries, as `git archive` writes one (the normal writer drops
    those holding only a comment)."""
    header = tarfile.TarInfo.create_pax_global_header({"comment": comment})
    buf.write(header)
    tar.offset += len(header)


def lossless_input(upstreams: bool = False) -> bytes:
    """Everything the normal writer would change: PAX global headers (first and between entries),
    duplicates (a chunked file replaced by a smaller chunked one), a landmark of the input's own in the
    middle, the edge cases, and bytes after the end-of-archive. `upstreams`: without what upstream's
    lossless writer treats otherwise: PAX global headers (it refuses them) and the input's landmark
    (at a min chunk size upstream lets it share a member; ours starts one, as for the landmarks it
    writes, so that the prefetch boundary stays exact)."""
    buf = io.BytesIO()
    if not upstreams:
        buf.write(tarfile.TarInfo.create_pax_global_header({"comment": "0123abcd"}))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "zz-first", b"comes first in the input, stays first")
        _add(tar, "dup", pattern(3 * SMALL_CHUNK + 5, 3))
        if not upstreams:
            _global(tar, buf, "between entries")
        for e in edge_case_entries():  # as make_tar writes them
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.size, ti.linkname, ti.mode, ti.mtime = (
                e.type,
                len(e.data),
                e.linkname,
                e.mode,
                e.mtime,
            )
            ti.uid, ti.gid, ti.uname, ti.gname = e.uid, e.gid, e.uname, e.gname
            ti.devmajor, ti.devminor, ti.pax_headers = e.devmajor, e.devminor, dict(e.pax)
            tar.addfile(ti, io.BytesIO(e.data) if e.type == tarfile.REGTYPE else None)
        if not upstreams:
            _add(tar, NO_PREFETCH_LANDMARK, b"\x0f")
        _add(tar, "dup", pattern(2 * SMALL_CHUNK + 7, 4))
    return buf.getvalue() + TRAILER


@pytest.fixture(scope="module")
def layer() -> bytes:
    return lossless_input()


def toc_entries(path: Path, external_toc: bytes | None) -> list[TOCEntry]:
    with path.open("rb") as fh:
        return list(open_estargz(fh, external_toc).entries)


def external(tmp: Path, result: BuildResult) -> Path:
    assert result.external_toc is not None
    path = tmp / "toc.gz"
    path.write_bytes(result.external_toc)
    return path


@pytest.mark.parametrize("kind", ["tar", "gzip", "zstd"])
def test_blob_decompresses_to_the_input_tar(oracle: Oracle, layer: bytes, tmp_path: Path, kind: str) -> None:
    path, result = convert(tmp_path, compress(layer, kind), **LOSSLESS)
    # Same tar, same diff ID: order, headers, padding, global headers, duplicates, end and trailer.
    assert gzip.decompress(path.read_bytes()) == layer
    assert result.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert result.uncompressed_size == len(layer)
    report = oracle.check_blob(
        path, result.toc_digest, ALLOWED, older_reader=False, external_toc=external(tmp_path, result)
    )
    assert report["diff_id"] == result.diff_id and report["landmark"] != "prefetch"
    # Our reader verifies it whole, and every file reads back through the TOC: the last of a
    # duplicated path is the file, as for tar readers.
    with path.open("rb") as fh:
        reader = open_estargz(fh, result.external_toc)
        assert reader.verify(result.toc_digest).diff_id == result.diff_id
        for name, data in tar_contents(layer).items():
            assert not data or reader.read_file(name) == data, name


def test_toc_lists_every_input_entry_in_input_order(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    path, result = convert(tmp_path, layer, **LOSSLESS)
    check_converted(oracle, path, result, ALLOWED)
    names = [e.name for e in toc_entries(path, result.external_toc) if e.type != "chunk"]
    with tarfile.open(fileobj=io.BytesIO(layer), encoding="utf-8", errors="surrogateescape") as tar:
        assert [n.rstrip("/") for n in names] == [
            m.name.rstrip("/") for m in tar
        ]  # no landmark added, nothing moved or collapsed
    assert names[0] == "zz-first" and names.count("dup") == 2 and PREFETCH_LANDMARK not in names
    # The normal writer, on the same input, does all of that (so the test above means something).
    normal, res = convert(tmp_path, layer, "normal.esgz", external_toc=True, chunk_size=SMALL_CHUNK)
    check_converted(oracle, normal, res)
    plain = gzip.decompress(normal.read_bytes())
    assert b"between entries" not in plain and TRAILER not in plain
    assert [e.name for e in toc_entries(normal, res.external_toc) if e.type != "chunk"].count("dup") == 1


@pytest.mark.parametrize("min_chunk", [0, 1000])
def test_same_layout_as_upstreams_lossless_writer(oracle_gen: Path, tmp_path: Path, min_chunk: int) -> None:
    """Upstream's --estargz-keep-diff-id (AppendTarLossLess, external TOC) on the same input: the
    same tar, the same TOC entries (offsets compared as member order, since the deflate streams
    differ), but for the spec's rule that a full last chunk records no chunkSize."""
    layer = lossless_input(upstreams=True)
    opts = {**LOSSLESS, "min_chunk_size": min_chunk}
    ours, result = convert(tmp_path, layer, **opts)  # type: ignore[arg-type]
    mode = f"lossless+chunk={SMALL_CHUNK}" + (f"+minchunk={min_chunk}" if min_chunk else "")
    theirs, annotations = upstream_blob(oracle_gen, tmp_path, layer, mode)
    their_toc = (tmp_path / "upstream-oci" / "external-toc.gz").read_bytes()
    assert gzip.decompress(theirs.read_bytes()) == gzip.decompress(ours.read_bytes()) == layer

    def layout(entries: list[TOCEntry]) -> list[tuple[object, ...]]:
        members = sorted({e.offset for e in entries if e.type == "chunk" or (e.type == "reg" and e.size)})
        return [
            (e.name, e.type, e.size, e.chunk_offset, e.digest, e.chunk_digest, e.inner_offset,
             members.index(e.offset) if e.offset else None)
            for e in entries
        ]  # fmt: skip

    mine, upstream = toc_entries(ours, result.external_toc), toc_entries(theirs, their_toc)
    assert layout(mine) == layout(upstream)
    full_last = [
        (u.name, u.chunk_offset) for m, u in zip(mine, upstream, strict=True) if m.chunk_size != u.chunk_size
    ]
    assert full_last and all(
        u.chunk_size == SMALL_CHUNK for u in upstream if (u.name, u.chunk_offset) in full_last
    )
    assert annotations[TOC_DIGEST_ANNOTATION] != result.toc_digest  # by those chunkSize fields only
    with theirs.open("rb") as fh:  # and our reader takes upstream's lossless blob
        open_estargz(fh, their_toc).verify(annotations[TOC_DIGEST_ANNOTATION])


def test_reproducible_and_idempotent(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    """Any thread count gives the same bytes; converting the blob again (it decompresses to the same
    tar, with no TOC inside) gives the same blob."""
    one, r1 = convert(tmp_path, layer, "w1", workers=1, **LOSSLESS)  # type: ignore[arg-type]
    _, r3 = convert(tmp_path, layer, "w3", workers=3, **LOSSLESS)  # type: ignore[arg-type]
    _, r2 = convert(tmp_path, one.read_bytes(), "again", **LOSSLESS)  # type: ignore[arg-type]
    assert r1.digest == r3.digest == r2.digest and r1.external_toc == r2.external_toc
    check_converted(oracle, one, r1, ALLOWED)


def test_empty_and_bare_tars(oracle: Oracle, tmp_path: Path) -> None:
    for name, tar in [("empty", b""), ("eoa", bytes(1024)), ("no-eoa", make_tar([f("a", b"x")])[:1024])]:
        path, result = convert(tmp_path, tar, name, **LOSSLESS)
        assert gzip.decompress(path.read_bytes()) == tar, name
        toc = tmp_path / f"{name}.toc"
        toc.write_bytes(result.external_toc or b"")
        oracle.check_blob(path, result.toc_digest, ALLOWED, older_reader=False, external_toc=toc)


def test_refusals(oracle: Oracle, layer: bytes, tmp_path: Path) -> None:
    with pytest.raises(EstargzError, match="needs an external TOC"):
        BuildOptions(lossless=True)
    with pytest.raises(EstargzError, match="takes no prioritized files"):
        BuildOptions(lossless=True, external_toc=True, prioritized_files=["etc/passwd"])
    # An eStargz input holds its TOC entry: it can be neither dropped nor kept.
    esgz, result = convert(tmp_path, layer, "esgz")
    check_converted(oracle, esgz, result)
    with pytest.raises(EstargzError, match=r"already holds 'stargz\.index\.json'"):
        convert(tmp_path, esgz.read_bytes(), "out", **LOSSLESS)
    # Nothing may move, so a hardlink before its target is an error, not a blob readers reject.
    early = make_tar([Entry("link", tarfile.LNKTYPE, linkname="target"), f("target", b"t")])
    with pytest.raises(EstargzError, match="cannot follow its target"):
        convert(tmp_path, early, "out", **LOSSLESS)
    # Upstream's reader would serve the first file's chunks for the second (its lossless writer
    # writes such a blob; ours refuses it). Chunked twice, or small first, is fine.
    stale = make_tar([f("dup", pattern(2 * SMALL_CHUNK, 1)), f("dup", b"small")])
    with pytest.raises(EstargzError, match="'dup' is in the layer twice, first in several chunks"):
        convert(tmp_path, stale, "out", **LOSSLESS)
    ok, result = convert(
        tmp_path, make_tar([f("dup", b"small"), f("dup", pattern(2 * SMALL_CHUNK, 1))]), "ok", **LOSSLESS
    )
    check_converted(oracle, ok, result, ALLOWED)
