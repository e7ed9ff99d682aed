"""`ctr-remote image optimize` end to end: real registry, real runc/FUSE/overlayfs, and the upstream Go
reader checking every image we write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctr_remote.image import mediatypes as mt
from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.registry import RegistryServer
from tests.helpers.sample import (
    app_layers,
    multi_platform,
    publish,
    publish_nested,
    runnable_image,
    unlabelled_index,
    with_attestation,
)
from tests.optimize.conftest import Cli

# What /app/run.sh reads, per layer (bottom first): busybox and passwd/group (user lookup by the shell
# is not guaranteed, so only what the script itself must open is asserted), nothing of lib but
# nothing unread either, the script, its data and the top-most motd.
MUST_READ = [{"bin/busybox"}, set(), {"app/run.sh", "app/data.txt", "etc/motd"}]
NEVER_READ = [{"etc/motd"}, {"usr/lib/unused.bin", "usr/lib/used.txt"}, {"app/big-unread.bin"}]


def layers_of(report: dict[str, Any], manifest: int = 0) -> list[dict[str, Any]]:
    return report["manifests"][manifest]["layers"]


def prioritized(layer: dict[str, Any]) -> list[str]:
    return list(layer["blob"]["prioritized"] or [])


def read_layout_json(layout: Path, digest: str) -> dict[str, Any]:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())


def assert_app_prioritized(report: dict[str, Any], manifest: int = 0) -> None:
    layers = layers_of(report, manifest)
    assert len(layers) == 3
    for layer, must, never in zip(layers, MUST_READ, NEVER_READ, strict=True):
        files = set(prioritized(layer))
        assert must <= files, (must, files)
        assert not (never & files), (never, files)
        assert layer["blob"]["landmark"] == ("prefetch" if must else "no-prefetch")


def test_registry_to_registry(cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    run = cli.optimize(registry.ref("app:src"), registry.ref("app:esgz"))
    report = oracle.check_image(f"{registry.host}/app:esgz")
    assert report["manifests"][0]["digest"] == run.digest
    assert_app_prioritized(report)
    assert "workload-done" in run.stdout
    assert "waiting for 20s ..." in [e["event"] for e in run.events]
    logs = run.events
    assert sum(1 for e in logs if e["event"] == "converted") == 3


def test_local_to_local_keeps_other_images(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst = workdir / "src", workdir / "dst"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers(), docker=True), workdir / "push")
    cli.optimize(f"local://{src}", f"local://{dst}")
    report = oracle.check_image(dst)
    assert_app_prioritized(report)
    # Docker media types stay Docker without --oci.
    manifest = read_layout_json(dst, report["manifests"][0]["digest"])
    assert manifest["mediaType"] == mt.DOCKER_MANIFEST
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.DOCKER_LAYER_GZIP}


def test_oci_flag_converts_docker_types(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    with open_store(registry.reference("app:docker"), registry.options()) as store:
        publish(store, runnable_image(app_layers(), docker=True), workdir / "push")
    dst = workdir / "out"
    cli.optimize("--oci", "--no-optimize", registry.ref("app:docker"), f"local://{dst}")
    report = oracle.check_image(dst)
    manifest = read_layout_json(dst, report["manifests"][0]["digest"])
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    assert {layer["mediaType"] for layer in manifest["layers"]} == {mt.OCI_LAYER_GZIP}
    for layer in layers_of(report):
        assert layer["blob"]["landmark"] == "no-prefetch"
    config = read_layout_json(dst, manifest["config"]["digest"])
    assert [h["created_by"] for h in config["history"]] == ["layer 0", "layer 1", "layer 2"]


def test_local_to_registry_and_back(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    first = cli.optimize(f"local://{src}", registry.ref("app:v1"))
    oracle.check_image(f"{registry.host}/app:v1")
    # Same input, flags and workload: the same digest (reproducible output).
    again = cli.optimize(f"local://{src}", f"local://{workdir / 'again'}")
    assert again.digest == first.digest
    assert oracle.check_image(workdir / "again")["manifests"][0]["digest"] == again.digest


def test_multi_platform_index(cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle) -> None:
    with open_store(registry.reference("multi:src"), registry.options()) as store:
        publish(store, multi_platform(), workdir / "push")
    dst = workdir / "all"
    cli.optimize("--all-platforms", registry.ref("multi:src"), f"local://{dst}")
    report = oracle.check_image(dst)
    assert len(report["manifests"]) == 2
    _, other = report["manifests"]
    assert_app_prioritized(report, 0)
    assert all(layer["blob"]["landmark"] == "no-prefetch" for layer in other["layers"])
    # Default: only the host platform is kept.
    dst1 = workdir / "host"
    cli.optimize(registry.ref("multi:src"), f"local://{dst1}")
    assert len(oracle.check_image(dst1)["manifests"]) == 1


def test_nested_index_with_attestation(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    """As `docker buildx` pushes (an attestation manifest beside the image), one index deeper."""
    with open_store(registry.reference("att:src"), registry.options()) as store:
        publish_nested(store, with_attestation(), workdir / "push")
    dst = workdir / "out"
    run = cli.optimize("--all-platforms", registry.ref("att:src"), f"local://{dst}")
    report = oracle.check_image(dst)
    assert len(report["manifests"]) == 1  # the attestation is dropped, the nesting flattened
    assert_app_prioritized(report)
    index = read_layout_json(dst, json.loads((dst / "index.json").read_text())["manifests"][0]["digest"])
    assert [m["platform"]["os"] for m in index["manifests"]] == ["linux"]
    events = [e["event"] for e in run.events]
    assert "dropping attestation manifest of the source image" in events


def test_index_entry_without_platform_uses_its_config(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst = workdir / "src", workdir / "dst"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, unlabelled_index(), workdir / "push")
    cli.optimize(f"local://{src}", f"local://{dst}")
    report = oracle.check_image(dst)
    assert_app_prioritized(report)


def test_platform_without_host_is_not_profiled(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    with open_store(registry.reference("multi:src"), registry.options()) as store:
        publish(store, multi_platform(docker=True), workdir / "push")
    other = "linux/arm64" if "arm64" not in str(__import__("platform").machine()) else "linux/amd64"
    dst = workdir / "other"
    run = cli.optimize("--platform", other, registry.ref("multi:src"), f"local://{dst}")
    report = oracle.check_image(dst)
    assert len(report["manifests"]) == 1
    assert all(layer["blob"]["landmark"] == "no-prefetch" for layer in layers_of(report))
    assert "workload-done" not in run.stdout


def test_reuse_copies_untouched_layers(
    cli: Cli, registry: RegistryServer, workdir: Path, oracle: Oracle
) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    first = workdir / "first"
    cli.optimize(registry.ref("app:src"), f"local://{first}")
    first_layers = [layer["digest"] for layer in layers_of(oracle.check_image(first))]
    second = workdir / "second"
    run = cli.optimize("--reuse", f"local://{first}", f"local://{second}")
    second_layers = [layer["digest"] for layer in layers_of(oracle.check_image(second))]
    logs = run.events
    copied = {e["digest"] for e in logs if e["event"] == "no access occur; copying without conversion"}
    assert copied == {first_layers[1]}, logs  # the lib layer is never read
    assert second_layers[1] == first_layers[1]
    # Touched layers are converted again (same record: same bytes, reproducibly).
    assert second_layers[0] == first_layers[0] and second_layers[2] == first_layers[2]
    assert sum(1 for e in logs if e["event"] == "converted") == 2
    # --no-optimize runs nothing, so every eStargz layer is copied as it is (upstream v0.18.2).
    run = cli.optimize("--reuse", "--no-optimize", f"local://{first}", f"local://{workdir / 'third'}")
    copied = [e["digest"] for e in run.events if e["event"] == "no access occur; copying without conversion"]
    assert sorted(copied) == sorted(first_layers)
    assert not [e for e in run.events if e["event"] == "converted"]
    assert [layer["digest"] for layer in layers_of(oracle.check_image(workdir / "third"))] == first_layers


def test_record_out_matches_prioritized(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst, record = workdir / "src", workdir / "dst", workdir / "record.json"
    with open_store(parse_reference(f"local://{src}")) as store:
        top = publish(store, runnable_image(app_layers()), workdir / "push")
    cli.optimize("--record-out", str(record), f"local://{src}", f"local://{dst}")
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert {line["manifestDigest"] for line in lines} == {top.digest}
    report = oracle.check_image(dst)
    for i, layer in enumerate(layers_of(report)):
        recorded = [line["path"] for line in lines if line["layerIndex"] == i]
        files = [p for p in prioritized(layer) if p in recorded]
        assert files == recorded  # same files, same (first-access) order


def test_prefetch_list_prioritizes_without_running(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    src, dst, plist = workdir / "src", workdir / "dst", workdir / "list"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    plist.write_text("# what the app needs\n/usr/lib/*.bin\napp/data.txt\n/etc/motd\n")
    run = cli.optimize("--prefetch-list", str(plist), f"local://{src}", f"local://{dst}")
    assert "workload-done" not in run.stdout
    layers = layers_of(oracle.check_image(dst))
    assert [p for p in prioritized(layers[0]) if "." in p] == []
    assert layers[0]["blob"]["landmark"] == "no-prefetch"
    assert "usr/lib/unused.bin" in prioritized(layers[1])
    files = [p for p in prioritized(layers[2]) if not p.endswith("/") and p not in ("app", "etc")]
    assert files == ["app/data.txt", "etc/motd"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-repo", "not found"),
        ("wrong-tag", "not found"),
        ("bad-reference", "invalid reference"),
        ("http-without-flag", "--plain-http"),
        ("missing-binary", "/no/such/binary"),
        ("unwritable-target", "dst"),
    ],
)
def test_bad_input_is_one_line_and_pushes_nothing(
    cli: Cli, registry: RegistryServer, workdir: Path, case: str, message: str
) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    src, dst = registry.ref("app:src"), registry.ref("app:out")
    extra: list[str] = []
    if case == "missing-repo":
        src = registry.ref("nosuch:latest")
    elif case == "wrong-tag":
        src = registry.ref("app:nosuchtag")
    elif case == "bad-reference":
        src = "UPPER/Case::bad"
    elif case == "missing-binary":
        extra = ["--entrypoint", '["/no/such/binary"]']
    elif case == "unwritable-target":
        target = workdir / "ro"
        target.write_text("a file, not a directory")
        dst = f"local://{target}/dst"
    args = ["--log-format", "json", "image", "optimize", "--period", "20", *extra, src, dst]
    if case != "http-without-flag":
        args.insert(4, "--plain-http")
    run = cli(*args, check=False)
    assert run.returncode != 0
    assert message in run.error, run.stderr
    assert "Traceback" not in run.stderr
    tags = __import__("httpx").get(registry.url("/v2/app/tags/list")).json()["tags"]
    assert tags == ["src"]


def test_corrupt_layer_is_refused(cli: Cli, workdir: Path) -> None:
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        top = publish(store, runnable_image(app_layers()), workdir / "push")
    manifest = read_layout_json(src, top.digest)
    victim = src / "blobs" / "sha256" / manifest["layers"][2]["digest"].removeprefix("sha256:")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    run = cli.optimize(f"local://{src}", f"local://{workdir / 'dst'}", check=False)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert manifest["layers"][2]["digest"] in run.error
    assert not (workdir / "dst" / "index.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runtime", "no-such-runtime"], "no-such-runtime"),
        (["--cni", "--cni-plugin-conf-dir", "/nonexistent/net.d"], "/nonexistent/net.d"),
    ],
)
def test_missing_requirements_fail_before_any_download(
    cli: Cli, registry: RegistryServer, workdir: Path, flags: list[str], message: str
) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    run = cli.optimize(*flags, registry.ref("app:src"), registry.ref("app:out"), check=False)
    assert run.returncode != 0
    assert message in run.error
    events = [e["event"] for e in run.events]
    assert "pull" not in events


def test_prefetch_list_skips_deleted_files_and_is_recorded(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    """A path deleted in an upper layer is not prioritized in the lower one (overlayfs never serves
    it); the whiteout itself is no file to prefetch; --record-out says what was prioritized."""
    from tests.helpers.images import LayerBuilder

    base = LayerBuilder().busybox().file("etc/old.conf", b"old\n").file("etc/keep.conf", b"keep\n")
    top = LayerBuilder().whiteout("etc/old.conf").file("etc/new.conf", b"new\n")
    src, dst, plist, record = workdir / "src", workdir / "dst", workdir / "list", workdir / "record.json"
    with open_store(parse_reference(f"local://{src}")) as store:
        manifest = publish(store, runnable_image([base, top]), workdir / "push")
    plist.write_text("etc/*.conf\netc/.wh.*\n")
    cli.optimize(
        "--prefetch-list", str(plist), "--record-out", str(record), f"local://{src}", f"local://{dst}"
    )
    files = [[p for p in prioritized(layer) if "." in p] for layer in layers_of(oracle.check_image(dst))]
    assert files == [["etc/keep.conf"], ["etc/new.conf"]]
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["layerIndex"], line["path"]) for line in lines] == [
        (0, "etc/keep.conf"),
        (1, "etc/new.conf"),
    ]
    assert {line["manifestDigest"] for line in lines} == {manifest.digest}


def test_unwritable_record_out_fails_before_any_download(
    cli: Cli, registry: RegistryServer, workdir: Path
) -> None:
    with open_store(registry.reference("app:src"), registry.options()) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    record = workdir / "no-such-dir" / "record.json"
    run = cli.optimize(
        "--record-out", str(record), registry.ref("app:src"), registry.ref("app:out"), check=False
    )
    assert run.returncode == 1
    assert run.error == f"cannot write the record file {record}: No such file or directory"
    events = [e["event"] for e in run.events]
    assert "pull" not in events and "workload-done" not in run.stdout


def test_digest_is_alone_on_the_last_line_and_stderr_is_json(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    """What `digest=$(ctr-remote ... | tail -n 1)` in CI relies on: the workload's stdout comes first
    (as upstream), the digest last on a line of its own even after an unterminated line; with
    --log-format json every stderr line is JSON, the workload's stderr wrapped as events."""
    src = workdir / "src"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    script = "echo first; echo oops >&2; printf no-newline"
    run = cli.optimize(
        "--entrypoint", '["/bin/sh", "-c"]', "--args", json.dumps([script]),
        f"local://{src}", f"local://{workdir / 'dst'}",
    )  # fmt: skip
    lines = run.stdout.splitlines()
    assert lines[:2] == ["first", "no-newline"]
    assert lines[-1] == run.digest and len(lines) == 3
    wrapped = [e for e in run.events if e["event"] == "workload output"]  # `events` parses every line
    assert [(e["stream"], e["line"]) for e in wrapped] == [("stderr", "oops")]
    assert oracle.check_image(workdir / "dst")["manifests"][0]["digest"] == run.digest


