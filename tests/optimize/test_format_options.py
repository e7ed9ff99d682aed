"""The eStargz format options end to end, through the CLI: `--estargz-chunk-size` and
`--estargz-compression-level` reach the layers written, and every converted layer carries the
annotations lazy pulling needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.estargz import open_estargz
from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli

pytestmark = pytest.mark.unit

TOC = "containerd.io/snapshot/stargz/toc.digest"
USIZE = "io.containers.estargz.uncompressed-size"
# A gzip member header's XFL byte (RFC 1952): 4 "fastest" (level 1), 2 "maximum compression" (level 9).
XFL = {1: 4, 9: 2}


def _source(workdir: Path) -> Path:
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return src


def _layers(layout: Path, oracle: Oracle) -> list[tuple[dict[str, Any], Path]]:
    """Each layer of the (oracle-checked) image: its manifest descriptor and its blob."""
    report = oracle.check_image(layout)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / report["manifests"][0]["digest"].removeprefix("sha256:")).read_bytes())
    return [(d, blobs / d["digest"].removeprefix("sha256:")) for d in manifest["layers"]]


def _assert_format(layers: list[tuple[dict[str, Any], Path]], chunk_size: int, level: int) -> int:
    """Every file is cut into `chunk_size` chunks and every member is compressed at `level`;
    returns the number of chunk entries."""
    chunks = 0
    for _, path in layers:
        blob = path.read_bytes()
        with path.open("rb") as fh:
            entries = open_estargz(fh).entries
        for e in entries:
            if e.type == "reg" and e.size:
                parts = [c for c in entries if c.name == e.name and c.type in ("reg", "chunk")]
                assert len(parts) == -(-e.size // chunk_size), (e.name, e.size, chunk_size)
                assert [c.chunk_size for c in parts] == [chunk_size] * (len(parts) - 1) + [0], e.name
                chunks += len(parts) - 1
        xfl = {blob[o + 8] for o in {e.offset for e in entries if e.offset}}
        assert xfl == {XFL[level]}, f"{path.name}: gzip XFL {xfl}, not that of level {level}"
    return chunks


def test_chunk_size_and_compression_level_reach_the_layers(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src = _source(workdir)
    cli.optimize("--no-optimize", f"local://{src}", f"local://{workdir / 'default'}")
    cli.optimize(
        "--no-optimize", "--estargz-chunk-size", "65536", "--estargz-compression-level", "1",
        f"local://{src}", f"local://{workdir / 'custom'}",
    )  # fmt: skip
    default, custom = _layers(workdir / "default", oracle), _layers(workdir / "custom", oracle)
    # Defaults: 4 MiB chunks (no file here is that big: no chunk entries) at level 9.
    assert _assert_format(default, 4 << 20, 9) == 0
    # busybox alone (1.9 MB) is 30 chunks of 64 KiB after its first.
    assert _assert_format(custom, 65536, 1) >= 30
    # Level 1 compresses worse: every layer is larger (more members, too, where files are chunked).
    for (d, _), (c, _) in zip(default, custom, strict=True):
        assert c["size"] > d["size"], (d, c)


def test_converted_layers_carry_the_toc_digest_annotation(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    """The `containerd.io/snapshot/stargz/toc.digest` annotation is what makes a layer lazily
    pullable (without it the snapshotter pulls the whole layer); the uncompressed size too."""
    src = _source(workdir)
    dst = workdir / "dst"
    cli.optimize("--no-optimize", f"local://{src}", f"local://{dst}")
    manifest = json.loads((dst / "index.json").read_text())["manifests"][0]["digest"]
    layers = json.loads((dst / "blobs" / "sha256" / manifest.removeprefix("sha256:")).read_bytes())["layers"]
    for i, desc in enumerate(layers):
        annotations = desc.get("annotations") or {}
        assert TOC in annotations, f"converted layer {i} has no {TOC} annotation: {desc}"
        assert USIZE in annotations, f"converted layer {i} has no {USIZE} annotation: {desc}"
    report = oracle.check_image(dst)
    for desc, checked in zip(layers, report["manifests"][0]["layers"], strict=True):
        assert desc["annotations"][TOC] == checked["blob"]["toc_digest"]
        assert desc["annotations"][USIZE] == str(checked["blob"]["uncompressed_size"])
