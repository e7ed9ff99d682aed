"""The `ctr-remote` command tree."""

from __future__ import annotations

import sys
from typing import ClassVar, NoReturn

import click
import structlog

from ctr_remote import __version__, signals
from ctr_remote.cli import streams
from ctr_remote.errors import CtrRemoteError, Interrupted
from ctr_remote.log import LogFormat, configure, current_format
from ctr_remote.progress import Progress


class _AliasedGroup(click.Group):
    """A group whose subcommands also answer to their upstream aliases (`images`, `i`)."""

    aliases: ClassVar[dict[str, str]] = {"images": "image", "i": "image"}

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        _, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else None), cmd, rest


@click.group(cls=_AliasedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctr-remote")
@click.option("--debug", is_flag=True, help="enable debug output in logs")
@click.option(
    "--log-format",
    type=click.Choice([f.value for f in LogFormat]),
    default=LogFormat.TEXT.value,
    show_default=True,
    help="text (upstream-style) or json (one object per line, for CI)",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_format: str) -> None:
    """A command line client for containerd's stargz snapshotter: image optimization."""
    fmt = LogFormat(log_format)
    # On a terminal each layer gets a live line, and log lines are written above them; the commands
    # find the Progress in the context.
    ctx.obj = Progress(live=fmt is LogFormat.TEXT and sys.stderr.isatty() and not debug)
    configure(debug=debug, fmt=fmt, stream=ctx.obj if ctx.obj.live else None)


@cli.group()
def image() -> None:
    """Manage images."""


def _register() -> None:
    from ctr_remote.cli.batch import batch_command
    from ctr_remote.cli.check import check_command, get_toc_digest_command
    from ctr_remote.cli.cleanup import cleanup_command
    from ctr_remote.cli.convert import convert_command
    from ctr_remote.cli.optimize import optimize_command

    image.add_command(optimize_command)
    image.add_command(convert_command)
    image.add_command(check_command)
    image.add_command(get_toc_digest_command)
    cli.add_command(cleanup_command)
    cli.add_command(batch_command)


_register()


def _fail(message: str, exit_code: int) -> NoReturn:
    """The one error line: plain text, or a JSON object once `--log-format json` is in force."""
    if current_format() is LogFormat.JSON:
        structlog.get_logger().error(message, exit_code=exit_code)
    else:
        line = f"ctr-remote: {message}"
        if exit_code == Interrupted.exit_code and sys.stderr.isatty():
            line = "\n" + line  # below the terminal's ^C
        click.echo(line, err=True)
    sys.exit(exit_code)


def main() -> None:
    streams.open_standard_fds()  # before anything opens a file
    signals.install()  # the first SIGINT/SIGTERM raises; cleanup on the way out cannot be interrupted
    try:
        cli.main(standalone_mode=False)
    except CtrRemoteError as e:
        _fail(str(e), e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", Interrupted.exit_code)
    except click.UsageError as e:
        # One line, like every other error; the hint says where the full usage is.
        where = e.ctx.command_path if e.ctx else "ctr-remote"
        _fail(f"{e.format_message()} (see '{where} --help')", e.exit_code)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
