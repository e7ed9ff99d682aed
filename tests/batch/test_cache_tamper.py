"""A tampered or corrupt layer cache entry, in the registry (`--cache-ref`) or in `--cache-dir`: the
batch still writes the images a run without cache writes, warns once naming the entry, converts the
layer again and (where it can) writes the entry anew. Tampering goes through the registry's HTTP API
or its storage directory, and through the cache directory's files."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ctr_remote.estargz import TOC_DIGEST_ANNOTATION
from ctr_remote.image import Descriptor, media_types, open_store, parse_manifest
from tests.batch.fleet import SHARED, batch_file, publish_fleet
from tests.batch.test_batch_registry import digests, outcomes, report
from tests.conftest import Oracle
from tests.helpers.registry import RegistryServer
from tests.optimize.conftest import Cli, Run

UNUSABLE = "layer cache entry unusable: converting the layer again"
LAYERS = (SHARED + 1) * 2  # layer reports of the two-image fleet


def warnings(run: Run) -> list[dict[str, object]]:
    return [e for e in run.events if e["event"] == UNUSABLE]


def batch(cli: Cli, workdir: Path, name: str, *args: str) -> tuple[Run, dict[str, Any]]:
    rep = workdir / f"{name}.json"
    run = cli("--log-format", "json", "batch", "--jobs", "1", "--report", str(rep), *args)
    return run, report(rep)


@pytest.fixture
def fleet(registry: RegistryServer, workdir: Path, cli: Cli) -> tuple[Path, dict[str, str]]:
    """The batch file of a two-image fleet, and the digests a run without any cache gives."""
    file = batch_file(workdir / "batch.yaml", publish_fleet(registry, workdir, 2), "esgz")
    _, rep = batch(cli, workdir, "plain", str(file))
    return file, digests(rep)


def tags(reg: RegistryServer, repo: str) -> list[str]:
    return sorted(httpx.get(reg.url(f"/v2/{repo}/tags/list")).json()["tags"])


def read_entry(reg: RegistryServer, repo_tag: str) -> tuple[bytes, Any]:
    with open_store(reg.reference(repo_tag), reg.options()) as store:
        top = store.resolve()
        data = store.read_manifest(top)
    return data, parse_manifest(data, top.media_type)


def push_manifest(reg: RegistryServer, repo_tag: str, data: bytes, media_type: str) -> None:
    with open_store(reg.reference(repo_tag), reg.options()) as store:
        store.push_manifest(data, Descriptor.of(data, media_type), top=True)


def push_config(reg: RegistryServer, repo_tag: str, data: bytes, workdir: Path) -> Descriptor:
    from ctr_remote.layercache.registry import CONFIG_MEDIA_TYPE

    path = workdir / "config.tampered"
    path.write_bytes(data)
    desc = Descriptor.of(data, CONFIG_MEDIA_TYPE)
    with open_store(reg.reference(repo_tag), reg.options()) as store:
        store.push_blob(path, desc)
    return desc


def tamper_entry(kind: str, reg: RegistryServer, repo: str, workdir: Path) -> str:
    """Spoil one entry of the registry cache `repo` the way `kind` says; its tag."""
    entries = tags(reg, repo)
    tag = entries[0]
    data, manifest = read_entry(reg, f"{repo}:{tag}")
    _, other = read_entry(reg, f"{repo}:{entries[1]}")
    layer = manifest.layers[0]
    if kind == "not-a-cache-manifest":  # the tag moved to an ordinary image
        data, image = read_entry(reg, "app0:src")
        for d in (image.config, *image.layers):
            url = reg.url(f"/v2/{repo}/blobs/uploads/?mount={d.digest}&from=app0")
            assert httpx.post(url).status_code == 201
        push_manifest(reg, f"{repo}:{tag}", data, image.media_type)
        return tag
    if kind == "config-not-json":
        layers = manifest.layers
        manifest = replace(manifest, config=push_config(reg, f"{repo}:{tag}", b"{not json", workdir))
        manifest = replace(manifest, layers=layers)
    elif kind == "other-blob":  # another entry's layer: its digest checks, it is the wrong layer
        manifest = replace(manifest, layers=[other.layers[0]])
    elif kind == "toc-annotation":
        toc = (other.layers[0].annotations or {})[TOC_DIGEST_ANNOTATION]
        manifest = replace(
            manifest,
            layers=[replace(layer, annotations={**(layer.annotations or {}), TOC_DIGEST_ANNOTATION: toc})],
        )
    elif kind == "added-annotation":
        annotations = {**(layer.annotations or {}), "org.example.note": "injected"}
        manifest = replace(manifest, layers=[replace(layer, annotations=annotations)])
    elif kind == "wrong-size":
        manifest = replace(manifest, layers=[replace(layer, size=layer.size - 1)])
    elif kind == "deleted-blob":  # (a manifest naming an unknown blob is refused: 400)
        assert httpx.delete(reg.url(f"/v2/{repo}/blobs/{layer.digest}")).status_code == 202
        return tag
    else:
        raise AssertionError(kind)
    push_manifest(reg, f"{repo}:{tag}", manifest.to_bytes(), media_types.OCI_MANIFEST)
    return tag


@pytest.mark.parametrize(
    "kind",
    [
        "other-blob",
        "toc-annotation",
        "added-annotation",
        "wrong-size",
        "deleted-blob",
        "not-a-cache-manifest",
        "config-not-json",
    ],
)
def test_a_tampered_registry_cache_entry_is_converted_again_and_pushed_anew(
    kind: str,
    cli: Cli,
    registry: RegistryServer,
    fleet: tuple[Path, dict[str, str]],
    workdir: Path,
    oracle: Oracle,
) -> None:
    file, plain = fleet
    cache = ["--plain-http", "--cache-ref", registry.ref("ci/cache")]
    _, first = batch(cli, workdir, "first", *cache, str(file))
    assert outcomes(first) == {"converted": SHARED + 2, "cached": SHARED}
    tag = tamper_entry(kind, registry, "ci/cache", workdir)
    run, rep = batch(cli, workdir, "tampered", *cache, str(file))
    assert digests(rep) == plain
    assert outcomes(rep) == {"converted": 1, "cached": LAYERS - 1}
    (warned,) = warnings(run)
    assert f"ci/cache:{tag}" in str(warned["entry"]) and warned["level"] == "warning"
    oracle.check_batch(rep)
    # The entry was pushed anew: a machine with an empty cache directory takes every layer from it.
    again, rep = batch(cli, workdir, "again", *cache, str(file))
    assert outcomes(rep) == {"cached": LAYERS} and not warnings(again)
    assert digests(rep) == plain


def test_a_blob_corrupt_in_the_cache_registrys_storage_is_never_used(
    cli: Cli,
    registry_factory: Callable[..., RegistryServer],
    registry: RegistryServer,
    fleet: tuple[Path, dict[str, str]],
    workdir: Path,
    oracle: Oracle,
) -> None:
    """The registry serves the bytes it stores under a digest whatever they are; a registry of its
    own for the cache, as a registry keeps one copy of a digest for all its repositories."""
    file, plain = fleet
    shared = registry_factory("plain")
    cache = ["--plain-http", "--cache-ref", shared.ref("ci/cache")]
    batch(cli, workdir, "first", *cache, str(file))
    tag = tags(shared, "ci/cache")[0]
    _, manifest = read_entry(shared, f"ci/cache:{tag}")
    hexd = manifest.layers[0].digest.removeprefix("sha256:")
    (data,) = shared.root.glob(f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data")
    with open(data, "r+b") as f:  # same size, other bytes
        f.seek(manifest.layers[0].size // 2)
        f.write(b"\xff" * 8)
    run, rep = batch(cli, workdir, "tampered", *cache, str(file))
    assert digests(rep) == plain
    assert outcomes(rep) == {"converted": 1, "cached": LAYERS - 1}
    (warned,) = warnings(run)
    assert f"ci/cache:{tag}" in str(warned["entry"])
    oracle.check_batch(rep)


def corrupt_dir_entry(kind: str, cache: Path) -> Path:
    """Spoil one entry of the cache directory the way `kind` says; the key file that names it."""
    keys = sorted((cache / "keys").glob("*.json"))
    key, other = keys[0], keys[1]
    doc = json.loads(key.read_text())
    blob = cache / "blobs" / doc["desc"]["digest"].removeprefix("sha256:")
    if kind == "truncated-blob":
        blob.write_bytes(blob.read_bytes()[: doc["desc"]["size"] // 2])
    elif kind == "truncated-key":
        key.write_bytes(key.read_bytes()[:40])
    elif kind == "other-blob":  # another entry's blob: it is whole, and the wrong layer
        doc["desc"] = json.loads(other.read_text())["desc"]
        key.write_text(json.dumps(doc))
    elif kind == "diff-id":
        doc["diff_id"] = json.loads(other.read_text())["diff_id"]
        key.write_text(json.dumps(doc))
    elif kind == "toc-annotation":
        doc["desc"]["annotations"][TOC_DIGEST_ANNOTATION] = "sha256:" + "0" * 64
        key.write_text(json.dumps(doc))
    else:
        raise AssertionError(kind)
    return key


@pytest.mark.parametrize(
    "kind", ["truncated-blob", "truncated-key", "other-blob", "diff-id", "toc-annotation"]
)
def test_a_corrupt_cache_dir_entry_is_converted_again_and_rewritten(
    kind: str, cli: Cli, fleet: tuple[Path, dict[str, str]], workdir: Path, oracle: Oracle
) -> None:
    file, plain = fleet
    cache = workdir / "cache"
    batch(cli, workdir, "first", "--cache-dir", str(cache), str(file))
    key = corrupt_dir_entry(kind, cache)
    run, rep = batch(cli, workdir, "corrupt", "--cache-dir", str(cache), str(file))
    assert digests(rep) == plain
    assert outcomes(rep) == {"converted": 1, "cached": LAYERS - 1}
    (warned,) = warnings(run)
    assert warned["entry"] == str(key)
    oracle.check_batch(rep)
    again, rep = batch(cli, workdir, "again", "--cache-dir", str(cache), str(file))
    assert outcomes(rep) == {"cached": LAYERS} and not warnings(again)
    assert Counter(digests(rep).values()) == Counter(plain.values())


@pytest.mark.parametrize(
    "flags",
    [
        {"zstdchunked": True},
        {"estargz": True, "estargz_external_toc": True},
        {"estargz": True, "estargz_min_chunk_size": 65536},
        {"uncompress": True},
        {"estargz": True, "oci": False},  # Docker media types
    ],
    ids=["zstdchunked", "external-toc", "min-chunk-size", "uncompress", "docker"],
)
def test_good_entries_of_every_format_pass_verification(
    flags: dict[str, Any], cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """Verification measures what the conversion wrote, in each layout: a second run takes every
    layer from the directory, a third (empty directory) from the registry, without a warning."""
    sources = publish_fleet(registry, workdir, 2)
    jobs = [
        {"convert": {"name": f"app{i}", "source": s, "target": s.replace(":src", ":out"), **flags}}
        for i, s in enumerate(sources)
    ]
    file = workdir / "batch.yaml"
    file.write_text(yaml.safe_dump({"defaults": {"plain_http": True, "oci": True}, "jobs": jobs}))
    cache = ["--cache-dir", str(workdir / "cache"), "--plain-http", "--cache-ref", registry.ref("ci/cache")]
    _, first = batch(cli, workdir, "first", *cache, str(file))
    assert outcomes(first) == {"converted": SHARED + 2, "cached": SHARED}
    again, rep = batch(cli, workdir, "again", *cache, str(file))
    assert outcomes(rep) == {"cached": LAYERS} and not warnings(again)
    fresh = ["--plain-http", "--cache-ref", registry.ref("ci/cache")]
    remote, rep = batch(cli, workdir, "remote", *fresh, str(file))
    assert outcomes(rep) == {"cached": LAYERS} and not warnings(remote)
    assert digests(rep) == digests(first)
    if "estargz_external_toc" in flags:  # the oracle reads such a layer with its TOC blob at hand
        for key in (workdir / "cache" / "keys").glob("*.json"):
            doc = json.loads(key.read_text())
            blob, toc = (
                workdir / "cache" / "blobs" / doc[k]["digest"].removeprefix("sha256:")
                for k in ("desc", "toc")
            )
            toc_digest = doc["desc"]["annotations"][TOC_DIGEST_ANNOTATION]
            oracle.check_blob(blob, toc_digest, older_reader=False, external_toc=toc)
    else:
        older = not ({"zstdchunked", "estargz_min_chunk_size"} & set(flags))
        oracle.check_image(
            f"{registry.host}/app0:out", older_reader=older, all_estargz="uncompress" not in flags
        )
