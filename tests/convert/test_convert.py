"""`image convert`: record replay gives optimize's order, no root needed, upstream's flag rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.image import open_store, parse_reference
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


def test_uncompress_writes_plain_tar_layers(cli: Cli, workdir: Path) -> None:
    src, dst = workdir / "src", workdir / "dst"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image([LayerBuilder().busybox()], docker=True), workdir / "push")
    cli("image", "convert", "--uncompress", f"local://{src}", f"local://{dst}")
    check = cli("image", "check", "--output", "json", f"local://{dst}")
    (layer,) = layers(json.loads(check.stdout))
    assert layer["format"] == "tar" and layer["ok"]
    assert layer["digest"] == layer["diff_id"] == layer["config_diff_id"]
    assert layer["media_type"] == "application/vnd.docker.image.rootfs.diff.tar"  # Docker types kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "specify layer converter"),
        (["--estargz", "--uncompress"], "option --estargz conflicts with --uncompress"),
        (["--zstdchunked"], "option --zstdchunked must be used in conjunction with --oci"),
        (["--estargz", "--estargz-keep-diff-id"], "must be used with --estargz-external-toc"),
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
