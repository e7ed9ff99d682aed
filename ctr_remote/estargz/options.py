"""What `build` takes and what it gives back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ctr_remote.estargz.errors import EstargzError

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_COMPRESSION_LEVEL = 9  # gzip's best, upstream's default


@dataclass(frozen=True)
class BuildOptions:
    """How to write an eStargz blob.

    chunk_size: regular files larger than this are split into chunks, each in its own gzip member.
    compression_level: gzip level, 1 (fastest) to 9 (smallest, upstream's default).
    prioritized_files: paths (as in the layer; `./` and `/` prefixes are ignored) to put first, in
        this order, followed by `.prefetch.landmark`. None or empty: `.no.prefetch.landmark` first.
    workers: compression threads; None means one per CPU. The output is byte-identical whatever
        the value.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    prioritized_files: Sequence[str] | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise EstargzError(f"chunk size must be a positive number of bytes, not {self.chunk_size!r}")
        if not isinstance(self.compression_level, int) or not 1 <= self.compression_level <= 9:
            raise EstargzError(f"gzip compression level must be 1..9, not {self.compression_level!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise EstargzError(f"workers must be at least 1, not {self.workers!r}")
        if isinstance(self.prioritized_files, str):
            # A bare string would silently become a list of one-character paths.
            raise EstargzError("prioritized_files must be a sequence of paths, not a string")


@dataclass(frozen=True)
class BuildResult:
    """What was written.

    digest / size: of the eStargz blob (the layer descriptor's digest and size).
    toc_digest: sha256 of the exact TOC JSON bytes (the `containerd.io/snapshot/stargz/toc.digest`
        annotation).
    diff_id / uncompressed_size: sha256 and length of the whole decompressed blob (the config's
        `rootfs.diff_ids` entry and the `io.containers.estargz.uncompressed-size` annotation).
    missing_prioritized: paths of `prioritized_files` not found in the layer (not fatal).
    """

    digest: str
    size: int
    toc_digest: str
    diff_id: str
    uncompressed_size: int
    missing_prioritized: tuple[str, ...] = ()
