"""What `build` takes and what it gives back."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ctr_remote.estargz.errors import EstargzError
from ctr_remote.layer.gzip_helper import GzipHelper

DEFAULT_CHUNK_SIZE = 4 << 20
DEFAULT_COMPRESSION_LEVEL = 9  # gzip's best, upstream's default


class LayerFormat(enum.Enum):
    """The compression a blob is written in, as upstream's `Build` takes a `Compression`."""

    ESTARGZ = "estargz"  # gzip members, TOC in the last member, 51-byte footer
    ZSTD_CHUNKED = "zstd:chunked"  # zstd frames, TOC and footer in skippable frames

    @property
    def default_level(self) -> int:
        # Upstream's defaults: gzip.BestCompression; zstd's SpeedDefault (level 3).
        return 9 if self is LayerFormat.ESTARGZ else 3

    @property
    def levels(self) -> range:
        return range(1, 10) if self is LayerFormat.ESTARGZ else range(1, 23)


@dataclass(frozen=True)
class BuildOptions:
    """How to write an eStargz (or zstd:chunked) blob.

    format: gzip eStargz (default) or zstd:chunked.
    chunk_size: regular files larger than this are split into chunks, each in its own member.
    compression_level: gzip 1 (fastest) to 9 (smallest, upstream's default), or zstd 1 to 22;
        None: the format's default (gzip 9, zstd 3).
    min_chunk_size: 0, or upstream's `--estargz-min-chunk-size`: a chunk starts a new member only
        once the current one holds at least this many compressed bytes; otherwise it joins it and
        is found through `innerOffset` (readers v0.13+). Landmarks always start a member.
    external_toc: the TOC is not written into the blob (46-byte `STARGZEXTERNALTOC` footer); it
        is returned as a separate gzip blob (`BuildResult.external_toc`). gzip eStargz only.
    prioritized_files: paths (as in the layer; `./` and `/` prefixes are ignored) to put first, in
        this order, followed by `.prefetch.landmark`. None or empty: `.no.prefetch.landmark` first.
    workers: compression threads; None means one per CPU. The output is byte-identical whatever
        the value.
    gzip_helper: decompress a gzip input with this program (pigz, igzip, gzip) instead of zlib-ng.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int | None = None
    prioritized_files: Sequence[str] | None = None
    workers: int | None = None
    format: LayerFormat = LayerFormat.ESTARGZ
    min_chunk_size: int = 0
    external_toc: bool = False
    gzip_helper: GzipHelper | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise EstargzError(f"chunk size must be a positive number of bytes, not {self.chunk_size!r}")
        if not isinstance(self.format, LayerFormat):
            raise EstargzError(f"unknown layer format {self.format!r}")
        level = self.compression_level
        if level is not None and (not isinstance(level, int) or level not in self.format.levels):
            kind = "gzip" if self.format is LayerFormat.ESTARGZ else "zstd"
            first, last = self.format.levels[0], self.format.levels[-1]
            raise EstargzError(f"{kind} compression level must be {first}..{last}, not {level!r}")
        if not isinstance(self.min_chunk_size, int) or self.min_chunk_size < 0:
            raise EstargzError(f"min chunk size must be 0 or more bytes, not {self.min_chunk_size!r}")
        if self.external_toc and self.format is not LayerFormat.ESTARGZ:
            raise EstargzError("an external TOC is only defined for gzip eStargz")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise EstargzError(f"workers must be at least 1, not {self.workers!r}")
        if isinstance(self.prioritized_files, str):
            # A bare string would silently become a list of one-character paths.
            raise EstargzError("prioritized_files must be a sequence of paths, not a string")

    @property
    def level(self) -> int:
        return self.format.default_level if self.compression_level is None else self.compression_level


@dataclass(frozen=True)
class BuildResult:
    """What was written.

    digest / size: of the blob (the layer descriptor's digest and size).
    toc_digest: sha256 of the exact TOC JSON bytes (the `containerd.io/snapshot/stargz/toc.digest`
        annotation).
    diff_id / uncompressed_size: sha256 and length of the whole decompressed blob (the config's
        `rootfs.diff_ids` entry and the `io.containers.estargz.uncompressed-size` annotation).
    annotations: further layer annotations the format needs (zstd:chunked's manifest checksum and
        position, under upstream's and containers/storage's names).
    external_toc: with `external_toc`, the TOC blob (a gzip member holding a tar of
        `stargz.index.json`), the layer of the `-esgztoc` image.
    missing_prioritized: paths of `prioritized_files` not found in the layer (not fatal).
    """

    digest: str
    size: int
    toc_digest: str
    diff_id: str
    uncompressed_size: int
    missing_prioritized: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    external_toc: bytes | None = None
