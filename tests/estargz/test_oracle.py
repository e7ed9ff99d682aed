"""The conformance oracle itself (tests/oracle): its command-line contract, the v0.12 check of our
default output, and that it rejects what it must (its Go tests, and image-level faults here)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ctr_remote.estargz import open_estargz
from tests.conftest import ORACLE, ORACLE_GEN, ORACLE_V012, ROOT, Oracle
from tests.estargz.layers import (
    SMALL_CHUNK,
    TOC_DIGEST_ANNOTATION,
    convert,
    edge_case_entries,
    make_tar,
    toc_names,
    upstream_layer,
)

pytestmark = pytest.mark.unit

UNCOMPRESSED_ANNOTATION = "io.containers.estargz.uncompressed-size"
ORACLE_GEN_V012 = Path(str(ORACLE_GEN) + "-v0.12")


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=300)


def test_default_output_passes_v0143_and_v012_readers(oracle: Oracle, tmp_path: Path) -> None:
    path, result = convert(tmp_path, make_tar(edge_case_entries()), chunk_size=SMALL_CHUNK)
    oracle.check_blob(path, result.toc_digest)  # runs both
    reports = {}
    for binary in (ORACLE, ORACLE_V012):
        p = run(binary, "blob", str(path), "--toc-digest", result.toc_digest, "--strict")
        assert p.returncode == 0, p.stderr
        reports[binary] = json.loads(p.stdout)
    new, old = reports[ORACLE], reports[ORACLE_V012]
    assert (new["library"], old["library"]) == ("v0.14.3", "v0.12")
    assert new["library_verify"] == old["library_verify"] == "VerifyTOC"
    for key in ("toc_digest", "diff_id", "chunks", "files", "landmark", "prefetch_bytes", "gzip_members"):
        assert new[key] == old[key], key


def test_the_v012_check_rejects_what_only_v0143_reads(
    oracle: Oracle, oracle_gen: Path, tmp_path: Path
) -> None:
    """v0.14.3's min chunk size packs small files into one gzip member behind `innerOffset`; v0.12
    does not know the field. check_blob must catch such a blob through its v0.12 run."""
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, "estargz+minchunk=65536+chunk=4096")
    blob, toc_digest = layer_blob(layout)
    report = oracle.check_blob(blob, toc_digest, older_reader=False)
    assert report["inner_offset_chunks"] > 0
    # v0.14.3's VerifyTOC keys chunks by offset alone and rejects the blob its own builder wrote.
    assert "found twice" in report["library_verify"]
    old = run(ORACLE_V012, "blob", str(blob), "--toc-digest", toc_digest)
    assert old.returncode == 1
    assert "innerOffset, which the v0.12 reader ignores" in json.loads(old.stdout)["error"]
    with pytest.raises(AssertionError, match=r"estargz-check \(v0.12\) rejected"):
        oracle.check_blob(blob, toc_digest)


def test_go_tests_of_the_oracle() -> None:
    """Flipped chunk byte, truncation, wrong TOC digest, lying TOC (also behind innerOffset), hardlink
    cycle, legacy and malformed footers, a zstd footer claiming a huge TOC: each rejected with its own
    error, against both upstream versions (the minute-long every-byte-flip test is left out here)."""
    p = subprocess.run(
        [str(ROOT / "script" / "setup.sh"), "oracle-test", str(ORACLE.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ok  \t") == 2, p.stdout


@pytest.mark.parametrize(
    "args",
    [[], ["blob"], ["blob", "a", "b"], ["frob", "x"], ["blob", "x", "--nope"], ["blob", "x", "--toc-digest"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    p = run(ORACLE, *args)
    assert p.returncode == 2, p
    assert p.stdout == ""


def test_a_failure_exits_1_with_one_line_on_stderr(tmp_path: Path) -> None:
    path, result = convert(tmp_path, make_tar(edge_case_entries()))
    wrong = "sha256:" + "0" * 64
    p = run(ORACLE, "blob", str(path), "--toc-digest", wrong)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"estargz-check: FAIL {path}: ")
    report = json.loads(p.stdout)
    assert not report["ok"] and report["toc_digest"] == result.toc_digest
    assert any("differs from the expected" in e for e in report["errors"])


# --- images -----------------------------------------------------------------------------------------


def gen(oracle_gen: Path, tmp: Path, out: Path, mode: str) -> None:
    src = tmp / "src.tar"
    src.write_bytes(make_tar(edge_case_entries()))
    subprocess.run([str(oracle_gen), "oci-image", str(src), str(out), mode], check=True, capture_output=True)


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def manifest_of(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    return json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_text())


def layer_blob(layout: Path) -> tuple[Path, str]:
    desc = manifest_of(layout)["layers"][0]
    return blob_path(layout, desc["digest"]), desc["annotations"][TOC_DIGEST_ANNOTATION]


def put_json(layout: Path, doc: dict) -> tuple[str, int]:
    data = json.dumps(doc).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    return digest, len(data)


def edit_image(layout: Path, layer: Callable[[dict], None] = lambda d: None, config=lambda c: None) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the first layer's descriptor and/or the config, re-linking manifest and index, so the
    only fault left is the edit."""
    manifest = manifest_of(layout)
    layer(manifest["layers"][0])
    cfg = json.loads(blob_path(layout, manifest["config"]["digest"]).read_text())
    config(cfg)
    manifest["config"]["digest"], manifest["config"]["size"] = put_json(layout, cfg)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"], index["manifests"][0]["size"] = put_json(layout, manifest)
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("mode", ["estargz", "estargz:etc/passwd", "zstdchunked", "gzip"])
def test_upstream_images_pass(oracle: Oracle, oracle_gen: Path, tmp_path: Path, mode: str) -> None:
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, mode)
    report = oracle.check_image(layout, all_estargz=mode != "gzip")
    layer = report["manifests"][0]["layers"][0]
    assert layer["diff_id"] == layer["config_diff_id"]
    assert report["estargz_layers"] == (0 if mode == "gzip" else 1)
    if mode == "zstdchunked":
        annotations = manifest_of(layout)["layers"][0]["annotations"]
        assert (
            layer["blob"]["zstd_manifest_position"]
            == annotations["io.containers.zstd-chunked.manifest-position"]
        )
        assert layer["blob"]["format"] == "zstd:chunked"