def test_record_out_to_dev_stdout_and_through_a_symlink(cli: Cli, workdir: Path, oracle: Oracle) -> None:
    """`--record-out /dev/stdout` writes in place (never a file renamed over the device link); a
    symlinked record path keeps its link and the file it names gets the record."""
    src, plist = workdir / "src", workdir / "list"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    plist.write_text("app/data.txt\n")
    run = cli.optimize(
        "--prefetch-list",
        str(plist),
        "--record-out",
        "/dev/stdout",
        f"local://{src}",
        f"local://{workdir / 'a'}",
    )
    *records, last = run.stdout.splitlines()
    assert [json.loads(r)["path"] for r in records] == ["app/data.txt"] and last == run.digest
    assert "app/data.txt" in prioritized(layers_of(oracle.check_image(workdir / "a"))[2])
    assert Path("/dev/stdout").is_symlink()
    link, real = workdir / "link.json", workdir / "real.json"
    link.symlink_to(real)
    cli.optimize(
        "--prefetch-list", str(plist), "--record-out", str(link), f"local://{src}", f"local://{workdir / 'b'}"
    )
    assert link.is_symlink() and json.loads(real.read_text())["path"] == "app/data.txt"
    assert "app/data.txt" in prioritized(layers_of(oracle.check_image(workdir / "b"))[2])


def test_prefetch_list_on_a_layer_with_a_huge_pax_header_is_one_line(cli: Cli, workdir: Path) -> None:
    """The prefetch-list path reads layers with the same bounded tar reader as the unpacker."""
    import tarfile

    from tests.helpers.images import LayerBuilder

    bomb = tarfile.TarInfo("app/bomb.txt")
    bomb.pax_headers = {"comment": "x" * (2 << 20)}
    layers = [*app_layers(), LayerBuilder().add(bomb, b"boom")]
    src, plist = workdir / "src", workdir / "list"
    with open_store(parse_reference(f"local://{src}")) as store:
        publish(store, runnable_image(layers), workdir / "push")
    plist.write_text("app/data.txt\n")
    run = cli.optimize(
        "--prefetch-list", str(plist), f"local://{src}", f"local://{workdir / 'dst'}", check=False
    )
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert "not a valid tar archive" in last and "PAX header" in last, run.stderr
    assert not (workdir / "dst" / "index.json").exists()
