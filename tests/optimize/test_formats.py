"""Upstream's format flags through the real CLI: --zstdchunked, --estargz-min-chunk-size,
--estargz-external-toc, --estargz-gzip-helper/--GH, --estargz-parallelism, and --reuse of
zstd:chunked layers. Every image is checked by the oracle (upstream v0.14.3's reader) and by our
own `image check`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ctr_remote.estargz import (
    EXTERNAL_TOC_LAYER_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    ZSTD_CHECKSUM_ANNOTATIONS,
    ZSTD_POSITION_ANNOTATIONS,
)
from ctr_remote.image import mediatypes as mt
from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli
from tests.optimize.test_optimize import assert_app_prioritized, layers_of, read_layout_json


def local_source(workdir: Path) -> Path:
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return src


REF_NAME = "org.opencontainers.image.ref.name"


def layout_manifest(layout: Path, name: str | None = None) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    entries = [
        m for m in index["manifests"] if name is None or (m.get("annotations") or {}).get(REF_NAME) == name
    ]
    assert len(entries) == 1, index
    return read_layout_json(layout, entries[0]["digest"])


def image_check(cli: Cli, ref: str) -> dict[str, Any]:
    run = cli("image", "check", "--plain-http", "--output", "json", "--strict", ref)
    return json.loads(run.stdout)


def test_zstdchunked_registry_to_registry(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    run = cli.optimize("--oci", "--zstdchunked", registry.ref("app:src"), registry.ref("app:zstd"))
    report = oracle.check_image(f"{registry.host}/app:zstd")
    assert report["manifests"][0]["digest"] == run.digest
    assert_app_prioritized(report)  # landmarks and prioritized files as for gzip
    for layer in layers_of(report):
        assert layer["mediaType"] == mt.OCI_LAYER_ZSTD and layer["blob"]["format"] == "zstd:chunked"
    ours = image_check(cli, f"http://{registry.host}/app:zstd")
    layers = ours["manifests"][0]["layers"]
    assert [layer["format"] for layer in layers] == ["zstd:chunked"] * 3 and ours["ok"]
    # Both annotation pairs, naming the blob's TOC.
    with open_store(registry.reference("app:zstd"), registry.options()) as store:
        manifest = json.loads(store.read_manifest(store.resolve()))
    for desc, checked in zip(manifest["layers"], layers_of(report), strict=True):
        ann = desc["annotations"]
        assert {ann[n] for n in ZSTD_CHECKSUM_ANNOTATIONS} == {checked["blob"]["zstd_manifest_checksum"]}
        assert {ann[n] for n in ZSTD_POSITION_ANNOTATIONS} == {checked["blob"]["zstd_manifest_position"]}


def test_reuse_recognises_zstdchunked_layers(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src = local_source(workdir)
    first, second = workdir / "first", workdir / "second"
    cli.optimize("--oci", "--zstdchunked", "--no-optimize", f"local://{src}", f"local://{first}")
    first_layers = [layer["digest"] for layer in layers_of(oracle.check_image(first))]
    run = cli.optimize(
        "--reuse", "--no-optimize", "--oci", "--zstdchunked", f"local://{first}", f"local://{second}"
    )
    copied = [e["digest"] for e in run.events if e["event"] == "no access occur; copying without conversion"]
    assert sorted(copied) == sorted(first_layers)
    layers = layers_of(oracle.check_image(second))
    assert [layer["digest"] for layer in layers] == first_layers
    assert {layer["mediaType"] for layer in layers} == {mt.OCI_LAYER_ZSTD}


def test_min_chunk_size(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst, plist = local_source(workdir), workdir / "dst", workdir / "list"
    plist.write_text("app/data.txt\n/etc/motd\n")
    cli.optimize(
        "--estargz-min-chunk-size", "65536", "--prefetch-list", str(plist), f"local://{src}", f"local://{dst}"
    )
    report = oracle.check_image(dst, older_reader=False)  # v0.12 ignores innerOffset
    layers = layers_of(report)
    assert sum(layer["blob"]["inner_offset_chunks"] for layer in layers) > 0
    assert "app/data.txt" in layers[2]["blob"]["prioritized"]
    assert image_check(cli, f"local://{dst}")["ok"]


def test_external_toc_registry(cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    run = cli.optimize(
        "--estargz-external-toc", "--no-optimize", registry.ref("app:src"), registry.ref("app:ext")
    )
    lines = run.stdout.strip().splitlines()
    assert lines[-2:] == [f"extra image: {registry.ref('app:ext-esgztoc')}", run.digest]
    with open_store(registry.reference("app:ext"), registry.options()) as store:
        manifest = json.loads(store.read_manifest(store.resolve()))
    with open_store(registry.reference("app:ext-esgztoc"), registry.options()) as store:
        toc_manifest = json.loads(store.read_manifest(store.resolve()))
    toc_blobs = {d["annotations"][EXTERNAL_TOC_LAYER_ANNOTATION]: d["digest"] for d in toc_manifest["layers"]}
    # Upstream's TOC image: config {}, one gzip layer per converted layer, sorted by digest.
    assert toc_manifest["config"]["size"] == 2
    digests = [d["digest"] for d in toc_manifest["layers"]]
    assert digests == sorted(digests) and set(toc_blobs) == {d["digest"] for d in manifest["layers"]}
    # The oracle finds each layer's TOC in app:ext-esgztoc as the snapshotter does (v0.14.3 only:
    # v0.12 has no external TOC).
    report = oracle.check_image(f"{registry.host}/app:ext", older_reader=False)
    assert report["manifests"][0]["digest"] == run.digest
    for layer in layers_of(report):
        toc = f"{registry.ref('app:ext-esgztoc')}@{toc_blobs[layer['digest']]}"
        assert layer["external_toc"] == toc and layer["blob"]["footer_size"] == 46, layer
    ours = image_check(cli, f"http://{registry.host}/app:ext")
    assert ours["ok"] and {la["format"] for la in ours["manifests"][0]["layers"]} == {"estargz-external-toc"}


def test_external_toc_layout_entry(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst = local_source(workdir), workdir / "dst"
    run = cli.optimize("--estargz-external-toc", "--no-optimize", f"local://{src}", f"local://{dst}:v1")
    assert run.stdout.strip().splitlines()[-2] == f"extra image: local://{dst}:v1-esgztoc"
    toc = layout_manifest(dst, "v1-esgztoc")
    assert len(toc["layers"]) == 3
    tocs = {d["annotations"][EXTERNAL_TOC_LAYER_ANNOTATION]: d["digest"] for d in toc["layers"]}
    report = oracle.check_image(f"local://{dst}:v1", older_reader=False)
    for layer in layers_of(report):
        assert layer["external_toc"] == f"local://{dst}:v1-esgztoc@{tocs[layer['digest']]}", layer
    assert image_check(cli, f"local://{dst}:v1")["ok"]
    p = cli.optimize(
        "--estargz-external-toc", f"local://{src}", f"local://{workdir / 'untagged'}", check=False
    )
    assert p.returncode == 1 and "needs a target with local://DIR:NAME" in p.error


def test_the_oracle_rejects_a_layer_whose_toc_image_is_wrong_or_missing(
    cli: Cli, workdir: Path, oracle: Oracle
) -> None:
    """The oracle really reads the -esgztoc image: each layer given another layer's TOC fails its TOC
    digest, and without the TOC image every layer is an error naming it."""
    src, dst = local_source(workdir), workdir / "dst"
    cli.optimize("--estargz-external-toc", "--no-optimize", f"local://{src}", f"local://{dst}:v1")
    oracle.check_image(f"local://{dst}:v1", older_reader=False)
    index = json.loads((dst / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"][REF_NAME] == "v1-esgztoc"]
    toc = read_layout_json(dst, entry["digest"])
    owners = [d["annotations"][EXTERNAL_TOC_LAYER_ANNOTATION] for d in toc["layers"]]
    for d, owner in zip(toc["layers"], owners[1:] + owners[:1], strict=True):
        d["annotations"][EXTERNAL_TOC_LAYER_ANNOTATION] = owner  # each TOC now claims the next layer
    data = json.dumps(toc).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (dst / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    entry.update(digest=digest, size=len(data))
    (dst / "index.json").write_text(json.dumps(index))
    swapped = oracle.image(f"local://{dst}:v1")
    assert not swapped.ok
    for layer in owners:  # the report names a layer by its digest's first 19 characters
        assert any(
            f"{layer[:19]}: blob: TOC digest" in e and "differs from the expected" in e
            for e in swapped.report["errors"]
        ), swapped.report["errors"]

    index["manifests"].remove(entry)
    (dst / "index.json").write_text(json.dumps(index))
    missing = oracle.image(f"local://{dst}:v1")
    assert not missing.ok
    for layer in owners:
        assert any(
            f"{layer[:19]}: its TOC is external: TOC image local://{dst}:v1-esgztoc" in e
            for e in missing.report["errors"]
        ), missing.report["errors"]


def test_gzip_helper_and_parallelism_give_the_same_image(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src = local_source(workdir)
    digests = {
        args: cli.optimize(*args, "--no-optimize", f"local://{src}", f"local://{workdir / str(i)}").digest
        for i, args in enumerate(
            [(), ("--GH", "pigz"), ("--estargz-gzip-helper", "igzip"), ("--estargz-parallelism", "1")]
        )
    }
    assert len(set(digests.values())) == 1, digests
    oracle.check_image(workdir / "1")


def test_get_toc_digest_reads_every_format(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src = local_source(workdir)
    for i, args in enumerate(
        [("--oci", "--zstdchunked"), ("--estargz-external-toc",), ("--estargz-min-chunk-size", "9999")]
    ):
        dst = f"local://{workdir / 'out'}:f{i}"
        cli.optimize(*args, "--no-optimize", f"local://{src}", dst)
        oracle.check_image(dst, older_reader=False)  # none of the three is read by v0.12
        layer = layout_manifest(workdir / "out", f"f{i}")["layers"][2]
        run = cli("image", "get-toc-digest", dst, layer["digest"])
        assert run.stdout.strip() == layer["annotations"][TOC_DIGEST_ANNOTATION]
