"""How a registry store reaches its registry: credentials, certificates, retries, upload sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.image.reference import Reference


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach a registry (go-containerregistry's `remote.Option`s, as one value)."""

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
