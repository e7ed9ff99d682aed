"""Images through the real registry and OCI layouts: every digest kept, platforms filtered, Docker
and OCI media types, chunked and monolithic uploads, cross-repository mounts, parallel transfer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr_remote.image import (
    ANNOTATION_REF_NAME,
    LayoutError,
    NotFoundError,
    copy_image,
    open_store,
    parse_index,
    parse_manifest,
    parse_platform,
    parse_reference,
    read_image,
)
from ctr_remote.image import mediatypes as mt
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.oci import BuiltImage, BuiltIndex, build_image, build_index, push
from tests.helpers.registry import RegistryServer


def _layers(tag: str, n: int = 2) -> list[dict[str, bytes]]:
    return [{f"l{i}/{tag}.txt": f"{tag} layer {i}\n".encode() * (i + 1)} for i in range(n)]


def _multiarch(docker: bool = False) -> BuiltIndex:
    images = [
        build_image(_layers(p.replace("/", "-")), docker=docker, platform=p)
        for p in ("linux/amd64", "linux/arm64", "linux/arm/v7")
    ]
    return build_index(images, docker=docker)


def _registry_digests(reg: RegistryServer, repo_tag: str) -> dict[str, str]:
    """Digests under a tag, read back through our client (top + children)."""
    with open_store(reg.reference(repo_tag), reg.options()) as s:
        top = s.resolve()
        out = {"top": top.digest}
        if mt.is_index(top.media_type):
            for d in parse_index(s.read_manifest(top)).manifests:
                out[str(d.platform)] = d.digest
        return out


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_round_trip_keeps_every_digest(registry: RegistryServer, workdir: Path, docker: bool) -> None:
    index = _multiarch(docker)
    with open_store(registry.reference("src/app:v1"), registry.options()) as dst:
        pushed = push(dst, index, workdir / "build")
    assert pushed == index.index.desc

    # registry -> layout -> registry -> layout
    hops = [
        (registry.reference("src/app:v1"), parse_reference(f"local://{workdir}/layout1:app")),
        (parse_reference(f"local://{workdir}/layout1:app"), registry.reference("copy/app:v2")),
        (registry.reference("copy/app:v2"), parse_reference(f"local://{workdir}/layout2")),
    ]
    for i, (src_ref, dst_ref) in enumerate(hops):
        with open_store(src_ref, registry.options()) as src, open_store(dst_ref, registry.options()) as dst:
            top = copy_image(src, dst, workdir / f"cache{i}")
        want = index.index.desc
        assert (top.media_type, top.digest, top.size) == (want.media_type, want.digest, want.size)

    with open_store(parse_reference(f"local://{workdir}/layout2"), registry.options()) as s:
        top = s.resolve()
        assert top.digest == index.index.desc.digest
        got = parse_index(s.read_manifest(top))
        assert got.media_type == (mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX)
        for entry, img in zip(got.manifests, index.images, strict=True):
            assert entry.digest == img.manifest.desc.digest
            blobs = read_image(s, entry)
            assert blobs.manifest.media_type == (mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST)
            assert [d.digest for d in blobs.manifest.layers] == [b.desc.digest for b in img.layers]
            for layer, want in zip(blobs.manifest.layers, img.layers, strict=True):
                s.fetch_blob(layer, workdir / "check")
                assert (workdir / "check").read_bytes() == want.data
    assert _registry_digests(registry, "copy/app:v2") == _registry_digests(registry, "src/app:v1")


def test_platform_filter_rewrites_the_index(registry: RegistryServer, workdir: Path) -> None:
    index = _multiarch()
    with open_store(registry.reference("multi:v1"), registry.options()) as dst:
        push(dst, index, workdir / "build")
    wanted = [parse_platform("linux/arm64"), parse_platform("linux/arm/v7")]
    layout = parse_reference(f"local://{workdir}/out")
    with open_store(registry.reference("multi:v1"), registry.options()) as src, open_store(layout) as dst:
        top = copy_image(src, dst, workdir / "cache", platforms=wanted, all_platforms=False)
    assert top.digest != index.index.desc.digest
    with open_store(layout) as s:
        got = parse_index(s.read_manifest(s.resolve()))
    assert [str(d.platform) for d in got.manifests] == ["linux/arm64", "linux/arm/v7"]
    assert [d.digest for d in got.manifests] == [i.manifest.desc.digest for i in index.images[1:]]
    blobs = sorted(p.name for p in (workdir / "out/blobs/sha256").iterdir())
    amd64 = index.images[0]
    assert amd64.manifest.desc.digest.split(":")[1] not in blobs
    assert all(b.desc.digest.split(":")[1] not in blobs for b in amd64.layers)


def test_single_manifest_and_pull_by_digest(registry: RegistryServer, workdir: Path) -> None:
    img = build_image(_layers("single", 3))
    with open_store(registry.reference("one:latest"), registry.options()) as dst:
        push(dst, img, workdir / "build")
    by_digest = registry.reference(f"one@{img.manifest.desc.digest}")
    with open_store(by_digest, registry.options()) as s:
        top = s.resolve()
        assert (top.media_type, top.digest) == (mt.OCI_MANIFEST, img.manifest.desc.digest)
        m = parse_manifest(s.read_manifest(top))
        assert s.read_manifest(m.config) == img.config.data
    with open_store(registry.reference("one:missing"), registry.options()) as s, pytest.raises(NotFoundError):
        s.resolve()


def _proxied(proxy: FaultProxy, repo_tag: str) -> str:
    return f"http://{proxy.host}/{repo_tag}"


def test_chunked_upload_of_a_large_blob(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    big = {"big.bin": bytes(range(256)) * 40_000}  # ~10 MB, incompressible enough to span chunks
    img = build_image([big], compress=False)
    ref = parse_reference(_proxied(fault_proxy, "chunked:v1"), plain_http=True)
    with open_store(ref, registry.options(chunk_size=1 << 20)) as dst:
        push(dst, img, workdir / "build")
    patches = [h for h in fault_proxy.hits if h.method == "PATCH"]
    assert len(patches) == -(-img.layers[0].desc.size // (1 << 20))
    assert all(h.status == 202 for h in patches)
    with open_store(registry.reference("chunked:v1"), registry.options()) as s:
        s.fetch_blob(img.layers[0].desc, workdir / "big")
    assert (workdir / "big").read_bytes() == img.layers[0].data


def test_existing_blobs_are_skipped_and_mounted_across_repositories(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = build_image(_layers("mount"))
    with open_store(registry.reference("team/base:v1"), registry.options()) as dst:
        push(dst, img, workdir / "build")
    src_ref = parse_reference(_proxied(fault_proxy, "team/base:v1"), plain_http=True)
    dst_ref = parse_reference(_proxied(fault_proxy, "team/derived:v1"), plain_http=True)
    with (
        open_store(src_ref, registry.options()) as src,
        open_store(dst_ref, registry.options(mount_from=src_ref)) as dst,
    ):
        copy_image(src, dst, workdir / "cache")
    mounts = [h for h in fault_proxy.hits if h.method == "POST" and "mount=" in h.path]
    assert len(mounts) == len(img.blobs) and all(h.status == 201 for h in mounts)
    assert not [h for h in fault_proxy.hits if h.method in ("PATCH", "PUT") and "/blobs/" in h.path]

    # pushing again: every blob exists, only HEADs and the manifest PUT
    fault_proxy.clear()
    with open_store(dst_ref, registry.options()) as dst:
        push(dst, img, workdir / "build2")
    assert {h.method for h in fault_proxy.hits} == {"HEAD", "PUT"}
    assert [h.path for h in fault_proxy.hits if h.method == "PUT"] == ["/v2/team/derived/manifests/v1"]


def test_layout_index_json_replaces_same_name_and_keeps_others(workdir: Path) -> None:
    one, two, three = (build_image(_layers(t)) for t in ("one", "two", "three"))
    for name, img in (("a", one), ("b", two), ("a", three)):
        with open_store(parse_reference(f"local://{workdir}/lay:{name}")) as s:
            push(s, img, workdir / f"build-{name}")
    index = json.loads((workdir / "lay/index.json").read_text())
    named = {e["annotations"][ANNOTATION_REF_NAME]: e["digest"] for e in index["manifests"]}
    assert named == {"b": two.manifest.desc.digest, "a": three.manifest.desc.digest}
    assert json.loads((workdir / "lay/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    with open_store(parse_reference(f"local://{workdir}/lay:b")) as s:
        assert s.resolve().digest == two.manifest.desc.digest
    # unnamed read of a layout with several images: refused, naming them (test_layout has more)
    with (
        open_store(parse_reference(f"local://{workdir}/lay")) as s,
        pytest.raises(LayoutError, match=r"\(b, a\)"),
    ):
        s.resolve()
    with open_store(parse_reference(f"local://{workdir}/lay:zzz")) as s, pytest.raises(NotFoundError):
        s.resolve()


def _image(tag: str) -> BuiltImage:
    return build_image(_layers(tag))


def test_blobs_of_different_layers_transfer_in_parallel(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = build_image([{f"p{i}": f"parallel {i}".encode() * 1000} for i in range(4)])
    # three layer uploads must be in flight together to get past the barrier (else 504s, then failure)
    up = fault_proxy.add(
        Fault("barrier", path="/blobs/uploads/", method="PUT", parties=3, times=3, timeout=10)
    )
    ref = parse_reference(_proxied(fault_proxy, "par:v1"), plain_http=True)
    with open_store(ref, registry.options(retries=0)) as dst:
        push(dst, img, workdir / "build")
    assert up.passed
    layers = "|".join(b.desc.digest for b in img.layers)  # not the config: it is read on its own first
    down = fault_proxy.add(Fault("barrier", path=layers, method="GET", parties=3, times=3, timeout=10))
    with (
        open_store(ref, registry.options(retries=0)) as src,
        open_store(parse_reference(f"local://{workdir}/par")) as dst,
    ):
        copy_image(src, dst, workdir / "cache", workers=4)
    assert down.passed
