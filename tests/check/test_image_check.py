"""`image check` and `get-toc-digest`: good images, each kind of damage, and the oracle's verdict."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ctr_remote.estargz import BuildOptions, build, open_estargz
from ctr_remote.image import open_store
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.optimize.conftest import Cli

TOC = "containerd.io/snapshot/stargz/toc.digest"
SIZE = "io.containers.estargz.uncompressed-size"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    blob: bytes
    diff_id: str
    annotations: dict[str, str] = field(default_factory=dict)


def estargz_layer(builder: LayerBuilder, prioritized: list[str] | None = None) -> Layer:
    out = io.BytesIO()
    res = build(io.BytesIO(builder.tar_bytes()), out, BuildOptions(prioritized_files=prioritized))
    return Layer(out.getvalue(), res.diff_id, {TOC: res.toc_digest, SIZE: str(res.uncompressed_size)})


def gzip_layer(builder: LayerBuilder) -> Layer:
    tar = builder.tar_bytes()
    return Layer(gzip.compress(tar, mtime=0), sha256(tar))


def write_layout(directory: Path, layers: list[Layer]) -> Path:
    """An OCI layout holding one image of `layers`, descriptors and diff IDs exactly as given."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        (blobs / sha256(data).split(":")[1]).write_bytes(data)
        return {"digest": sha256(data), "size": len(data)}

    config = {
        **image_config(cmd=["/bin/sh"]),
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
    }
    descs = [
        {
            "mediaType": GZIP_LAYER,
            **put(la.blob),
            **({"annotations": la.annotations} if la.annotations else {}),
        }
        for la in layers
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **put(json.dumps(config).encode()),
        },
        "layers": descs,
    }
    top = {"mediaType": manifest["mediaType"], **put(json.dumps(manifest).encode())}
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return directory


BIG = random.Random(1).randbytes(300_000)  # incompressible: deflate stores it verbatim


def good_layers() -> list[Layer]:
    base = estargz_layer(LayerBuilder().busybox().file("big.bin", BIG), ["bin/busybox"])
    top = estargz_layer(LayerBuilder().file("app/a.txt", b"a\n").file("app/b.txt", b"b\n"))
    return [base, top]


def flip_in_chunk(layer: Layer) -> Layer:
    """One byte of big.bin changed inside its gzip member, the member's CRC fixed up and the
    descriptor made to follow, as an attacker who controls the registry would: the blob is a valid
    tar.gz and only the chunk digest in the TOC can tell."""
    blob = bytearray(layer.blob)
    reader = open_estargz(io.BytesIO(layer.blob))
    entries = reader.entries
    offsets = sorted({e.offset for e in entries if e.offset} | {reader.toc_offset})
    start = next(e.offset for e in entries if e.name == "big.bin")
    end = offsets[offsets.index(start) + 1]  # the next member, where this one's trailer ends
    member = bytes(blob[start:end])
    data = bytearray(zlib.decompressobj(31).decompress(member))
    at = start + member.index(BIG[1000:1064]) + 10  # a stored byte of big.bin
    blob[at] ^= 0xFF
    data[data.index(BIG[1000:1064]) + 10] ^= 0xFF
    blob[end - 8 : end - 4] = struct.pack("<I", zlib.crc32(data))
    return Layer(bytes(blob), layer.diff_id, dict(layer.annotations))


DAMAGE = {
    "wrong TOC digest annotation": (
        lambda ls: [Layer(ls[0].blob, ls[0].diff_id, {**ls[0].annotations, TOC: sha256(b"other")}), ls[1]],
        "differs from the annotation",
    ),
    "flipped byte in a chunk": (
        lambda ls: [flip_in_chunk(ls[0]), ls[1]],
        "chunk digest mismatch in 'big.bin'",
    ),
    "truncated blob": (
        lambda ls: [ls[0], Layer(ls[1].blob[:-200], ls[1].diff_id, ls[1].annotations)],
        "not eStargz",
    ),
    "wrong diff ID": (
        lambda ls: [ls[0], Layer(ls[1].blob, sha256(b"other"), ls[1].annotations)],
        "differs from the config's",
    ),
    "wrong uncompressed size": (
        lambda ls: [ls[0], Layer(ls[1].blob, ls[1].diff_id, {**ls[1].annotations, SIZE: "12"})],
        "uncompressed-size annotation 12",
    ),
}


def check(cli: Cli, *args: str, strict: bool = False) -> tuple[int, dict, str]:
    run = cli("image", "check", "--output", "json", *(["--strict"] if strict else []), *args, check=False)
    return run.returncode, json.loads(run.stdout) if run.stdout.strip() else {}, run.stderr


