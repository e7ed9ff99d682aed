"""`image convert`: record replay gives optimize's order, no root needed, upstream's flag rules."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.estargz import EXTERNAL_TOC_LAYER_ANNOTATION, TOC_DIGEST_ANNOTATION, open_estargz
from ctr_remote.image import Descriptor, open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli

NOBODY = 65534


def layers(report: dict[str, Any], manifest: int = 0) -> list[dict[str, Any]]:
    return report["manifests"][manifest]["layers"]


def files(layer: dict[str, Any]) -> list[str]:
    """The prioritized files, without the directories that move with them."""
    names = [p.rstrip("/") for p in layer["blob"]["prioritized"] or []]
    return [p for p in names if not any(other.startswith(p + "/") for other in names)]


@pytest.fixture
def source(registry: RegistryServer, workdir: Path) -> str:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    return f"http://{registry.host}/app:src"


@pytest.mark.parametrize("fmt", ["estargz", "zstdchunked"])
def test_record_replay_gives_the_optimize_run_s_order_and_digests(
    cli: Cli, registry: RegistryServer, source: str, workdir: Path, oracle: Oracle, fmt: str
) -> None:
    record = workdir / "record.json"
    formats = ["--zstdchunked"] if fmt == "zstdchunked" else []
    cli.optimize(
        "--oci", *formats, "--record-out", str(record), source, f"http://{registry.host}/app:optimized"
    )
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert {line["layerIndex"] for line in lines} == {0, 2}  # busybox and passwd; the app and its data

    run = cli(
        "--log-format", "json", "image", "convert", "--plain-http", f"--{fmt}", "--oci",
        f"--{fmt}-record-in", str(record), source, f"http://{registry.host}/app:converted",
    )  # fmt: skip
    older = fmt == "estargz"  # v0.12 reads no zstd:chunked
    optimized = oracle.check_image(f"{registry.host}/app:optimized", older_reader=older)
    converted = oracle.check_image(f"{registry.host}/app:converted", older_reader=older)
    assert run.stdout.strip().splitlines()[-1] == converted["manifests"][0]["digest"]
    assert [files(la) for la in layers(converted)] == [files(la) for la in layers(optimized)]
    assert "app/data.txt" in files(layers(converted)[2])
    # Same source, same options, same lists: the same blobs (reproducible conversion).
    assert [la["digest"] for la in layers(converted)] == [la["digest"] for la in layers(optimized)]
    assert not [e for e in run.events if e["level"] == "warning"]


def test_a_record_of_another_image_warns_and_replays_by_name(
    cli: Cli, registry: RegistryServer, source: str, workdir: Path, oracle: Oracle
) -> None:
    record = workdir / "other.json"
    other = "sha256:" + "0" * 64
    record.write_text(
        "".join(
            json.dumps({"path": p, "manifestDigest": other, "layerIndex": 9}) + "\n"
            for p in ("app/run.sh", "./etc//motd", "bin/busybox", "not/in/any/layer")
        )
    )
    run = cli(
        "--log-format", "json", "image", "convert", "--plain-http", "--estargz", "--oci",
        "--estargz-record-in", str(record), source, f"http://{registry.host}/app:byname",
    )  # fmt: skip
    warnings = [e for e in run.events if e["level"] == "warning"]
    assert len(warnings) == 1 and "names no manifest of the source" in str(warnings[0]["event"])
    assert other in str(warnings[0]["recorded"])
    report = oracle.check_image(f"{registry.host}/app:byname")
    # By name, as upstream, in the layer the merged image takes each path from (etc/motd: the app's).
    assert [files(la) for la in layers(report)] == [["bin/busybox"], [], ["app/run.sh", "etc/motd"]]


def test_without_a_record_nothing_is_prioritized(
    cli: Cli, registry: RegistryServer, source: str, oracle: Oracle
) -> None:
    cli("image", "convert", "--plain-http", "--estargz", source, f"http://{registry.host}/app:plain")
    report = oracle.check_image(f"{registry.host}/app:plain")
    assert [la["blob"]["landmark"] for la in layers(report)] == ["no-prefetch"] * 3


def _as_nobody(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-m", "ctr_remote", *args],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_runs_as_an_ordinary_user(
    registry: RegistryServer, source: str, workdir: Path, oracle: Oracle
) -> None:
    """uid 65534: registry to a layout it may write, and that layout back to a registry."""
    home = workdir / "nobody"
    (home / "tmp").mkdir(parents=True)
    (home / "docker").mkdir()
    os.chown(workdir, NOBODY, NOBODY)
    for d in (home, home / "tmp", home / "docker"):
        os.chown(d, NOBODY, NOBODY)
    record = workdir / "record.json"
    record.write_text(json.dumps({"path": "app/run.sh", "manifestDigest": "sha256:" + "1" * 64}) + "\n")
    env = {
        **os.environ,
        "TMPDIR": str(home / "tmp"),
        "DOCKER_CONFIG": str(home / "docker"),
        "HOME": str(home),
    }
    layout = home / "out"
    p = _as_nobody(env, "image", "convert", "--plain-http", "--estargz", "--oci",
                   "--estargz-record-in", str(record), source, f"local://{layout}")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert layout.stat().st_uid == NOBODY
    report = oracle.check_image(layout)
    assert files(layers(report)[2]) == ["app/run.sh"]
    p = _as_nobody(env, "image", "convert", "--plain-http", "--estargz", f"local://{layout}",
                   f"http://{registry.host}/app:from-nobody")  # fmt: skip
    assert p.returncode == 0, p.stderr
    oracle.check_image(f"{registry.host}/app:from-nobody")
    assert not list((home / "tmp").iterdir())


def test_uncompress_writes_plain_tar_layers(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst = workdir / "src", workdir / "dst"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image([LayerBuilder().busybox()], docker=True), workdir / "push")
    cli("image", "convert", "--uncompress", f"local://{src}", f"local://{dst}")
    check = cli("image", "check", "--output", "json", f"local://{dst}")
    (layer,) = layers(json.loads(check.stdout))
    assert layer["format"] == "tar" and layer["ok"]
    assert layer["digest"] == layer["diff_id"] == layer["config_diff_id"]
    assert layer["media_type"] == "application/vnd.docker.image.rootfs.diff.tar"  # Docker types kept
    (checked,) = layers(oracle.check_image(dst, all_estargz=False))
    assert checked["digest"] == checked["diff_id"] == checked["config_diff_id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "specify layer converter"),
        (["--estargz", "--uncompress"], "option --estargz conflicts with --uncompress"),
        (["--zstdchunked"], "option --zstdchunked must be used in conjunction with --oci"),
        (["--estargz", "--estargz-keep-diff-id"], "must be used with --estargz-external-toc"),
        (
            [
                "--estargz",
                "--estargz-external-toc",
                "--estargz-keep-diff-id",
                "--estargz-record-in",
                "/dev/null",
            ],
            "option --estargz-keep-diff-id conflicts with --estargz-record-in",
        ),
        (
            ["--estargz", "--estargz-external-toc", "--estargz-keep-diff-id", "--reuse"],
            'can\'t be used with "reuse" flag',
        ),
        (["--uncompress", "--estargz-record-in", "/dev/null"], "--estargz-record-in needs --estargz"),
        (["--estargz", "--platform", "linux/amd64", "--all-platforms"], "can't be used with --all-platforms"),
    ],
)
def test_flag_rules_are_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    run = cli("image", "convert", *args, "local:///nonexistent/a", "local:///nonexistent/b", check=False)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_a_malformed_record_names_its_line(cli: Cli, workdir: Path) -> None:
    record = workdir / "bad.json"
    record.write_text('{"path": "a", "manifestDigest": "sha256:x", "layerIndex": 0}\nnot json\n')
    run = cli("image", "convert", "--estargz", "--estargz-record-in", str(record), "local:///x/a", "local:///x/b",
              check=False)  # fmt: skip
    assert run.returncode == 2 and f"{record}:2: not a record line" in run.stderr, run.stderr


def _pull(
    registry: RegistryServer, tag: str, into: Path
) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    """An image's manifest, config and layer blobs (as files under `into`)."""
    into.mkdir()
    with open_store(registry.reference(tag), registry.options()) as store:
        manifest = json.loads(store.read_manifest(store.resolve()))
        blobs = []
        for d in [manifest["config"], *manifest["layers"]]:
            path = into / d["digest"].replace(":", "-")
            store.fetch_blob(Descriptor.from_json(d), path)
            blobs.append(path)
    return manifest, json.loads(blobs[0].read_bytes()), blobs[1:]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_keep_diff_id_keeps_every_layer_s_tar(
    cli: Cli, registry: RegistryServer, source: str, workdir: Path, oracle: Oracle
) -> None:
    kept = f"http://{registry.host}/app:kept"
    run = cli("image", "convert", "--plain-http", "--estargz", "--oci", "--estargz-external-toc",
              "--estargz-keep-diff-id", source, kept)  # fmt: skip
    assert run.stdout.strip().splitlines()[-2] == f"extra image: {kept}-esgztoc"
    _, src_config, src_blobs = _pull(registry, "app:src", workdir / "src")
    manifest, config, blobs = _pull(registry, "app:kept", workdir / "kept")
    toc_manifest, _, toc_blobs = _pull(registry, "app:kept-esgztoc", workdir / "tocs")
    tocs = {
        d["annotations"][EXTERNAL_TOC_LAYER_ANNOTATION]: p
        for d, p in zip(toc_manifest["layers"], toc_blobs, strict=True)
    }
    # The oracle finds each layer's TOC in app:kept-esgztoc, as the snapshotter does (v0.14.3 only).
    report = oracle.check_image(f"{registry.host}/app:kept", ("no landmark",), older_reader=False)
    assert [la["external_toc"].rpartition("@")[2] for la in layers(report)] == [
        "sha256:" + tocs[d["digest"]].name.removeprefix("sha256-") for d in manifest["layers"]
    ]
    # The config's diff IDs are the source's: each blob decompresses to the source layer's tar.
    assert config["rootfs"]["diff_ids"] == src_config["rootfs"]["diff_ids"]
    for desc, blob, src, diff_id, checked in zip(
        manifest["layers"], blobs, src_blobs, config["rootfs"]["diff_ids"], layers(report), strict=True
    ):
        assert (
            _sha256(gzip.decompress(blob.read_bytes()))
            == _sha256(gzip.decompress(src.read_bytes()))
            == diff_id
            == checked["diff_id"]
        )
        toc_digest = desc["annotations"][TOC_DIGEST_ANNOTATION]
        with blob.open("rb") as fh:  # every file reads back through the external TOC
            reader = open_estargz(fh, tocs[desc["digest"]].read_bytes())
            reader.verify(toc_digest)
            regular = [e for e in reader.entries if e.type == "reg" and e.size]
            assert regular and all(len(reader.read_file(e.name)) == e.size for e in regular)
    # `image check` finds the TOCs in the -esgztoc image; no landmark is no warning (by design).
    check = json.loads(cli("image", "check", "--plain-http", "--output", "json", "--strict", kept).stdout)
    assert check["ok"], check
    assert {la["format"] for la in layers(check)} == {"estargz-external-toc"}
    assert all(la["diff_id"] == la["config_diff_id"] for la in layers(check))
    # Reproducible, and idempotent: the converted image converted again gives the same layers.
    cli("image", "convert", "--plain-http", "--estargz", "--oci", "--estargz-external-toc",
        "--estargz-keep-diff-id", kept, f"http://{registry.host}/app:again")  # fmt: skip
    again, _, _ = _pull(registry, "app:again", workdir / "again")
    assert [d["digest"] for d in again["layers"]] == [d["digest"] for d in manifest["layers"]]
    oracle.check_image(f"{registry.host}/app:again", ("no landmark",), older_reader=False)


