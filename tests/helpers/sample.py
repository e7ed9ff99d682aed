"""Runnable sample images for end-to-end tests: busybox-static plus a small shell app, in OCI or
Docker media types, single-platform or as a multi-platform index."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ctr_remote.image import Descriptor, ImageStore, digest_bytes, host_platform
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