@pytest.mark.unit
def test_a_good_image_verifies(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    layers = good_layers()
    layout = write_layout(workdir / "good", layers)
    rc, report, stderr = check(cli, "--list-prioritized", f"local://{layout}", strict=True)
    assert rc == 0, stderr
    base, top = report["manifests"][0]["layers"]
    assert base["format"] == "estargz" and base["ok"]
    assert base["toc_digest"] == base["toc_digest_annotation"] == layers[0].annotations[TOC]
    assert base["diff_id"] == base["config_diff_id"] == layers[0].diff_id
    assert base["landmark"] == "prefetch" and base["prioritized"] == ["bin/busybox"]
    assert top["landmark"] == "no-prefetch" and top["prefetch_bytes"] == 0
    assert base["chunks"] > 3
    theirs = oracle.check_image(layout)["manifests"][0]["layers"]
    for ours, their in zip([base, top], theirs, strict=True):
        assert ours["prefetch_bytes"] == their["blob"]["prefetch_bytes"]
        assert ours["landmark"] == their["blob"]["landmark"]
        assert ours["toc_digest"] == their["blob"]["toc_digest"]
        assert ours["diff_id"] == their["blob"]["diff_id"]


@pytest.mark.unit
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_kind_of_damage_fails_naming_the_layer(
    cli: Cli, workdir: Path, oracle: Oracle, damage: str
) -> None:
    tamper, message = DAMAGE[damage]
    layers = tamper(good_layers())
    layout = write_layout(workdir / "bad", layers)
    rc, report, stderr = check(cli, f"local://{layout}")
    assert rc == 1, report
    bad = [la for la in report["manifests"][0]["layers"] if not la["ok"]]
    assert len(bad) == 1
    line = stderr.strip()
    assert line.count("\n") == 0 and line.startswith(f"ctr-remote: layer {bad[0]['digest']} ("), line
    assert message in line
    assert not oracle.image(layout, strict=False).ok  # the upstream reader agrees: not a good image


@pytest.mark.unit
def test_a_plain_gzip_layer_is_reported_and_fails_only_strict(
    cli: Cli, workdir: Path, oracle: Oracle
) -> None:
    plain = gzip_layer(LayerBuilder().file("etc/motd", b"hi\n"))
    layout = write_layout(workdir / "mixed", [good_layers()[0], plain])
    rc, report, _ = check(cli, f"local://{layout}")
    assert rc == 0
    layer = report["manifests"][0]["layers"][1]
    assert (layer["format"], layer["estargz"], layer["ok"]) == ("gzip", False, True)
    assert layer["diff_id"] == plain.diff_id == layer["config_diff_id"]
    rc, _, stderr = check(cli, f"local://{layout}", strict=True)
    assert rc == 1 and "not eStargz (gzip)" in stderr
    assert oracle.image(layout, strict=False).ok


@pytest.mark.unit
def test_a_layer_without_annotation_is_a_warning(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    base, top = good_layers()
    layout = write_layout(workdir / "noanno", [base, Layer(top.blob, top.diff_id)])
    rc, report, _ = check(cli, f"local://{layout}")
    assert rc == 0
    assert "will not be lazily pulled" in report["manifests"][0]["layers"][1]["warnings"][0]
    rc, _, stderr = check(cli, f"local://{layout}", strict=True)
    assert rc == 1 and "will not be lazily pulled" in stderr
    assert oracle.image(layout, strict=False).ok and not oracle.image(layout, strict=True).ok


@pytest.mark.unit
def test_the_table_names_every_layer(cli: Cli, workdir: Path) -> None:
    layers = good_layers()
    layout = write_layout(workdir / "good", layers)
    run = cli("image", "check", "--list-prioritized", f"local://{layout}")
    lines = run.stdout.splitlines()
    header = next(line for line in lines if "LAYER" in line)
    assert header.split()[:4] == ["#", "LAYER", "SIZE", "FORMAT"]
    assert any(
        sha256(layers[0].blob)[7:19] in line and "prefetch" in line and line.endswith("ok") for line in lines
    )
    assert "      prioritized: bin/busybox" in lines


def test_an_optimized_image_in_a_registry(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """The optimizer's output verifies, and get-toc-digest gives the annotation it wrote."""
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    listed = workdir / "list.txt"
    listed.write_text("app/run.sh\nbin/busybox\n")
    ref = f"http://{registry.host}/app:esgz"
    cli.optimize("--prefetch-list", str(listed), f"http://{registry.host}/app:src", ref)
    rc, report, stderr = check(cli, "--plain-http", "--list-prioritized", ref, strict=True)
    assert rc == 0, stderr
    oracle.check_image(f"{registry.host}/app:esgz")
    layers = report["manifests"][0]["layers"]
    assert [la["prioritized"] for la in layers] == [["bin/busybox"], [], ["app/run.sh"]]
    with open_store(registry.reference("app:esgz"), registry.options()) as store:
        manifest = json.loads(store.read_manifest(store.resolve()))
    for desc in manifest["layers"]:
        run = cli("image", "get-toc-digest", "--plain-http", ref, desc["digest"])
        assert run.stdout.strip() == desc["annotations"][TOC]
    dump = cli("image", "get-toc-digest", "--plain-http", "--dump-toc", ref, manifest["layers"][2]["digest"])
    toc = json.loads(dump.stdout)
    assert toc["version"] == 1
    assert [e["name"] for e in toc["entries"]][:3] == ["app/", "app/run.sh", ".prefetch.landmark"]


@pytest.mark.unit
def test_get_toc_digest_errors(cli: Cli, workdir: Path) -> None:
    plain = gzip_layer(LayerBuilder().file("etc/motd", b"hi\n"))
    layout = write_layout(workdir / "plain", [plain])
    ref = f"local://{layout}"
    run = cli("image", "get-toc-digest", ref, sha256(plain.blob), check=False)
    assert run.returncode == 1 and "not an eStargz blob" in run.stderr and run.stderr.count("\n") == 1
    run = cli("image", "get-toc-digest", ref, sha256(b"absent"), check=False)
    assert run.returncode == 1 and f"layer {sha256(b'absent')} is not in {ref}" in run.stderr
    run = cli("image", "get-toc-digest", ref, "sha256:nothex", check=False)
    assert run.returncode == 2 and "invalid digest" in run.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--platform", "linux/amd64", "--all-platforms", "local:///x"],
            "--platform can't be used with --all-platforms",
        ),
        (["http://127.0.0.1:1/a"], "--plain-http"),
        (["--platform", "not/a/valid/platform", "local:///x"], "platform"),
        (["local:///does/not/exist"], "does/not/exist"),
    ],
)
def test_bad_input_is_one_line(cli: Cli, args: list[str], message: str) -> None:
    run = cli("image", "check", *args, check=False)
    assert run.returncode in (1, 2) and run.stderr.count("\n") == 1 and message in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
