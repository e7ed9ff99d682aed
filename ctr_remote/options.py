"""How to convert: plain data the CLI validates once and the pipeline reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_COMPRESSION_LEVEL = 9
DEFAULT_ZSTD_COMPRESSION_LEVEL = 3  # upstream's zstd.SpeedDefault


@dataclass(frozen=True)
class OptimizeOptions:
    plain_http: bool = False
    reuse: bool = False
    platforms: tuple[str, ...] = ()  # empty: the host platform
    all_platforms: bool = False
    optimize: bool = True  # False with --no-optimize
    prefetch_list: Path | None = None  # prioritize these paths/globs instead of running the workload
    record_out: Path | None = None
    oci: bool = False
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    chunk_size: int = DEFAULT_CHUNK_SIZE
    zstdchunked: bool = False  # zstd:chunked layers (chunk sizes do not apply, as upstream)
    zstd_compression_level: int = DEFAULT_ZSTD_COMPRESSION_LEVEL
    min_chunk_size: int = 0
    external_toc: bool = False  # the TOCs go to the image TARGET-esgztoc
    gzip_helper: str | None = None  # pigz, igzip or gzip decompresses gzip source layers
    parallelism: int | None = None  # compression threads per layer; None: one per CPU

    @property
    def runs_workload(self) -> bool:
        return self.optimize and self.prefetch_list is None