def test_reuse_converts_lossless_layers_again(
    cli: Cli, registry: RegistryServer, source: str, oracle: Oracle
) -> None:
    """--reuse copies layers that verify against their TOC digest; a keep-diff-id layer's TOC is in
    another image, so it is converted (from the same tar) instead of copied unverified."""
    kept = f"http://{registry.host}/app:kept"
    cli("image", "convert", "--plain-http", "--estargz", "--oci", "--estargz-external-toc",
        "--estargz-keep-diff-id", source, kept)  # fmt: skip
    run = cli("--log-format", "json", "image", "convert", "--plain-http", "--estargz", "--oci", "--reuse",
              kept, f"http://{registry.host}/app:reused")  # fmt: skip
    assert sum(e["event"] == "not reusable: converting" for e in run.events) == 3
    report = oracle.check_image(f"{registry.host}/app:reused")
    assert [la["blob"]["landmark"] for la in layers(report)] == ["no-prefetch"] * 3


def test_keep_diff_id_refuses_an_estargz_source(
    cli: Cli, registry: RegistryServer, source: str, oracle: Oracle
) -> None:
    """An eStargz layer's tar holds its TOC: it can be neither dropped (the diff ID would change) nor
    kept (two TOCs). One line, naming the layer."""
    esgz = f"http://{registry.host}/app:esgz"
    cli("image", "convert", "--plain-http", "--estargz", "--oci", source, esgz)
    oracle.check_image(f"{registry.host}/app:esgz")
    run = cli("--log-format", "json", "image", "convert", "--plain-http", "--estargz", "--oci",
              "--estargz-external-toc", "--estargz-keep-diff-id", esgz, f"http://{registry.host}/app:no",
              check=False)  # fmt: skip
    assert run.returncode == 1
    assert "already holds 'stargz.index.json': it cannot be converted losslessly" in run.error, run.error
