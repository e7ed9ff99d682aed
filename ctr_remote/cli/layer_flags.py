"""The flags that say how each layer is written, shared by `image optimize` and `image convert`
(upstream's estargz-* and zstdchunked-* flags): the click options, their checks, and the
`BuildOptions` they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ctr_remote.errors import UsageError
from ctr_remote.estargz import DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, BuildOptions, LayerFormat
from ctr_remote.layer.gzip_helper import GzipHelper, GzipHelperError

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option(
        "--estargz-compression-level",
        type=int,
        default=DEFAULT_COMPRESSION_LEVEL,
        show_default=True,
        help="eStargz compression level (gzip, 1-9)",
    ),
    click.option("--estargz-chunk-size", type=int, default=0, help="eStargz chunk size in bytes (0: 4 MiB)"),
    click.option(
        "--estargz-min-chunk-size",
        type=int,
        default=0,
        show_default=True,
        help="minimal compressed bytes of one gzip stream: smaller files share it (innerOffset; "
        "readers v0.13+; not applied to zstd:chunked)",
    ),
    click.option(
        "--estargz-external-toc",
        is_flag=True,
        help="separate the TOC JSON into another image, TARGET's tag + -esgztoc, in the same repository",
    ),
    click.option(
        "--estargz-gzip-helper",
        "--GH",
        "estargz_gzip_helper",
        metavar="HELPER",
        help="decompress gzip source layers with pigz, igzip or gzip",
    ),
    click.option(
        "--estargz-parallelism",
        type=int,
        default=0,
        show_default=True,
        help="compression threads per layer (0: one per CPU); the output is the same for any value",
    ),
    click.option(
        "--require-converted",
        is_flag=True,
        help="fail when a layer cannot be written in the layer format (non-UTF-8 names, dangling "
        "hardlinks...) instead of copying it unconverted with a warning",
    ),
    click.option(
        "--zstdchunked", is_flag=True, help="use zstd:chunked layers instead of eStargz (needs --oci)"
    ),
    click.option(
        "--zstdchunked-compression-level",
        type=int,
        default=3,
        show_default=True,
        help="zstd:chunked compression level",
    ),
]


def layer_flags(f: F) -> F:
    """Add the layer format options to a command, in upstream's order."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def check_layer_flags(p: dict[str, Any]) -> None:
    """The format combinations upstream refuses, and values out of range."""
    if p["zstdchunked"] and not p["oci"]:
        raise UsageError("option --zstdchunked must be used in conjunction with --oci")
    if p["estargz_external_toc"] and p["reuse"]:
        raise UsageError('"estargz-external-toc" can\'t be used with "reuse" flag')
    if p["estargz_external_toc"] and p["zstdchunked"]:
        raise UsageError("--estargz-external-toc can't be used with --zstdchunked (an eStargz-only layout)")
    if not 1 <= p["estargz_compression_level"] <= 9:
        raise UsageError(
            f"--estargz-compression-level must be between 1 and 9, got {p['estargz_compression_level']}"
        )
    for flag in (
        "estargz_chunk_size",
        "estargz_min_chunk_size",
        "estargz_parallelism",
        "zstdchunked_chunk_size",
    ):
        if p.get(flag, 0) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must not be negative, got {p[flag]}")
    if not 1 <= (zstd_level := p["zstdchunked_compression_level"]) <= 22:
        raise UsageError(f"--zstdchunked-compression-level must be between 1 and 22, got {zstd_level}")


def layer_options(p: dict[str, Any]) -> BuildOptions:
    """How each layer is written. As upstream, chunk size and min chunk size do not apply to
    zstd:chunked; 0 means the default for chunk size and parallelism."""
    helper = None
    if p["estargz_gzip_helper"]:
        try:
            helper = GzipHelper.find(p["estargz_gzip_helper"])  # before anything is fetched
        except GzipHelperError as e:
            raise UsageError(str(e)) from None
    workers = p["estargz_parallelism"] or None
    if p["zstdchunked"]:
        return BuildOptions(
            format=LayerFormat.ZSTD_CHUNKED,
            compression_level=p["zstdchunked_compression_level"],
            # convert's --zstdchunked-chunk-size; optimize has none (upstream's optimize ignores
            # --estargz-chunk-size for zstd:chunked).
            chunk_size=p.get("zstdchunked_chunk_size") or DEFAULT_CHUNK_SIZE,
            workers=workers,
            gzip_helper=helper,
        )
    return BuildOptions(
        compression_level=p["estargz_compression_level"],
        chunk_size=p["estargz_chunk_size"] or DEFAULT_CHUNK_SIZE,
        min_chunk_size=p["estargz_min_chunk_size"],
        external_toc=p["estargz_external_toc"],
        # convert's --estargz-keep-diff-id; optimize has none (its point is to reorder).
        lossless=p.get("estargz_keep_diff_id", False),
        workers=workers,
        gzip_helper=helper,
    )
