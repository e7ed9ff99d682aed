"""Small test images assembled in memory (tar layers, config, manifest, index) and pushed through
any ImageStore, in Docker or OCI media types. Contents are deterministic: same input, same digests.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.image import Descriptor, ImageStore, Platform, digest_bytes, parse_platform, write_image
from ctr_remote.image import mediatypes as mt


@dataclass(frozen=True)
class Blob:
    data: bytes
    desc: Descriptor


@dataclass(frozen=True)
class BuiltImage:
    layers: tuple[Blob, ...]
    config: Blob
    manifest: Blob

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


@dataclass(frozen=True)
class BuiltIndex:
    images: tuple[BuiltImage, ...]
    index: Blob


def tar_layer(files: dict[str, bytes], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def _blob(data: bytes, media_type: str, **kw: object) -> Blob:
    return Blob(data, Descriptor(media_type, digest_bytes(data), len(data), **kw))  # type: ignore[arg-type]


def build_image(
    layers: list[dict[str, bytes]],
    *,
    docker: bool = False,
    platform: str = "linux/amd64",
    compress: bool = True,
) -> BuiltImage:
    plat = parse_platform(platform)
    layer_type = (mt.DOCKER_LAYER_GZIP if compress else mt.DOCKER_LAYER) if docker else (
        mt.OCI_LAYER_GZIP if compress else mt.OCI_LAYER
    )  # fmt: skip
    blobs = tuple(_blob(tar_layer(f, compress=compress), layer_type) for f in layers)
    diff_ids = [digest_bytes(tar_layer(f, compress=False)) for f in layers]
    config = {
        "architecture": plat.architecture,
        "os": plat.os,
        **({"variant": plat.variant} if plat.variant else {}),
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    cfg = _blob(json.dumps(config, sort_keys=True).encode(), mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG)
    manifest_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": cfg.desc.to_json(),
        "layers": [b.desc.to_json() for b in blobs],
    }
    return BuiltImage(blobs, cfg, _blob(json.dumps(manifest, indent=3).encode(), manifest_type))


def build_index(images: list[BuiltImage], *, docker: bool = False) -> BuiltIndex:
    index_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
    entries = []
    for img in images:
        cfg = json.loads(img.config.data)
        plat = Platform(cfg["os"], cfg["architecture"], cfg.get("variant"))
        d = img.manifest.desc
        entries.append(Descriptor(d.media_type, d.digest, d.size, platform=plat).to_json())
    doc = {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
    return BuiltIndex(tuple(images), _blob(json.dumps(doc, indent=2).encode(), index_type))


def push(store: ImageStore, image: BuiltImage | BuiltIndex, workdir: Path) -> Descriptor:
    """Write `image` to `store` through `write_image` (blobs, manifests, top-level last, tagged)."""
    images = image.images if isinstance(image, BuiltIndex) else (image,)
    workdir.mkdir(parents=True, exist_ok=True)
    blobs = []
    for img in images:
        for b in img.blobs:
            path = workdir / b.desc.digest.replace(":", "-")
            path.write_bytes(b.data)
            blobs.append((path, b.desc))
    if isinstance(image, BuiltIndex):
        children = [(img.manifest.data, img.manifest.desc) for img in images]
        return write_image(store, blobs, children, (image.index.data, image.index.desc))
    return write_image(store, blobs, [], (image.manifest.data, image.manifest.desc))
