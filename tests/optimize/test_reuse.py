"""`--reuse`: a source layer is copied as it is only when it is eStargz that verifies against its own
TOC digest annotation (upstream's test); any other layer is converted. Each case is one image of two
layers: a good eStargz layer (to be copied) and the case's layer (copied only in the "right" case),
converted with `--no-optimize`, so every layer is a candidate for reuse."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.estargz import BuildOptions, build
from ctr_remote.image import digest_bytes, open_store, parse_reference
from ctr_remote.image import mediatypes as mt
from tests.conftest import Oracle
from tests.estargz.layers import pattern
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.oci import BuiltImage, _blob
from tests.helpers.sample import publish
from tests.optimize.conftest import Cli

pytestmark = pytest.mark.unit

TOC = "containerd.io/snapshot/stargz/toc.digest"
USIZE = "io.containers.estargz.uncompressed-size"
COPIED = "no access occur; copying without conversion"


def _layer_tar(name: str) -> bytes:
    return (
        LayerBuilder()
        .file(f"{name}/small.txt", b"small\n")
        .file(f"{name}/big.bin", pattern(300_000, len(name)))
        .tar_bytes()
    )


def _estargz(raw: bytes, chunk_size: int = 4 << 20) -> tuple[bytes, dict[str, str], str]:
    """The layer as eStargz: its blob, its correct annotations and its diff ID."""
    out = io.BytesIO()
    res = build(io.BytesIO(raw), out, BuildOptions(chunk_size=chunk_size))
    return out.getvalue(), {TOC: res.toc_digest, USIZE: str(res.uncompressed_size)}, res.diff_id


def _case_layer(case: str) -> tuple[bytes, dict[str, str], str]:
    raw = _layer_tar("case")
    blob, annotations, diff_id = _estargz(raw)
    if case == "right":
        return blob, annotations, diff_id
    if case == "stale-annotation":
        # The layer was rebuilt (other chunks, so another TOC); the annotation is the old build's.
        blob, _, diff_id = _estargz(raw, chunk_size=4096)
        return blob, annotations, diff_id
    if case == "wrong-annotation":
        return blob, {**annotations, TOC: "sha256:" + "0" * 64}, diff_id
    if case == "no-annotation":
        return blob, {}, diff_id
    if case == "plain-gzip":
        return gzip.compress(raw, mtime=0), {}, digest_bytes(raw)
    raise AssertionError(case)


def _source(workdir: Path, case: str) -> tuple[Path, list[str]]:
    """An OCI layout of [good eStargz layer, the case's layer]; returns it and the layer digests."""
    good_blob, good_annotations, good_diff_id = _estargz(_layer_tar("good"))
    case_blob, case_annotations, case_diff_id = _case_layer(case)
    layers = (
        _blob(good_blob, mt.OCI_LAYER_GZIP, annotations=good_annotations),
        _blob(case_blob, mt.OCI_LAYER_GZIP, annotations=case_annotations or None),
    )
    cfg = image_config(cmd=["/bin/sh"])
    cfg["rootfs"]["diff_ids"] = [good_diff_id, case_diff_id]
    config = _blob(json.dumps(cfg, sort_keys=True).encode(), mt.OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config.desc.to_json(),
        "layers": [b.desc.to_json() for b in layers],
    }
    image = BuiltImage(layers, config, _blob(json.dumps(manifest).encode(), mt.OCI_MANIFEST))
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, image, workdir / "push")
    return src, [b.desc.digest for b in layers]


def _manifest(layout: Path, report: dict[str, Any]) -> dict[str, Any]:
    digest = report["manifests"][0]["digest"].removeprefix("sha256:")
    return json.loads((layout / "blobs" / "sha256" / digest).read_bytes())


@pytest.mark.parametrize(
    "case", ["right", "stale-annotation", "wrong-annotation", "no-annotation", "plain-gzip"]
)
def test_reuse_copies_only_layers_that_verify_against_their_toc_annotation(
    cli: Cli, workdir: Path, oracle: Oracle, case: str
) -> None:
    src, (good, layer) = _source(workdir, case)
    dst = workdir / "dst"
    run = cli.optimize("--reuse", "--no-optimize", f"local://{src}", f"local://{dst}")
    copied = {e["digest"] for e in run.events if e["event"] == COPIED}
    converted = {e["source"] for e in run.events if e["event"] == "converted"}
    assert good in copied and good not in converted, run.events
    if case == "right":
        assert layer in copied and layer not in converted, run.events
    else:
        assert layer in converted and layer not in copied, f"{case}: the layer was reused: {run.events}"
    # The oracle, strict at every level: a copied stale layer fails its TOC check, a copied layer
    # without the annotation warns that it will not be lazily pulled, a copied plain-gzip layer is
    # not eStargz.
    report = oracle.check_image(dst)
    out = _manifest(dst, report)["layers"]
    blobs = [layer["blob"] for layer in report["manifests"][0]["layers"]]
    assert out[0]["digest"] == good
    if case == "right":
        assert out[1]["digest"] == layer
    for desc, blob in zip(out, blobs, strict=True):
        assert desc["annotations"][TOC] == blob["toc_digest"]
        assert desc["annotations"][USIZE] == str(blob["uncompressed_size"])
