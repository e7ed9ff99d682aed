"""Bad input: one clear EstargzError line, and no temp files or threads left behind."""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import BuildOptions, EstargzError, build
from ctr_remote.estargz.tar import encode_header
from tests.estargz.layers import f, make_tar, pattern


def _retype(layer: bytes, name: bytes, flag: bytes) -> bytes:
    """Change the type flag of the header named `name` (and fix its checksum)."""
    out = bytearray(layer)
    at = out.index(name + b"\x00") // 512 * 512
    out[at + 156 : at + 157] = flag
    out[at + 148 : at + 156] = b" " * 8
    out[at + 148 : at + 156] = b"%06o\x00 " % sum(out[at : at + 512])
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


def test_success_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = io.BytesIO()
    build(io.BytesIO(GOOD), out)
    assert out.getvalue() and list(tmp_path.iterdir()) == []