def test_layer_warnings_reach_the_top_and_fail_strict(
    oracle: Oracle, oracle_gen: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, "estargz")
    edit_image(layout, layer=lambda d: d["annotations"].pop(UNCOMPRESSED_ANNOTATION))
    lax = oracle.image(layout, strict=False)
    assert lax.ok
    layer = lax.report["manifests"][0]["layers"][0]
    assert layer["warnings"] == [f"no {UNCOMPRESSED_ANNOTATION} annotation"]
    [top] = lax.warnings
    assert top.startswith("manifest sha256:") and top.endswith(
        f"layer 0 {layer['digest'][:19]}: " + layer["warnings"][0]
    )
    strict = oracle.image(layout, strict=True)
    assert not strict.ok and "estargz-check: FAIL" in strict.stderr
    assert not strict.report["manifests"][0]["ok"] and not strict.report["manifests"][0]["layers"][0]["ok"]


def test_estargz_blob_without_toc_annotation_warns(oracle: Oracle, oracle_gen: Path, tmp_path: Path) -> None:
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, "estargz")
    edit_image(layout, layer=lambda d: d["annotations"].pop(TOC_DIGEST_ANNOTATION))
    r = oracle.image(layout, strict=False)
    assert r.ok and r.report["estargz_layers"] == 0
    assert any("layer 0" in w and "will not be lazily pulled" in w for w in r.warnings), r.warnings
    assert not oracle.image(layout, strict=True).ok


@pytest.mark.parametrize(
    ("mode", "edit", "message"),
    [
        ("estargz", lambda d: d["annotations"].pop(TOC_DIGEST_ANNOTATION), "will not be lazily pulled"),
        ("estargz", lambda d: d["annotations"].pop(UNCOMPRESSED_ANNOTATION), UNCOMPRESSED_ANNOTATION),
        ("gzip", lambda d: None, "not every layer is eStargz"),
    ],
    ids=["no-toc-annotation", "no-uncompressed-size-annotation", "plain-gzip-layer"],
)
def test_check_image_fails_an_image_with_any_warning(
    oracle: Oracle,
    oracle_gen: Path,
    tmp_path: Path,
    mode: str,
    edit,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    """The helper every end-to-end test relies on: a warning at the layer level (or a layer that is
    not eStargz) fails it, unless the test explicitly allows that warning."""
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, mode)
    edit_image(layout, layer=edit)
    with pytest.raises(AssertionError, match=re.escape(message)):
        oracle.check_image(layout)
    if mode == "estargz":
        oracle.check_image(layout, allowed_warnings=(message,), all_estargz=False)


@pytest.mark.parametrize(
    "fault, error",
    [
        ("usize", "decompresses to"),
        ("toc", "differs from the expected"),
        ("diff_id", "rootfs.diff_ids[0]"),
        ("few_diff_ids", "lists 0 diff_ids for 1 layers"),
        ("size", "the descriptor says"),
    ],
)
def test_image_faults_are_rejected(
    oracle: Oracle, oracle_gen: Path, tmp_path: Path, fault: str, error: str
) -> None:
    layout = tmp_path / "oci"
    gen(oracle_gen, tmp_path, layout, "estargz")
    edits: dict[str, dict] = {
        "usize": {"layer": lambda d: d["annotations"].update({UNCOMPRESSED_ANNOTATION: "1"})},
        "toc": {"layer": lambda d: d["annotations"].update({TOC_DIGEST_ANNOTATION: "sha256:" + "1" * 64})},
        "diff_id": {"config": lambda c: c["rootfs"].update(diff_ids=["sha256:" + "2" * 64])},
        "few_diff_ids": {"config": lambda c: c["rootfs"].update(diff_ids=[])},
        "size": {"layer": lambda d: d.update(size=d["size"] + 1)},
    }
    edit_image(layout, **edits[fault])
    r = oracle.image(layout, strict=False)
    assert not r.ok
    assert any(error in e for e in r.report["errors"]), r.report["errors"]


def test_v0143_and_v012_builders_agree_on_order(tmp_path: Path) -> None:
    """Upstream's two builders put the same entries in the same order; v0.14.3 only writes each data
    member 5 bytes longer (a sync flush before closing it), so offsets and TOC digests differ."""
    layer = make_tar(edge_case_entries())
    listed = ["etc/passwd", "usr/bin/many", "dev/fifo"]
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    new, new_toc = upstream_layer(ORACLE_GEN, tmp_path / "new", layer, listed)
    old, old_toc = upstream_layer(ORACLE_GEN_V012, tmp_path / "old", layer, listed)
    assert toc_names(new) == toc_names(old)
    assert new_toc != old_toc
    offsets = []
    for path in (new, old):
        with path.open("rb") as fh:
            offsets.append([e.offset for e in open_estargz(fh).entries if e.offset])
    assert len(offsets[0]) == len(offsets[1]) > 10
    assert [n - o for n, o in zip(*offsets, strict=True)] == [5 * (k + 1) for k in range(len(offsets[0]))]
