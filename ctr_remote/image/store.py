"""The one interface images are read and written through, and `open_store` that picks the backend.

A store is opened on one reference (a registry repository or an OCI layout directory) and speaks in
descriptors. Writing follows one order everywhere: blobs, then manifests (and configs as blobs),
then the top-level index or manifest with `top=True`, which is the only write that makes the image
visible under the reference's tag (registry) or `ref.name` (layout). A failed run therefore never
leaves the tag on a partial image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ctr_remote.image.cancel import CancelToken
from ctr_remote.image.manifest import Descriptor
from ctr_remote.image.reference import Reference


@dataclass(frozen=True)
class StoreOptions:
    """How to reach a registry. Layout stores ignore everything but nothing here is required."""

    # Directory holding `config.json` (Docker's auths/credsStore/credHelpers); None: $DOCKER_CONFIG,
    # else ~/.docker.
    docker_config: Path | None = None
    # Per-registry extra CAs and client certs, as Docker reads them: DIR/HOST[:PORT]/{*.crt,*.cert,*.key}.
    certs_dir: Path = Path("/etc/docker/certs.d")
    # A repository on the same registry the pushed blobs may be mounted from (the source image).
    mount_from: Reference | None = None
    # Transient failures (connection errors, 429, 5xx) are retried this many times per request, with
    # exponential backoff from `backoff` seconds, capped at `backoff_max` (Retry-After is honoured).
    retries: int = 5
    backoff: float = 0.25
    backoff_max: float = 8.0
    timeout: float = 60.0
    # Blobs up to this size are uploaded in one PUT; larger ones in PATCH chunks of this size.
    chunk_size: int = 16 << 20

    def config_dir(self) -> Path:
        if self.docker_config is not None:
            return self.docker_config
        env = os.environ.get("DOCKER_CONFIG")
        return Path(env) if env else Path.home() / ".docker"


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
        set the download stops (TransferCancelled) at its next request or chunk, leaving no file."""
        ...

    def push_blob(self, src: Path, desc: Descriptor, *, cancel: CancelToken | None = None) -> None:
        """Upload a blob (layer or config) unless it is already there; mount it when possible.
        Once `cancel` is set the upload stops (TransferCancelled) at its next request or chunk."""
        ...

    def push_manifest(self, data: bytes, desc: Descriptor, *, top: bool = False) -> None:
        """Store a manifest or index. `top=True` for the last, top-level one: it is then also tagged
        with the reference's tag (registry) or recorded in `index.json` (layout)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> ImageStore: ...

    def __exit__(self, *exc: object) -> None: ...


def open_store(ref: Reference, options: StoreOptions | None = None) -> ImageStore:
    """A store for `ref`: a LayoutStore for `local://` references, a RegistryStore otherwise."""
    options = options or StoreOptions()
    if ref.is_layout:
        from ctr_remote.image.layout import LayoutStore

        return LayoutStore(ref)
    from ctr_remote.image.registry import RegistryStore

    return RegistryStore(ref, options)
