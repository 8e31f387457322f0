"""The command line: ``vmcontroller serve`` and ``vmcontroller check-config``.

Exit status 2 means "fix the configuration or the command line", and the
message is one line: systemd shows the last lines of a failed unit, and a
traceback there hides the one line that matters.
"""
from __future__ import annotations

import sys

import click
import yaml

from . import __version__
from .config import ConfigError, as_dict, load_config

USAGE_ERROR = 2

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Config file (default: $VMCTL_CONFIG, else ./config.yaml, "
         "else /etc/exhibition-vm-controller/config.yaml).")


def _load(config_path: str | None):
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"vmcontroller: configuration error: {exc}", err=True)
        sys.exit(USAGE_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmcontroller")
def main() -> None:
    """Exhibition VM Controller: keeps a VM-hosted artwork running unattended."""


@main.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run the controller: REST API, heartbeat monitor and automatic recovery."""
    config, source = _load(config_path)
    # Imported here so that check-config and --help stay fast and need no server stack.
    from .server import Controller, configure_logging

    configure_logging(config.log_level)
    if source is None:
        click.echo("vmcontroller: no config file found; using defaults and VMCTL_* variables",
                   err=True)
    from .store import StoreError

    try:
        controller = Controller(config)
    except StoreError as exc:
        click.echo(f"vmcontroller: {exc} (set state_path to a writable file)", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"vmcontroller: cannot listen on {config.api_host}:{config.api_port}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(1)
    controller.serve_forever()


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and print the effective values."""
    config, source = _load(config_path)
    click.echo(f"# effective configuration (file: {source or 'none'}, then VMCTL_* overrides)")
    click.echo(yaml.safe_dump(as_dict(config), sort_keys=False).rstrip())
