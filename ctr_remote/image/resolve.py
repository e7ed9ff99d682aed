"""What a reference names: its top-level document and the single-platform images chosen from it.

    resolved = resolve_images(store, platforms, all_platforms=False)
    resolved.index      # the top-level index, or None for a single manifest
    resolved.images     # ImageBlobs for each chosen platform, in index order

Nested indexes are flattened (their entries' platforms kept) and BuildKit's attestation manifests
dropped: those describe the source manifests and their in-toto layers are not file systems.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from ctr_remote.image import mediatypes as mt
from ctr_remote.image.errors import ImageError
from ctr_remote.image.manifest import Descriptor, Index, parse_index, sniff_media_type
from ctr_remote.image.platform import Platform, select_manifests
from ctr_remote.image.store import ImageStore
from ctr_remote.image.transfer import ImageBlobs, config_platform, read_image

log = structlog.get_logger()

MAX_INDEX_DEPTH = 8
ATTESTATION_TYPE_ANNOTATION = "vnd.docker.reference.type"


@dataclass
class ResolvedImage:
    top: Descriptor
    index: Index | None  # None: the reference names a single manifest
    images: list[ImageBlobs]


def resolve_images(
    store: ImageStore, platforms: Sequence[Platform] = (), *, all_platforms: bool = False
) -> ResolvedImage:
    """The images of `store`'s reference for `platforms` (default: the host's), or all of them.
    A single manifest is taken whatever the platforms, as upstream does."""
    top = store.resolve()
    top_bytes = store.read_manifest(top)
    if not mt.is_index(top.media_type):
        return ResolvedImage(top, None, [read_image(store, top)])
    index = parse_index(top_bytes, top.media_type, what=f"index {top.digest}")
    chosen = select_manifests(
        image_entries(store, index),
        platforms,
        all_platforms=all_platforms,
        platform_of=config_platform(store),
    )
    return ResolvedImage(top, index, [read_image(store, d) for d in chosen])


def image_entries(store: ImageStore, index: Index, depth: int = 0) -> list[Descriptor]:
    """The image manifests of `index`, nested indexes flattened, attestation manifests dropped."""
    if depth > MAX_INDEX_DEPTH:
        raise ImageError(f"indexes nested more than {MAX_INDEX_DEPTH} deep")
    out: list[Descriptor] = []
    for entry in index.manifests:
        if is_attestation(entry):
            log.info("dropping attestation manifest of the source image", digest=entry.digest)
            continue
        media = entry.media_type
        if not media:
            media = sniff_media_type(store.read_manifest(entry))
            entry = replace(entry, media_type=media)
        if mt.is_index(media):
            log.info("flattening nested index", digest=entry.digest)
            nested = parse_index(store.read_manifest(entry), media, what=f"index {entry.digest}")
            out.extend(image_entries(store, nested, depth + 1))
        else:
            out.append(entry)
    return out


def is_attestation(entry: Descriptor) -> bool:
    """BuildKit's attestation manifests: annotated as such, and on the `unknown/unknown` platform."""
    if (entry.annotations or {}).get(ATTESTATION_TYPE_ANNOTATION) == "attestation-manifest":
        return True
    return entry.platform is not None and entry.platform.os == "unknown"
