"""The `ctr-remote` command tree."""

from __future__ import annotations

import sys
from typing import ClassVar

import click

from ctr_remote import __version__
from ctr_remote.errors import CtrRemoteError


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
def cli() -> None:
    """A command line client for containerd's stargz snapshotter: image optimization."""


@cli.group()
def image() -> None:
    """Manage images."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except CtrRemoteError as e:
        click.echo(f"ctr-remote: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("ctr-remote: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
