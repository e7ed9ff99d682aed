"""Bad input: one clear EstargzError line, and no temp files or threads left behind."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import BuildOptions, EstargzError, build, open_estargz
from ctr_remote.estargz.tar import encode_header
from tests.conftest import ROOT
from tests.estargz.layers import Entry, compress, f, make_tar, pattern

pytestmark = pytest.mark.unit


def _retype(layer: bytes, name: bytes, flag: bytes) -> bytes:
    """Change the type flag of the header named `name` (and fix its checksum)."""
    out = bytearray(layer)
    at = out.index(name + b"\x00") // 512 * 512
    out[at + 156 : at + 157] = flag
    out[at + 148 : at + 156] = b" " * 8
    out[at + 148 : at + 156] = b"%06o\x00 " % sum(out[at : at + 512])
    return bytes(out)


def _resize(layer: bytes, field: bytes) -> bytes:
    """Replace the size field of the first header (and fix its checksum)."""
    return _refield(layer, 124, field)


def _refield(layer: bytes, at: int, field: bytes) -> bytes:
    """Replace a field of the first header (and fix its checksum)."""
    out = bytearray(layer)
    out[at : at + len(field)] = field
    out[148:156] = b" " * 8
    out[148:156] = b"%06o\x00 " % sum(out[:512])
    return bytes(out)


def _pax_global(records: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=records) as tar:
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    return buf.getvalue()


GOOD = make_tar([f("a", pattern(20_000)), f("sock", b""), f("b", b"b")])
_GZ = gzip.compress(GOOD)

BAD = {
    "not-a-tar": (b"this is not a tar archive\n" * 100, "not a tar archive"),
    "truncated-gzip": (_GZ[:-200], "layer: corrupt gzip stream"),
    "corrupt-gzip": (
        gzip.compress(GOOD)[:40] + b"\x00" * 64 + gzip.compress(GOOD)[104:],
        "layer: corrupt gzip",
    ),
    "truncated-tar": (GOOD[:700], "truncated tar: stream ended inside the payload of 'a'"),
    "truncated-header": (GOOD[:100], "truncated tar: stream ended inside a header"),
    "socket-entry": (_retype(GOOD, b"sock", b"s"), "unsupported tar entry 'sock': type 's'"),
    "sparse-entry": (
        _retype(GOOD, b"sock", b"S"),
        "unsupported tar entry 'sock': type 'S' (GNU sparse file)",
    ),
    "non-utf8-name": (
        make_tar([f("caf\udce9", b"x")], tarfile.GNU_FORMAT),
        "tar entry name b'caf\\xe9' is not UTF-8; an eStargz TOC cannot represent it",
    ),
    "huge-extension-header": (encode_header("PaxHeader", "x", 2 << 20), "extension header of 2097152 bytes"),
    "name-over-path-max": (
        make_tar([f("d/" + "n" * 5000, b"x")]),
        "tar entry name of 5002 bytes (b'd/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'...) is longer than "
        "Linux's PATH_MAX (4096)",
    ),
    "link-target-over-path-max": (
        make_tar([Entry("l", tarfile.SYMTYPE, linkname="t" * 4097)]),
        "tar entry link target of 4097 bytes",
    ),
    "pax-uid-over-int64": (
        make_tar([f("a", b"x", pax={"uid": str(1 << 63)})]),
        "invalid tar PAX uid b'9223372036854775808': out of the 64-bit range",
    ),
    "pax-size-absurd": (make_tar([f("a", b"x", pax={"size": "9" * 40})]), "invalid tar PAX size b'9999"),
    "octal-size-absurd": (
        _resize(make_tar([f("a", b"x" * 10), f("b")], tarfile.GNU_FORMAT), b"77777777777\x00"),
        "truncated tar: stream ended inside the payload of 'a'",
    ),
    "base256-size-negative": (
        _resize(make_tar([f("a", b"x" * 10)], tarfile.GNU_FORMAT), b"\xff" * 12),
        "invalid tar header for 'a': negative size",
    ),
    "pax-path-with-nul": (make_tar([f("x", pax={"path": "a\x00b"})]), "invalid tar PAX record b'path'"),
    "pax-uname-with-nul": (make_tar([f("x", pax={"uname": "r\x00t"})]), "invalid tar PAX record b'uname'"),
    "pax-key-with-nul": (
        make_tar([f("x", pax={"SCHILY.xattr.user.a\x00b": "v"})]),
        "invalid tar PAX record b'SCHILY.xattr.user.a\\x00b': empty key or NUL byte",
    ),
    # Python's int() reads these, Go's archive/tar refuses them (so the blob was unreadable).
    "pax-mtime-underscores": (
        make_tar([f("a", b"x", pax={"mtime": "1_700_000_000"})]),
        "invalid tar PAX mtime b'1_700_000_000'",
    ),
    "pax-atime-garbage": (
        make_tar([f("a", b"x", pax={"atime": "garbage"})]),
        "invalid tar PAX atime b'garbage'",
    ),
    "octal-with-0o-prefix": (
        _refield(make_tar([f("a", b"x")], tarfile.USTAR_FORMAT), 100, b"0o00644\x00"),
        "invalid tar header: bad mode field b'0o00644\\x00'",
    ),
    "extension-header-bad-number": (
        _refield(make_tar([f("x" * 120, b"x")]), 108, b"00/0000\x00"),  # the PAX header's own uid
        "invalid tar header: bad uid field b'00/0000\\x00'",
    ),
    "global-header-with-path": (
        _pax_global({"path": "x"}),
        "unsupported PAX global header with records ['path']",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_layer_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    blob, message = BAD[case]
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))
    threads = threading.active_count()
    with pytest.raises(EstargzError) as err:
        build(io.BytesIO(blob), io.BytesIO(), BuildOptions(workers=2))
    assert threading.active_count() == threads, "decompression or compression threads left running"
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, CtrRemoteError)
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression_level": 0}, "gzip compression level must be 1..9, not 0"),
        ({"compression_level": 10}, "gzip compression level must be 1..9, not 10"),
        ({"chunk_size": 0}, "chunk size must be a positive number of bytes, not 0"),
        ({"workers": 0}, "workers must be at least 1, not 0"),
        ({"prioritized_files": "bin/sh"}, "prioritized_files must be a sequence of paths"),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(EstargzError, match=message):
        BuildOptions(**kwargs)


def test_success_leaves_no_temp_files(oracle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))
    out = tmp_path / "good.esgz"
    with out.open("wb") as dst:
        result = build(io.BytesIO(GOOD), dst)
    assert list(spool_dir.iterdir()) == []
    report = oracle.check_blob(out, result.toc_digest)
    assert report["files"] == 4 and report["tar_equal"]  # a, sock, b and the landmark


def _member_sizes(blob: bytes) -> list[int]:
    """Uncompressed size of each gzip member of the blob."""
    sizes, rest = [], blob
    while rest:
        d = zlib.decompressobj(31)
        sizes.append(len(d.decompress(rest)))
        rest = d.unused_data
    return sizes


def test_a_long_run_of_entries_without_payload_is_not_one_member(oracle, tmp_path: Path) -> None:
    """A tar bomb of headers (symlinks, directories, empty files: nothing that starts a member) used
    to become one gzip member, all of it held in memory until the end of the layer."""
    entries = [Entry(f"l{i}", tarfile.SYMTYPE, linkname="t" * 3000) for i in range(3000)]
    layer = make_tar([f("first", b"1"), *entries, f("empty")])
    out = tmp_path / "headers.esgz"
    with out.open("wb") as dst:
        result = build(io.BytesIO(layer), dst, BuildOptions())
    oracle.check_blob(out, result.toc_digest)
    sizes = _member_sizes(out.read_bytes())[:-2]  # the TOC member is streamed, and the footer
    assert sum(sizes) > 10 << 20
    assert max(sizes) < (1 << 20) + 8192, f"a member of {max(sizes)} bytes"


_BOMB_SCRIPT = """
import io, resource, signal, sys, zlib
from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import BuildOptions, build
from ctr_remote.estargz.tar import encode_header
from tests.conftest import ROOT

