"""What every verb of the command line shares: the exit statuses, the --config option
and loading the configuration with one line for the user when it is wrong. A leaf
for cli.py and the verb modules beside it (screencmd.py)."""

from __future__ import annotations

import sys
from enum import IntEnum
from pathlib import Path

import click

from .config import Config, ConfigError, load_config


class ExitStatus(IntEnum):
    """The command's exit statuses, one meaning each for every verb (see above)."""

    OK = 0
    FAILED = 1  # the API refused or failed; serve could not start
    USAGE = 2  # a bad option, argument or configuration (click's own usage errors too)
    UNREACHABLE = 3  # nothing listens, unknown host, no answer


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(readable=False),  # the loader says what is wrong, in one line
    default=None,
    help="Config file (default: $VMCTL_CONFIG, else ./config.yaml, "
    "else /etc/exhibition-vm-controller/config.yaml).",
)


def load_or_exit(
    config_path: str | None, env: dict[str, str] | None = None
) -> tuple[Config, Path | None]:
    """The configuration, or exit with status 2 and one line saying what is wrong."""
    try:
        return load_config(config_path, env)
    except ConfigError as exc:
        hint = " (or give the controller's address with --url or VMCTL_URL)" if env else ""
        click.echo(f"vmcontroller: configuration error: {exc}{hint}", err=True)
        sys.exit(ExitStatus.USAGE)


class Group(click.Group):
    """Lists commands in the order they are defined, as the help's story goes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)
