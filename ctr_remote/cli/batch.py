"""`ctr-remote batch FILE.yaml`: run a file of optimize/convert jobs, sharing converted layers."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import structlog

from ctr_remote.batch.runner import BatchInterrupted, JobResult, Status, default_jobs, run_batch
from ctr_remote.batch.shard import INDEX_ENV, parse_shard
from ctr_remote.cli.types import SIZE, reference
from ctr_remote.errors import CtrRemoteError, Interrupted, UsageError
from ctr_remote.image import ImageError
from ctr_remote.layercache.local import LayerCache
from ctr_remote.layercache.registry import RegistryCache
from ctr_remote.log import LogFormat, current_format

log = structlog.get_logger()


def _remote(cache_ref: str | None, plain_http: bool) -> RegistryCache | None:
    if cache_ref is None:
        return None
    try:
        return RegistryCache(reference(cache_ref, plain_http=plain_http))
    except ImageError as e:
        raise UsageError(str(e)) from None


@contextlib.contextmanager
def _cache(
    cache_dir: Path | None, remote: RegistryCache | None, max_size: int | None
) -> Iterator[LayerCache]:
    """The run's layer cache: in --cache-dir (trimmed to `max_size` once the jobs are done, not
    when they were interrupted), or in a temporary directory removed at the end."""
    if cache_dir is None:
        with (
            tempfile.TemporaryDirectory(prefix="ctr-remote-cache-") as tmp,
            LayerCache(Path(tmp), remote) as c,
        ):
            yield c
        return
    try:
        with LayerCache(cache_dir, remote) as cache:
            yield cache
            cache.close()  # this run's links go first: they are not counted, but keep blobs on disk
            if max_size is not None:
                t = cache.trim(max_size)
                log.info(
                    "layer cache trimmed",
                    evicted=t.entries,
                    freed_bytes=t.freed,
                    size=t.size,
                    max_size=max_size,
                )
    except OSError as e:
        raise CtrRemoteError(f"--cache-dir {cache_dir}: {e.strerror}") from None


def _write_report(path: Path, data: dict[str, object]) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as e:
        raise CtrRemoteError(f"cannot write the report {path}: {e.strerror}") from None


@click.command(
    "batch",
    short_help="optimize or convert many images from a YAML file, sharing converted layers",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    help="jobs run at once (default: one per CPU; each job's layers are converted on every CPU)",
)
@click.option("--fail-fast", is_flag=True, help="start no further job once one has failed")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write a JSON report: per job its digest, time and layers (converted/reused/cached) or error",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep converted layers in this directory across runs (e.g. a CI cache directory)",
)
@click.option(
    "--cache-max-size",
    type=SIZE,
    help="at the end, evict least recently used layers until --cache-dir holds at most SIZE (500M, 10G)",
)
@click.option(
    "--cache-ref",
    metavar="REF",
    help="keep converted layers in this registry repository too (one tag per layer), shared by shards",
)
@click.option(
    "--plain-http", is_flag=True, help="--cache-ref may be http://host/repo (jobs set their own plain_http)"
)
@click.option(
    "--shard",
    metavar="INDEX/COUNT",
    help=f"run only this shard's jobs (INDEX from 0; '/COUNT' takes INDEX from ${INDEX_ENV})",
)
@click.option("--dry-run", is_flag=True, help="validate the file and list this shard's jobs; run nothing")
def batch_command(
    file: Path,
    jobs: int | None,
    fail_fast: bool,
    report: Path | None,
    cache_dir: Path | None,
    cache_max_size: int | None,
    cache_ref: str | None,
    plain_http: bool,
    shard: str | None,
    dry_run: bool,
) -> None:
    """Run the optimize and convert jobs of FILE (YAML).

    The whole file is checked first: an unknown key, a bad reference or a bad value stops the run
    (exit 2) before any job starts. Jobs run --jobs at a time; a failed job does not stop the
    others unless --fail-fast. A layer several jobs convert the same way is converted once. Prints
    each job's digest and a summary; exits 1 if any job failed.
    """
    from ctr_remote.batch.spec import load  # it imports the commands whose parsers it reuses

    if cache_max_size is not None and cache_dir is None:
        raise UsageError("--cache-max-size needs --cache-dir (without it the cache is removed at the end)")
    selected = load(file)
    remote = _remote(cache_ref, plain_http)
    where = parse_shard(shard) if shard is not None else None
    if where is not None:
        selected = [j for j in selected if where.owns(j.name)]
    if dry_run:
        for job in selected:
            click.echo(f"{job.name}\t{job.kind}\t{job.source}\t{job.target}")
        return
    workers = jobs or default_jobs()

    def printed(result: JobResult) -> None:
        if result.status is Status.OK:
            click.echo(f"{result.job.name}\t{result.digest}")

    extra: dict[str, Any] = {
        "file": str(file),
        "shard": str(where) if where else None,
        "jobs_at_once": workers,
    }
    try:
        with _cache(cache_dir, remote, cache_max_size) as cache:
            result = run_batch(selected, cache, workers=workers, fail_fast=fail_fast, on_done=printed)
    except KeyboardInterrupt:
        # Not left to click, which would print a bare newline first (not a JSON line).
        raise Interrupted("interrupted") from None
    except BatchInterrupted as e:
        # Written all the same: CI keeps what the jobs that finished did, and sees which did not.
        if report is not None:
            e.result.extra = extra
            try:
                _write_report(report, e.result.to_json())
            except CtrRemoteError as unwritten:  # logged: the exit code and last line stay the interrupt's
                log.error(str(unwritten))
        raise e.error from None
    result.extra = extra
    if report is not None:
        _write_report(report, result.to_json())
    if current_format() is LogFormat.JSON:
        log.info("batch done", summary=result.summary(), ok=result.ok)
    else:
        click.echo(result.summary(), err=True)
    if not result.ok:
        failed = sum(r.status is not Status.OK for r in result.results)
        raise CtrRemoteError(f"{failed} of {len(result.results)} jobs did not succeed (see the log above)")
