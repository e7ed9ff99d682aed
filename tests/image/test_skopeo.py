"""skopeo, a client nobody here wrote, reads what we push and what we write to a layout, and we read
what it writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ctr_remote.image import copy_image, open_store, parse_index, parse_reference, read_image
from tests.helpers.oci import BuiltIndex, build_image, build_index, push
from tests.helpers.registry import RegistryServer


def skopeo(*args: str) -> str:
    p = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"skopeo {' '.join(args)} failed: {p.stderr}"
    return p.stdout


def _index(docker: bool) -> BuiltIndex:
    return build_index(
        [
            build_image([{f"{p}/f": p.encode() * 100}, {"shared": b"x" * 1000}], docker=docker, platform=p)
            for p in ("linux/amd64", "linux/arm64")
        ],
        docker=docker,
    )


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_skopeo_reads_what_we_push(registry: RegistryServer, workdir: Path, docker: bool) -> None:
    index = _index(docker)
    with open_store(registry.reference("sk/app:v1"), registry.options()) as dst:
        push(dst, index, workdir / "build")
    url = f"docker://{registry.host}/sk/app:v1"
    raw = skopeo("inspect", "--raw", *registry.skopeo_flags(), url)
    assert raw.encode() == index.index.data
    for img, arch in zip(index.images, ("amd64", "arm64"), strict=True):
        info = json.loads(skopeo("inspect", "--override-arch", arch, *registry.skopeo_flags(), url))
        assert info["Digest"] == index.index.desc.digest  # skopeo names the top-level digest
        assert info["Layers"] == [b.desc.digest for b in img.layers]
        assert info["Architecture"] == arch
        child = f"docker://{registry.host}/sk/app@{img.manifest.desc.digest}"
        assert skopeo("inspect", "--raw", *registry.skopeo_flags(), child).encode() == img.manifest.data
    # skopeo copies every platform into its own layout, fetching and verifying every blob we pushed
    out = workdir / "skopeo-out"
    # (a Docker list becomes an OCI index in an OCI layout, so only OCI keeps the top digest)
    preserve = [] if docker else ["--preserve-digests"]
    skopeo("copy", "--all", *preserve, *registry.skopeo_flags("src-"), url, f"oci:{out}:copied")
    with open_store(parse_reference(f"local://{out}:copied")) as s:
        top = s.resolve()
        assert (top.digest == index.index.desc.digest) is not docker
        entries = parse_index(s.read_manifest(top)).manifests
        for entry, img in zip(entries, index.images, strict=True):
            assert [d.digest for d in read_image(s, entry).manifest.layers] == [
                b.desc.digest for b in img.layers
            ]


def test_skopeo_reads_our_layout_and_we_read_skopeos(registry: RegistryServer, workdir: Path) -> None:
    index = _index(docker=False)
    ours = workdir / "ours"
    with open_store(parse_reference(f"local://{ours}:app")) as dst:
        push(dst, index, workdir / "build")
    info = json.loads(skopeo("inspect", "--override-arch", "arm64", f"oci:{ours}:app"))
    assert info["Layers"] == [b.desc.digest for b in index.images[1].layers]
    assert skopeo("inspect", "--raw", f"oci:{ours}:app").encode() == index.index.data
    fresh = workdir / "fresh"
    skopeo("copy", "--all", "--preserve-digests", f"oci:{ours}:app", f"oci:{fresh}:again")
    with open_store(parse_reference(f"local://{fresh}:again")) as s:
        top = s.resolve()
        assert top.digest == index.index.desc.digest
        for entry, img in zip(parse_index(s.read_manifest(top)).manifests, index.images, strict=True):
            got = read_image(s, entry)
            assert got.config_bytes == img.config.data
            for layer, want in zip(got.manifest.layers, img.layers, strict=True):
                s.fetch_blob(layer, workdir / "layer")
                assert (workdir / "layer").read_bytes() == want.data

    # skopeo pushes our layout to the registry; we copy it back out with the same digests
    skopeo("copy", "--all", "--preserve-digests", *registry.skopeo_flags("dest-"), f"oci:{ours}:app",
           f"docker://{registry.host}/from-skopeo:v1")  # fmt: skip
    back = parse_reference(f"local://{workdir}/back")
    with open_store(registry.reference("from-skopeo:v1"), registry.options()) as src, open_store(back) as dst:
        assert copy_image(src, dst, workdir / "cache").digest == index.index.desc.digest


@pytest.mark.parametrize("mode", ["tls", "htpasswd", "token"])
def test_skopeo_reads_what_we_push_with_tls_and_auth(registry_factory, workdir: Path, mode: str) -> None:
    reg: RegistryServer = registry_factory(mode)
    img = build_image([{"a": b"secured " + mode.encode()}])
    with open_store(reg.reference("private/app:v1"), reg.options()) as dst:
        push(dst, img, workdir / "build")
    info = json.loads(skopeo("inspect", *reg.skopeo_flags(), f"docker://{reg.host}/private/app:v1"))
    assert info["Digest"] == img.manifest.desc.digest
