"""The eStargz writer: every blob passes the upstream reader (estargz-check) and says what it holds."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from ctr_remote.estargz import BuildOptions, build, is_estargz, open_estargz
from tests.estargz.layers import (
    MTIME,
    SMALL_CHUNK,
    Entry,
    compress,
    convert,
    d,
    edge_case_entries,
    f,
    make_tar,
    pattern,
    tar_contents,
    toc_names,
)
from tests.helpers.streams import OneWay

pytestmark = pytest.mark.unit

LANDMARK_DIGEST = "sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8"


def check(oracle, path: Path, result) -> dict:  # type: ignore[no-untyped-def]
    """Oracle-check a blob and cross-check what `build` reported against what the oracle measured."""
    report = oracle.check_blob(path, result.toc_digest)
    assert report["blob_digest"] == result.digest
    assert report["blob_size"] == result.size == path.stat().st_size
    assert report["diff_id"] == result.diff_id
    assert report["uncompressed_size"] == result.uncompressed_size
    return report


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_edge_cases_pass_the_upstream_reader(oracle, tmp_path: Path, fmt: int, kind: str) -> None:
    layer = make_tar(edge_case_entries(), fmt)
    path, result = convert(tmp_path, compress(layer, kind), chunk_size=SMALL_CHUNK)
    report = check(oracle, path, result)
    assert report["landmark"] == "no-prefetch" and report["tar_equal"]
    # Every file reads back, through our reader, as the stdlib reads it from the input.
    expected = tar_contents(layer)
    with path.open("rb") as fh:
        reader = open_estargz(fh)
        reader.verify(result.toc_digest)
        assert {e.name for e in reader.entries if e.type == "reg"} >= set(expected)
        for name, data in expected.items():
            assert (reader.read_file(name) if data else b"") == data, name


def test_ustar_input(oracle, tmp_path: Path) -> None:
    # USTAR has no long names or xattrs: the edge cases that fit it.
    entries = [e for e in edge_case_entries() if not e.pax and len(e.name) < 100 and e.name.isascii()]
    entries = [e for e in entries if len(e.linkname) < 100 and e.uid < 0o7777777]
    path, result = convert(tmp_path, make_tar(entries, tarfile.USTAR_FORMAT), chunk_size=SMALL_CHUNK)
    check(oracle, path, result)


def test_toc_fields_follow_upstream(oracle, tmp_path: Path) -> None:
    path, result = convert(tmp_path, make_tar(edge_case_entries()), chunk_size=SMALL_CHUNK)
    check(oracle, path, result)
    with path.open("rb") as fh:
        entries = open_estargz(fh).entries
    by_name: dict[str, list] = {}
    for e in entries:
        by_name.setdefault(e.name, []).append(e)

    # The landmark comes first without a prioritized list.
    first = entries[0]
    assert (first.name, first.type, first.size, first.digest, first.chunk_digest) == (
        ".no.prefetch.landmark", "reg", 1, LANDMARK_DIGEST, LANDMARK_DIGEST)  # fmt: skip
    # Raw tar names (trailing slash on directories, prefixes kept) and raw modes.
    assert by_name["./usr/"][0].type == "dir"
    assert by_name["/abs/"][0].mode == 0o755
    assert by_name["setuid"][0].mode == 0o4755 and by_name["sticky/"][0].mode == 0o1777
    # Chunks: offsets, digests, sizes (chunkSize on every chunk but the last, as the spec says).
    many = by_name["./usr/bin/many"]
    data = pattern(SMALL_CHUNK * 5 + 123, 3)
    assert [c.type for c in many] == ["reg"] + ["chunk"] * 5
    assert [c.chunk_offset for c in many] == [i * SMALL_CHUNK for i in range(6)]
    assert [c.chunk_size for c in many] == [SMALL_CHUNK] * 5 + [0]
    assert many[0].size == len(data) and many[0].digest == "sha256:" + hashlib.sha256(data).hexdigest()
    for i, c in enumerate(many):
        chunk = data[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK]
        assert c.chunk_digest == "sha256:" + hashlib.sha256(chunk).hexdigest()
    assert len({c.offset for c in many}) == 6
    exact = by_name["./usr/bin/exact"]
    assert len(exact) == 1 and exact[0].chunk_size == 0
    empty = by_name["etc/empty"][0]
    assert empty.digest == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert (empty.offset, empty.chunk_digest, empty.size) == (0, "", 0)
    # Links, devices, xattrs (base64 in JSON, invalid UTF-8 too), ownership, modtimes.
    assert by_name["usr/bin/hard"][0].type == "hardlink"
    assert by_name["usr/bin/hard"][0].link_name == "./usr/bin/many"
    assert by_name["usr/bin/escape"][0].link_name == "../../../x"
    assert (by_name["dev/char"][0].dev_major, by_name["dev/char"][0].dev_minor) == (111, 222)
    assert (by_name["dev/block"][0].type, by_name["dev/block"][0].dev_major) == ("block", 123)
    assert by_name["dev/fifo"][0].type == "fifo"
    xattrs = by_name["xattr"][0].xattrs
    assert xattrs["user.binary"] == b"\xff\xfeok" and xattrs["user.empty"] == b""
    assert xattrs["security.capability"] == b"\x01\x00\x00\x02\x00\x20\x00\x00"
    assert by_name["owned/"][0].user_name == "user50" and by_name["owned/"][0].group_name == "group100"
    assert by_name["owned/a"][0].user_name == "", "a repeated name is recorded once per id (upstream)"
    assert by_name["etc/passwd"][0].user_name == "root" and by_name["etc/one"][0].user_name == ""
    assert (by_name["owned/big-id"][0].uid, by_name["owned/big-id"][0].gid) == (3_000_000, 3_000_001)
    assert by_name["etc/passwd"][0].modtime == "2023-11-14T22:13:20Z"
    assert by_name["no-mtime"][0].modtime == ""
    assert by_name["frac-mtime"][0].modtime == "2023-11-14T22:13:21Z", "rounded half up, as Go does"
    assert by_name[".wh.deleted"][0].type == "reg" and by_name["opaque/.wh..wh..opq"][0].type == "reg"
    # The TOC JSON is Go-shaped: tab-indented, base64 xattr values.
    toc_json = _toc_json(path)
    assert toc_json.startswith(
        b'{\n\t"version": 1,\n\t"entries": [\n\t\t{\n\t\t\t"name": ".no.prefetch.landmark",'
    )
    assert base64.b64encode(b"\xff\xfeok") in toc_json
    assert "sha256:" + hashlib.sha256(toc_json).hexdigest() == result.toc_digest


def _toc_json(path: Path) -> bytes:
    with tarfile.open(path) as tar:
        member = tar.getmember("stargz.index.json")
        fh = tar.extractfile(member)
        assert fh is not None
        return fh.read()


def test_layout_of_members(oracle, tmp_path: Path) -> None:
    """Each payload chunk starts a member whose offset the TOC records; the TOC is the last tar entry."""
    layer = make_tar([d("a/"), f("a/x", pattern(10_000)), f("a/y", b"y")])
    path, result = convert(tmp_path, layer, chunk_size=SMALL_CHUNK)
    report = check(oracle, path, result)
    assert report["gzip_members"] == 1 + 1 + 3 + 1 + 1 + 1  # headers, landmark, 3 chunks, y, TOC, footer
    with tarfile.open(path) as tar:
        assert tar.getnames()[-1] == "stargz.index.json"
    blob = path.read_bytes()
    with path.open("rb") as fh:
        for e in open_estargz(fh).entries:
            if e.offset:
                assert blob[e.offset : e.offset + 2] == b"\x1f\x8b"


def test_default_chunk_size_and_exact_multiple(oracle, tmp_path: Path) -> None:
    big = pattern((4 << 20) * 2 + 5, 7)
    exact = pattern(4 << 20, 8)
    path, result = convert(tmp_path, make_tar([f("big", big), f("exact", exact)]))
    check(oracle, path, result)
    with path.open("rb") as fh:
        reader = open_estargz(fh)
        assert [e.chunk_size for e in reader.entries if e.name == "big"] == [4 << 20, 4 << 20, 0]
        assert [e.chunk_size for e in reader.entries if e.name == "exact"] == [0]
        assert reader.read_file("big") == big


@pytest.mark.parametrize("layer", [b"", bytes(1024)], ids=["zero-bytes", "end-of-archive-only"])
def test_empty_layer(oracle, tmp_path: Path, layer: bytes) -> None:
    path, result = convert(tmp_path, layer)
    report = check(oracle, path, result)
    assert report["landmark"] == "no-prefetch"
    assert toc_names(path) == [".no.prefetch.landmark"]


def test_duplicates_later_entry_wins_and_takes_its_position(oracle, tmp_path: Path) -> None:
    layer = make_tar([f("a", b"old"), f("b", b"b"), f("./a", b"new"), d("c/"), d("c")])
    path, result = convert(tmp_path, layer)
    check(oracle, path, result)
    assert toc_names(path) == [".no.prefetch.landmark", "b", "./a", "c/"]
    with path.open("rb") as fh:
        assert open_estargz(fh).read_file("./a") == b"new"


@pytest.mark.parametrize("prioritized", [None, ["etc/passwd", "usr/bin/hard"]])
def test_converting_estargz_again_is_idempotent(oracle, tmp_path: Path, prioritized) -> None:  # type: ignore[no-untyped-def]
    """An eStargz input loses its TOC and landmarks and gets new ones: the same blob again."""
    layer = make_tar(edge_case_entries())
    first, r1 = convert(tmp_path, layer, "first.esgz", chunk_size=SMALL_CHUNK, prioritized_files=prioritized)
    second, r2 = convert(tmp_path, first.read_bytes(), "second.esgz", chunk_size=SMALL_CHUNK,
                         prioritized_files=prioritized)  # fmt: skip
    check(oracle, second, r2)
    assert r2.digest == r1.digest and r2.toc_digest == r1.toc_digest
    assert toc_names(second).count("stargz.index.json") == 0


@pytest.mark.parametrize("level", [1, 5, 9])
def test_compression_levels(oracle, tmp_path: Path, level: int) -> None:
    path, result = convert(
        tmp_path, make_tar(edge_case_entries()), chunk_size=SMALL_CHUNK, compression_level=level
    )
    check(oracle, path, result)


def test_output_is_identical_whatever_the_number_of_workers(oracle, tmp_path: Path) -> None:
    entries = edge_case_entries() + [f(f"many/{i}", pattern(3000 + i * 997, i)) for i in range(300)]
    entries.append(f("many/big", pattern(9 << 20, 99)))
    layer = make_tar(entries)
    results = []
    for workers in (1, 2, 4):
        path, result = convert(tmp_path, layer, f"w{workers}.esgz", workers=workers)
        results.append((path.read_bytes(), result))
    check(oracle, tmp_path / "w1.esgz", results[0][1])
    assert results[0] == results[1] == results[2]


def test_unseekable_streams_in_and_out(oracle, tmp_path: Path) -> None:
    class Sink(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[no-untyped-def]
            self.data += b
            return len(b)

    sink = Sink()
    result = build(OneWay(compress(make_tar(edge_case_entries()), "gzip")), sink, BuildOptions())
    path = tmp_path / "streamed.esgz"
    path.write_bytes(sink.data)
    check(oracle, path, result)


def test_is_estargz(oracle, tmp_path: Path) -> None:
    layer = make_tar([f("a", b"a")])
    path, result = convert(tmp_path, layer)
    check(oracle, path, result)
    with path.open("rb") as fh:
        assert is_estargz(fh)
    for other in (compress(layer, "gzip"), layer, b"", b"x" * 51):
        assert not is_estargz(io.BytesIO(other))


def test_pax_global_comment_is_dropped(oracle, tmp_path: Path) -> None:
    """git archive writes a PAX global header with a comment; it has no eStargz form and no meaning."""
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "abc"}
    ) as tar:
        ti = tarfile.TarInfo("a")
        ti.size, ti.mtime = 1, MTIME
        tar.addfile(ti, io.BytesIO(b"a"))
    path, result = convert(tmp_path, buf.getvalue())
    check(oracle, path, result)
    assert toc_names(path) == [".no.prefetch.landmark", "a"]


def test_hardlink_with_a_size_field_has_no_payload(oracle, tmp_path: Path) -> None:
    entries = [f("a", b"data"), Entry("b", tarfile.LNKTYPE, linkname="a")]
    layer = bytearray(make_tar(entries))
    # Give the hardlink header a non-zero size field (some tars do); readers must not expect data.
    hdr = layer.index(b"b\x00") // 512 * 512
    layer[hdr + 124 : hdr + 136] = b"%011o\x00" % 4
    layer[hdr + 148 : hdr + 156] = b" " * 8
    layer[hdr + 148 : hdr + 156] = b"%06o\x00 " % sum(layer[hdr : hdr + 512])
    path, result = convert(tmp_path, bytes(layer))
    check(oracle, path, result)


def test_pre_posix_type_flags(oracle, tmp_path: Path) -> None:
    """Type flag NUL: a directory if the name ends in a slash, else a regular file (as Go reads it)."""
    layer = bytearray(make_tar([d("olddir/"), f("olddir/oldfile", b"old")], tarfile.USTAR_FORMAT))
    for name in (b"olddir/\x00", b"olddir/oldfile\x00"):
        at = layer.index(name) // 512 * 512
        layer[at + 156] = 0
        layer[at + 148 : at + 156] = b" " * 8
        layer[at + 148 : at + 156] = b"%06o\x00 " % sum(layer[at : at + 512])
    path, result = convert(tmp_path, bytes(layer))
    check(oracle, path, result)
    with path.open("rb") as fh:
        types = {e.name: e.type for e in open_estargz(fh).entries}
    assert (types["olddir/"], types["olddir/oldfile"]) == ("dir", "reg")


def test_real_files_from_this_machine(oracle, tmp_path: Path) -> None:
    """Real metadata (sub-second mtimes in PAX, owners, modes, symlinks) as `tar` of a tree gives."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add("/usr/lib/python3.11/json", arcname="usr/lib/python3.11/json")
        tar.add("/bin/sh", arcname="bin/sh")
        tar.add("/usr/bin/env", arcname="usr/bin/env")
    layer = buf.getvalue()
    path, result = convert(tmp_path, layer, chunk_size=64 << 10, prioritized_files=["usr/bin/env", "bin/sh"])
    report = check(oracle, path, result)
    # No directory entries for the listed files' parents: added, as readers assume them.
    assert report["prioritized"] == ["usr", "usr/bin", "usr/bin/env", "bin", "bin/sh"]
    with path.open("rb") as fh:
        reader = open_estargz(fh)
        for name, data in tar_contents(layer).items():
            assert reader.read_file(name) == data


def test_octal_fields_read_up_to_their_nul_as_go_does(oracle, tmp_path: Path) -> None:
    """`0000644\\0junk`: Go trims spaces and NULs at the ends, then stops at the first NUL."""
    layer = bytearray(make_tar([f("a", b"x", mode=0o644)], tarfile.USTAR_FORMAT))
    layer[100:108] = b"644\x00x\x00  "
    layer[148:156] = b" " * 8
    layer[148:156] = b"%06o\x00 " % sum(layer[:512])
    path, result = convert(tmp_path, bytes(layer))
    check(oracle, path, result)
    with path.open("rb") as fh:
        assert [e.mode for e in open_estargz(fh).entries if e.name == "a"] == [0o644]
