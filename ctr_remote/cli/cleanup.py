"""`ctr-remote cleanup`: remove what runs that died (SIGKILL, the OOM killer, a crash) left behind."""

from __future__ import annotations

import click
import structlog

from ctr_remote.runstate import runs_dir, sweep


@click.command("cleanup")
def cleanup_command() -> None:
    """Remove what dead runs left behind.

    Every run records what it creates on the host (containers, network namespaces, mounts, temp dirs)
    under /run/ctr-remote/runs with its pid and start time. This removes what is recorded for runs
    whose process is gone, one line per thing removed on stdout, and waits for the cleanup a dead run's
    own janitor may have under way. Runs still alive are left alone. Every `image optimize` does the
    same at its start, without waiting.
    """
    for item in sweep(wait=True):
        click.echo(f"removed {item}")


def sweep_before_run() -> None:
    """What a dead run left is removed before this one starts, and said on stderr."""
    for item in sweep(wait=False):
        structlog.get_logger().warning(
            "removed what a dead run left behind", item=item, records=str(runs_dir())
        )
