"""The one interface images are read and written through (`open.py:open_store` picks the backend).

A store is opened on one reference (a registry repository or an OCI layout directory) and speaks in
descriptors. Writing follows one order everywhere: blobs, then manifests (and configs as blobs),
then the top-level index or manifest with `top=True`, which is the only write that makes the image
visible under the reference's tag (registry) or `ref.name` (layout). A failed run therefore never
leaves the tag on a partial image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from ctr_remote.cancel import CancelToken
from ctr_remote.image.manifest import Descriptor
from ctr_remote.image.reference import Reference


@runtime_checkable
class ImageStore(Protocol):
    """Where an image is read from or written to; same verbs for registries and layouts."""

    reference: Reference

    def resolve(self) -> Descriptor:
        """The reference's top-level descriptor (an index or a manifest)."""
        ...

    def read_manifest(self, desc: Descriptor) -> bytes:
        """The bytes of a manifest, index or config blob, digest and size verified."""
        ...

    def fetch_blob(self, desc: Descriptor, dest: Path, *, cancel: CancelToken | None = None) -> None:
        """Stream a blob to `dest` (replaced atomically), digest and size verified. Once `cancel` is
        set the download stops (Cancelled) at its next request or chunk, leaving no file."""
        ...

    def push_blob(self, src: Path, desc: Descriptor, *, cancel: CancelToken | None = None) -> None:
        """Upload a blob (layer or config) unless it is already there; mount it when possible.
        Once `cancel` is set the upload stops (Cancelled) at its next request or chunk."""
        ...

    def push_manifest(self, data: bytes, desc: Descriptor, *, top: bool = False) -> None:
        """Store a manifest or index. `top=True` for the last, top-level one: it is then also tagged
        with the reference's tag (registry) or recorded in `index.json` (layout)."""
        ...

    def check_push_access(self) -> None:
        """Fail now, with the error a push would meet, if this target cannot be written: before the
        expensive part (pull, workload, conversion) rather than after it."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ImageStore: ...

    def __exit__(self, *exc: object) -> None: ...
