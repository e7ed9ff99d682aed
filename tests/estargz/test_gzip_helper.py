"""`--estargz-gzip-helper`: gzip source layers decompressed by pigz, igzip or gzip give the same
blob as our own decompression; a helper that is unknown, missing or fails is a one-line error."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from ctr_remote.errors import CtrRemoteError
from ctr_remote.estargz import BuildOptions, build
from ctr_remote.layer.gzip_helper import HELPERS, GzipHelper, GzipHelperError
from tests.conftest import Oracle
from tests.estargz.layers import SMALL_CHUNK, check_converted, edge_case_entries, f, make_tar, pattern


@pytest.fixture(scope="module")
def layer_gz() -> bytes:
    return gzip.compress(make_tar([*edge_case_entries(), f("big", pattern(3 << 20, 5))]), 6)


def digest(src: bytes, **opts: object) -> str:
    return build(io.BytesIO(src), io.BytesIO(), BuildOptions(chunk_size=SMALL_CHUNK, **opts)).digest  # type: ignore[arg-type]


@pytest.mark.parametrize("name", HELPERS)
def test_each_helper_gives_the_same_blob(oracle: Oracle, layer_gz: bytes, name: str, tmp_path: Path) -> None:
    path = tmp_path / "layer.esgz"
    with path.open("wb") as out:
        opts = BuildOptions(chunk_size=SMALL_CHUNK, gzip_helper=GzipHelper.find(name))
        result = build(io.BytesIO(layer_gz), out, opts)
    assert result.digest == digest(layer_gz)
    check_converted(oracle, path, result)


def test_a_failing_helper_names_the_layer_and_the_helper(layer_gz: bytes) -> None:
    broken = bytearray(layer_gz)
    broken[len(broken) // 2] ^= 0xFF
    with pytest.raises(CtrRemoteError, match=r"layer: gzip helper pigz failed: "):
        digest(bytes(broken), gzip_helper=GzipHelper.find("pigz"))


def test_unknown_and_missing_helpers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(GzipHelperError, match="invalid gzip helper 'zcat': use one of pigz, igzip, gzip"):
        GzipHelper.find("zcat")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no helper installed
    with pytest.raises(
        GzipHelperError, match=r"gzip helper 'igzip' not found on PATH \(Debian package 'isal'\)"
    ):
        GzipHelper.find("igzip")