# 1 GiB of zeros as the payload of one file, gzip-compressed to about 1 MiB.
gz = zlib.compressobj(1, zlib.DEFLATED, 31)
parts = [gz.compress(encode_header("bomb", "0", 1 << 30))]
zeros = bytes(1 << 20)
parts += [gz.compress(zeros) for _ in range(1024)]
parts.append(gz.compress(bytes(1024)) + gz.flush())
blob = b"".join(parts)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
try:
    build(io.BytesIO(blob), io.BytesIO(), BuildOptions(workers=2))
except CtrRemoteError as e:
    print(e)
    print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]))
    sys.exit(1)
"""


def test_gzip_bomb_that_fills_the_disk_is_one_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """The layer is spooled to a temp file; when the file system refuses more (here a file size
    limit, as a full disk would), the error is one line and the unlinked spool is gone."""
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    p = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(spool_dir)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1 and p.stderr == "", p.stderr
    message, rss_kib = p.stdout.splitlines()
    assert message == f"cannot spool the layer to a temp file in {spool_dir}: [Errno 27] File too large"
    assert int(rss_kib) < 200 << 10
    assert list(spool_dir.iterdir()) == []


def test_zeros_after_the_end_of_archive_are_ignored(oracle, tmp_path: Path) -> None:
    """NUL padding after the end-of-archive (a gzip bomb of zeros, too) is read and dropped."""
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    blob = gz.compress(GOOD) + b"".join(gz.compress(bytes(1 << 20)) for _ in range(64)) + gz.flush()
    out = tmp_path / "padded.esgz"
    with out.open("wb") as dst:
        result = build(io.BytesIO(blob), dst, BuildOptions())
    report = oracle.check_blob(out, result.toc_digest)
    assert report["files"] == 4  # a, sock, b and the landmark


_MUTATED_BASE = make_tar(
    [f("a", pattern(300)), Entry("l", tarfile.SYMTYPE, linkname="a"), f("dir/" + "n" * 120, b"long"), f("e")]
)


@st.composite
def _mutated_layers(draw: st.DrawFn) -> bytes:
    """The base layer, maybe compressed, then truncated, bit-flipped, or followed by garbage."""
    blob = compress(_MUTATED_BASE, draw(st.sampled_from(["none", "gzip", "zstd"])))
    op = draw(st.sampled_from(["truncate", "flip", "flip", "append"]))
    if op == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if op == "append":
        return blob + draw(st.sampled_from([bytes(10_000), b"\x1f\x8b", b"garbage", bytes(511) + b"x"]))
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 3))):
        out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(blob=_mutated_layers())
def test_mutated_input_gives_a_valid_blob_or_one_error_line(oracle, tmp_path_factory, blob: bytes) -> None:
    """Truncated, bit-flipped or padded tar, gzip and zstd layers: either a blob that passes the
    upstream reader and ours, or one EstargzError line; never another exception, a leftover temp
    file or thread."""
    tmp = tmp_path_factory.mktemp("mutated")
    threads = threading.active_count()
    old_tempdir = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    out = tmp / "out.esgz"
    try:
        with out.open("wb") as dst:
            result = build(io.BytesIO(blob), dst, BuildOptions(chunk_size=128, workers=2))
    except EstargzError as e:
        assert "\n" not in str(e)
        result = None
    finally:
        tempfile.tempdir = old_tempdir
    assert threading.active_count() == threads
    assert [p.name for p in tmp.iterdir()] == ["out.esgz"]
    if result is not None:
        oracle.check_blob(out, result.toc_digest)
        with out.open("rb") as fh:
            open_estargz(fh).verify(result.toc_digest)
