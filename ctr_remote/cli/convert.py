"""`ctr-remote image convert`: upstream's convert flags; the optimize pipeline without a workload.

The prioritized files come from a record (`--estargz-record-in`, written by `optimize --record-out`)
or nowhere. Nothing runs, so no root, runc or FUSE is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import structlog

from ctr_remote.cli.layer_flags import check_layer_flags, layer_flags, layer_options
from ctr_remote.cli.types import check_platform_flags, platform_flags, reference
from ctr_remote.errors import UsageError
from ctr_remote.options import OptimizeOptions
from ctr_remote.record import Record, RecordError

log = structlog.get_logger()


def _record(path: Path | None) -> Record | None:
    if path is None:
        return None
    try:
        return Record.load(path)
    except RecordError as e:
        raise UsageError(str(e)) from None


def _conflicts(p: dict[str, Any]) -> None:
    """Upstream's refusals, in upstream's words."""
    if p["estargz"] and p["uncompress"]:
        raise UsageError("option --estargz conflicts with --uncompress")
    if p["estargz"] and p["zstdchunked"]:
        raise UsageError("option --estargz conflicts with --zstdchunked")
    if p["zstdchunked"] and p["uncompress"]:
        raise UsageError("option --zstdchunked conflicts with --uncompress")
    if p["estargz_keep_diff_id"] and not p["estargz_external_toc"]:
        raise UsageError("option --estargz-keep-diff-id must be used with --estargz-external-toc")
    if p["estargz_keep_diff_id"] and p["estargz_record_in"]:
        raise UsageError("option --estargz-keep-diff-id conflicts with --estargz-record-in")
    if not (p["estargz"] or p["zstdchunked"] or p["uncompress"]):
        raise UsageError("specify layer converter (--estargz, --zstdchunked or --uncompress)")
    check_platform_flags(p["platform"], p["all_platforms"])
    if p["estargz_record_in"] and not p["estargz"]:
        raise UsageError("--estargz-record-in needs --estargz")
    if p["zstdchunked_record_in"] and not p["zstdchunked"]:
        raise UsageError("--zstdchunked-record-in needs --zstdchunked")
    if p["reuse"] and p["uncompress"]:
        raise UsageError("--reuse can't be used with --uncompress")
    check_layer_flags(p)


def _options(source_ref: str, target_ref: str, p: dict[str, Any]) -> OptimizeOptions:
    return OptimizeOptions(
        source=reference(source_ref, plain_http=p["plain_http"]),
        target=reference(target_ref, plain_http=p["plain_http"]),
        platforms=tuple(p["platform"]),
        all_platforms=p["all_platforms"],
        optimize=False,
        record_in=_record(p["estargz_record_in"] or p["zstdchunked_record_in"]),
        reuse=p["reuse"],
        oci=p["oci"],
        layer=layer_options(p),
        require_converted=p["require_converted"],
        uncompressed=p["uncompress"],
    )


def parse(source_ref: str, target_ref: str, params: dict[str, Any]) -> OptimizeOptions:
    """The command's parsed params as typed options: what `convert_command` and a batch file's
    `convert` jobs run (one parser for both)."""
    _conflicts(params)
    options = _options(source_ref, target_ref, params)
    if params["estargz"] and not params["oci"]:
        log.warning("option --estargz should be used in conjunction with --oci")
    return options


_record_file = click.Path(dir_okay=False, path_type=Path)


@click.command(
    "convert",
    short_help="convert an image",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("source_ref")
@click.argument("target_ref")
@click.option(
    "--estargz",
    is_flag=True,
    help="convert legacy tar(.gz) layers to eStargz for lazy pulling. "
    "Should be used in conjunction with '--oci'",
)
@click.option(
    "--estargz-record-in",
    type=_record_file,
    help="Read 'ctr-remote optimize --record-out=<FILE>' record file",
)
@click.option(
    "--estargz-keep-diff-id",
    is_flag=True,
    help="convert to esgz without changing diffID (cannot be used in conjunction with "
    "'--estargz-record-in'. must be specified with '--estargz-external-toc')",
)
@layer_flags
@click.option("--zstdchunked-record-in", type=_record_file, help="Read a record file (with --zstdchunked)")
@click.option("--zstdchunked-chunk-size", type=int, default=0, help="zstd:chunked chunk size (0: 4 MiB)")
@click.option("--uncompress", is_flag=True, help="convert tar.gz layers to uncompressed tar layers")
@click.option("--oci", is_flag=True, help="convert Docker media types to OCI media types")
@platform_flags("Convert content for a specific platform; repeatable", "Convert content for all platforms")
@click.option(
    "--plain-http", is_flag=True, help="allow HTTP connections to registries given as http://host/repo"
)
@click.option(
    "--reuse", is_flag=True, help="copy layers that are eStargz already and verify, instead of converting"
)
def convert_command(source_ref: str, target_ref: str, **params: Any) -> None:
    """Convert an image format.

    e.g., 'ctr-remote image convert --estargz --oci example.com/foo:orig example.com/foo:esgz'.
    With --estargz-record-in, each layer puts first the files a recorded `optimize --record-out`
    run read from it. Needs no root: nothing is run.
    """
    options = parse(source_ref, target_ref, params)
    from ctr_remote.optimize import convert  # the pipeline pulls in every package: load it only to run

    root = click.get_current_context().find_root()
    result = convert(options, root.obj)
    click.echo("\n".join([*(f"extra image: {name}" for name in result.extra_images), result.digest]))
