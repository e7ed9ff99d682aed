"""Runnable sample images for end-to-end tests: busybox-static plus a small shell app, in OCI or
Docker media types, single-platform or as a multi-platform index."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ctr_remote.image import Descriptor, ImageStore, Platform, digest_bytes, host_platform, write_image
from ctr_remote.image import mediatypes as mt
from tests.helpers.images import LayerBuilder, image_config
from tests.helpers.oci import BuiltImage, BuiltIndex, _blob, build_index, push

APP = b"#!/bin/sh\ncat /app/data.txt\ncat /etc/motd\necho workload-done\n"


def app_layers() -> list[LayerBuilder]:
    """base: busybox; lib: a file the app reads and one it does not; app: the script and its data."""
    base = LayerBuilder().busybox().file("etc/motd", b"base motd\n")
    lib = LayerBuilder().file("usr/lib/used.txt", b"used\n").file("usr/lib/unused.bin", b"u" * 200_000)
    app = (
        LayerBuilder()
        .file("app/run.sh", APP, mode=0o755)
        .file("app/data.txt", b"data\n")
        .file("app/big-unread.bin", bytes(range(256)) * 4096)
        .file("etc/motd", b"app motd\n")
    )
    return [base, lib, app]


APP_CMD = ["/app/run.sh"]


def runnable_image(
    layers: list[LayerBuilder],
    config: dict | None = None,
    *,
    docker: bool = False,
    platform: str | None = None,
) -> BuiltImage:
    cfg = dict(config or image_config(cmd=APP_CMD))
    plat = host_platform() if platform is None else None
    if platform is not None:
        os_, arch, *variant = platform.split("/")
        cfg["os"], cfg["architecture"] = os_, arch
        if variant:
            cfg["variant"] = variant[0]
    elif plat is not None:
        cfg["os"], cfg["architecture"] = plat.os, plat.architecture
    raws = [layer.tar_bytes() for layer in layers]
    layer_type = mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP
    blobs = tuple(_blob(gzip.compress(r, compresslevel=1, mtime=0), layer_type) for r in raws)
    cfg["rootfs"] = {"type": "layers", "diff_ids": [digest_bytes(r) for r in raws]}
    cfg["history"] = [{"created_by": f"layer {i}"} for i in range(len(raws))]
    config_blob = _blob(
        json.dumps(cfg, sort_keys=True).encode(), mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
    )
    manifest_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_blob.desc.to_json(),
        "layers": [b.desc.to_json() for b in blobs],
    }
    return BuiltImage(blobs, config_blob, _blob(json.dumps(manifest).encode(), manifest_type))


def multi_platform(docker: bool = False) -> BuiltIndex:
    """The app for the host platform and for another one (never runnable here)."""
    host = host_platform()
    other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
    return build_index(
        [
            runnable_image(app_layers(), docker=docker),
            runnable_image(app_layers()[:2], docker=docker, platform=other),
        ],
        docker=docker,
    )


def publish(store: ImageStore, image: BuiltImage | BuiltIndex, workdir: Path) -> Descriptor:
    return push(store, image, workdir)


def platformless_image() -> BuiltImage:
    """The app with a config that names no `os` / `architecture` (as some hand-made images have)."""
    img = runnable_image(app_layers())
    cfg = json.loads(img.config.data)
    del cfg["os"], cfg["architecture"]
    config_blob = _blob(json.dumps(cfg, sort_keys=True).encode(), img.config.desc.media_type)
    manifest = json.loads(img.manifest.data)
    manifest["config"] = config_blob.desc.to_json()
    return BuiltImage(img.layers, config_blob, _blob(json.dumps(manifest).encode(), mt.OCI_MANIFEST))


ATTESTATION_REF_TYPE = "vnd.docker.reference.type"
ATTESTATION_REF_DIGEST = "vnd.docker.reference.digest"


def attestation_for(image: BuiltImage) -> BuiltImage:
    """A BuildKit-style attestation manifest (in-toto layer, `unknown/unknown` config) for `image`."""
    statement = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": []}).encode()
    layer = _blob(statement, "application/vnd.in-toto+json", annotations={"in-toto.io/predicate-type": "x"})
    cfg = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.desc.digest]},
    }
    config_blob = _blob(json.dumps(cfg).encode(), mt.OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config_blob.desc.to_json(),
        "layers": [layer.desc.to_json()],
    }
    return BuiltImage((layer,), config_blob, _blob(json.dumps(manifest).encode(), mt.OCI_MANIFEST))


def with_attestation() -> BuiltIndex:
    """The app for the host platform plus its attestation manifest, as `docker buildx` pushes it."""
    app = runnable_image(app_layers())
    att = attestation_for(app)
    host = host_platform()
    entries = [
        Descriptor(mt.OCI_MANIFEST, app.manifest.desc.digest, app.manifest.desc.size, platform=host),
        Descriptor(
            mt.OCI_MANIFEST,
            att.manifest.desc.digest,
            att.manifest.desc.size,
            annotations={
                ATTESTATION_REF_TYPE: "attestation-manifest",
                ATTESTATION_REF_DIGEST: app.manifest.desc.digest,
            },
            platform=Platform("unknown", "unknown"),
        ),
    ]
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    return BuiltIndex((app, att), _blob(json.dumps(doc).encode(), mt.OCI_INDEX))


def publish_nested(store: ImageStore, inner: BuiltIndex, workdir: Path) -> Descriptor:
    """An index whose only entry is the index `inner` (as an OCI layout's index.json often is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    blobs = []
    for img in inner.images:
        for b in img.blobs:
            path = workdir / b.desc.digest.replace(":", "-")
            path.write_bytes(b.data)
            blobs.append((path, b.desc))
    children = [(img.manifest.data, img.manifest.desc) for img in inner.images]
    children.append((inner.index.data, inner.index.desc))
    outer = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [inner.index.desc.to_json()]}
    top = _blob(json.dumps(outer).encode(), mt.OCI_INDEX)
    return write_image(store, blobs, children, (top.data, top.desc))


def unlabelled_index() -> BuiltIndex:
    """An index whose entry has no `platform` (only the image config says what it is)."""
    img = runnable_image(app_layers())
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [img.manifest.desc.to_json()]}
    return BuiltIndex((img,), _blob(json.dumps(doc).encode(), mt.OCI_INDEX))
