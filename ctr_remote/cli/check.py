"""`ctr-remote image check` and `ctr-remote image get-toc-digest`: the reader side, for users."""

from __future__ import annotations

import json

import click

from ctr_remote.cli.types import check_platform_flags, platform_flags, reference
from ctr_remote.errors import CtrRemoteError, UsageError
from ctr_remote.image import Platform


class CheckFailed(CtrRemoteError):
    """A layer did not verify: the report is printed, then this one line names it."""


@click.command("check")
@click.argument("ref")
@click.option("--plain-http", is_flag=True, help="allow connections using plain HTTP")
@platform_flags(
    "check the image for the specified platform (repeatable; default: this machine's)",
    "check every platform of an index",
)
@click.option(
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="a table for people, or one JSON document for CI",
)
@click.option("--list-prioritized", is_flag=True, help="list each layer's prioritized paths")
@click.option("--strict", is_flag=True, help="also fail on layers that are not eStargz and on warnings")
def check_command(
    ref: str,
    plain_http: bool,
    platform: tuple[Platform, ...],
    all_platforms: bool,
    output: str,
    list_prioritized: bool,
    strict: bool,
) -> None:
    """Verify every layer of REF as lazy pulling will read it.

    For each layer: eStargz or not, the TOC against its toc.digest annotation, every chunk against
    its digest, the tar headers against the TOC, the diff ID against the image config, the landmark
    and the bytes the snapshotter prefetches first. Exit 0 when every eStargz layer verifies.
    """
    check_platform_flags(platform, all_platforms)
    from ctr_remote.check import check_image

    report = check_image(
        reference(ref, plain_http=plain_http), platforms=platform, all_platforms=all_platforms
    )
    if output == "json":
        click.echo(json.dumps(report.to_json(list_prioritized), indent=2))
    else:
        from ctr_remote.cli.check_table import render

        click.echo(render(report, list_prioritized), nl=False)
    failure = report.first_failure(strict)
    if failure:
        raise CheckFailed(failure)


@click.command("get-toc-digest")
@click.argument("ref")
@click.argument("layer_digest")
@click.option("--plain-http", is_flag=True, help="allow connections using plain HTTP")
@click.option(
    "--dump-toc",
    is_flag=True,
    help="dump TOC instead of digest. Note that the dumped TOC might be formatted with indents so may "
    "have different digest against the original in the layer",
)
def get_toc_digest_command(ref: str, layer_digest: str, plain_http: bool, dump_toc: bool) -> None:
    """Get the digest of the TOC of a layer of REF (a layer of any of its platforms)."""
    from ctr_remote.image.digest import validate_digest
    from ctr_remote.image.errors import ImageError

    parsed = reference(ref, plain_http=plain_http)
    try:
        validate_digest(layer_digest)
    except ImageError as e:
        raise UsageError(str(e)) from None
    from ctr_remote.check import read_toc

    toc_digest, toc_json = read_toc(parsed, layer_digest)
    if dump_toc:
        click.echo(json.dumps(json.loads(toc_json), indent="\t", ensure_ascii=False))
    else:
        click.echo(toc_digest)
