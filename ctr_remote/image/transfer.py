"""Moving blobs and whole images between stores, with blobs of different layers in parallel."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.cancel import CancelToken, run_parallel
from ctr_remote.image import mediatypes as mt
from ctr_remote.image.digest import encoded
from ctr_remote.image.errors import UnsupportedMediaTypeError
from ctr_remote.image.files import write_atomic
from ctr_remote.image.manifest import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    parse_config,
    parse_index,
    parse_manifest,
)
from ctr_remote.image.platform import Platform, select_manifests
from ctr_remote.image.store import ImageStore

DEFAULT_WORKERS = 4


@dataclass
class ImageBlobs:
    """One single-platform image as read from a store: its manifest and config, parsed and raw."""

    manifest_desc: Descriptor
    manifest_bytes: bytes
    manifest: Manifest
    config_bytes: bytes
    config: ImageConfig


def read_image(store: ImageStore, desc: Descriptor) -> ImageBlobs:
    """Read the manifest `desc` and its config from `store`."""
    data = store.read_manifest(desc)
    manifest = parse_manifest(data, desc.media_type, what=f"manifest {desc.digest}")
    config_bytes = store.read_manifest(manifest.config)
    return ImageBlobs(
        desc, data, manifest, config_bytes, parse_config(config_bytes, f"config {manifest.config.digest}")
    )


def config_platform(store: ImageStore) -> Callable[[Descriptor], Platform | None]:
    """For `select_manifests(platform_of=...)`: the platform an image's config names (containerd's
    answer for an index entry without one); None for an entry that is not an image manifest."""

    def platform_of(desc: Descriptor) -> Platform | None:
        if not mt.is_manifest(desc.media_type):
            return None
        return read_image(store, desc).config.platform

    return platform_of


def _fetch(store: ImageStore, desc: Descriptor, dest: Path, cancel: CancelToken) -> None:
    store.fetch_blob(desc, dest, cancel=cancel)


def _push(store: ImageStore, src: Path, desc: Descriptor, cancel: CancelToken) -> None:
    store.push_blob(src, desc, cancel=cancel)


def fetch_blobs(
    store: ImageStore,
    items: Sequence[tuple[Descriptor, Path]],
    *,
    workers: int = DEFAULT_WORKERS,
    cancel: CancelToken | None = None,
) -> None:
    """Download each (descriptor, destination) in parallel, every blob verified; setting `cancel`
    stops them all."""
    run_parallel([functools.partial(_fetch, store, d, p) for d, p in items], workers, parent=cancel)


def push_blobs(
    store: ImageStore,
    items: Sequence[tuple[Path, Descriptor]],
    *,
    workers: int = DEFAULT_WORKERS,
    cancel: CancelToken | None = None,
) -> None:
    """Upload each (file, descriptor) in parallel (existing blobs are skipped by the store);
    setting `cancel` stops them all."""
    run_parallel([functools.partial(_push, store, p, d) for p, d in items], workers, parent=cancel)


def write_image(
    dst: ImageStore,
    blobs: Sequence[tuple[Path, Descriptor]],
    manifests: Sequence[tuple[bytes, Descriptor]],
    top: tuple[bytes, Descriptor],
    *,
    workers: int = DEFAULT_WORKERS,
    cancel: CancelToken | None = None,
) -> Descriptor:
    """Write an image in the only safe order: blobs (layers and configs, in parallel), then the
    child manifests, then the top-level index or manifest, which alone moves the tag. Returns the
    top descriptor. If anything fails, the tag still names what it named before."""
    push_blobs(dst, blobs, workers=workers, cancel=cancel)
    if cancel is not None:
        cancel.check("writing the image")
    for data, desc in manifests:
        dst.push_manifest(data, desc)
    dst.push_manifest(top[0], top[1], top=True)
    return top[1]


def copy_image(
    src: ImageStore,
    dst: ImageStore,
    workdir: Path,
    *,
    platforms: Sequence[Platform] | None = None,
    all_platforms: bool = True,
    workers: int = DEFAULT_WORKERS,
) -> Descriptor:
    """Copy the image `src` resolves to into `dst` (tagged as dst's reference); returns the top
    descriptor written. Digests are kept unless platform filtering rewrites the index."""
    top = src.resolve()
    data = src.read_manifest(top)
    images: list[ImageBlobs]
    if mt.is_index(top.media_type):
        index = parse_index(data, top.media_type, what=f"index {top.digest}")
        # Filling in platforms from configs would rewrite an index that is copied whole.
        platform_of = None if all_platforms else config_platform(src)
        chosen = select_manifests(
            index.manifests, platforms, all_platforms=all_platforms, platform_of=platform_of
        )
        for d in chosen:
            if not mt.is_manifest(d.media_type):
                raise UnsupportedMediaTypeError(
                    f"index {top.digest}: nested entry {d.digest} ({d.media_type})"
                )
        images = [read_image(src, d) for d in chosen]
        if len(chosen) != len(index.manifests):
            data = Index(index.media_type, chosen, index.annotations, extra=index.extra).to_bytes()
            top = Descriptor.of(data, index.media_type, annotations=top.annotations)
    else:
        images = [read_image(src, top)]

    blobs: dict[str, Descriptor] = {}
    for img in images:
        for d in [img.manifest.config, *img.manifest.layers]:
            blobs.setdefault(d.digest, d)
    workdir.mkdir(parents=True, exist_ok=True)
    files = {dg: workdir / encoded(dg) for dg in blobs}
    for img in images:  # configs were read (and verified) already
        write_atomic(files[img.manifest.config.digest], img.config_bytes)
    configs = {img.manifest.config.digest for img in images}
    fetch_blobs(src, [(d, files[dg]) for dg, d in blobs.items() if dg not in configs], workers=workers)
    children = (
        [(img.manifest_bytes, img.manifest_desc) for img in images] if mt.is_index(top.media_type) else []
    )
    return write_image(
        dst, [(files[dg], d) for dg, d in blobs.items()], children, (data, top), workers=workers
    )
