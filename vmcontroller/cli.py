"""The command line: ``vmcontroller serve``, ``check-config`` and verbs for admin scripts.

``serve`` runs the controller; ``check-config`` validates a configuration;
``notify test`` sends a test notification straight from it.
The other verbs call a running controller's REST API (through
``client.py``) and print readable text, or the API's JSON with ``--json``.

Exit status, the same for every verb, so that scripts can rely on it:

- 0: success;
- 1: the API refused or failed (its ``detail`` is printed on stderr);
- 2: usage error: a bad option or argument, or a bad configuration (one line);
- 3: the controller is unreachable (nothing listens, unknown host, no answer).

systemd shows the last lines of a failed unit, and a traceback there hides
the one line that matters, so every error is one line on stderr.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import yaml

from . import __version__, vmimport
from .clibase import ExitStatus, Group, config_option, load_or_exit
from .client import DEFAULT_TIMEOUT, ApiError, Client, Unreachable, base_url_for, check_base_url
from .config import as_dict
from .errors import LibvirtFailure
from .report import ReportRangeError, parse_day
from .schedule import Schedule
from .screencmd import screen
from .vocab import SCHEDULE_TRIGGERS, TRIGGERS

MASK = "********"
# Keys whose values are secrets: a token, tokens, or the file that holds them
# (api_token, guest_tokens, token_file, ...), wherever they appear.
SECRET_KEY_RE = re.compile(r"(^|_)(tokens?|secret|password)(_files?)?$")


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of a configuration with every secret value replaced by a mask."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if SECRET_KEY_RE.search(key.lower()) and value not in (None, "", [], ()):
        if isinstance(value, (list, tuple)):
            return [MASK for _ in value]
        return MASK
    if isinstance(value, (list, tuple)):
        return [mask_secrets(v, key) for v in value]
    return value


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="vmcontroller")
def main() -> None:
    """Exhibition VM Controller: keeps a VM-hosted artwork running unattended.

    `serve` runs the controller; the other commands talk to a running one
    over its REST API. Exit status: 0 success, 1 the API refused or failed,
    2 usage or configuration error, 3 controller unreachable.
    """


# ====================================================================== the controller itself


@main.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run the controller: REST API, heartbeat monitor and automatic recovery."""
    config, source = load_or_exit(config_path)
    # Imported here so that check-config and --help stay fast and need no server stack.
    from .server import Controller, configure_logging

    configure_logging(config.log_level)
    if source is None:
        click.echo(
            "vmcontroller: no config file found; using defaults and VMCTL_* variables", err=True
        )
    try:
        controller = Controller(config)
    except OSError as exc:
        click.echo(
            f"vmcontroller: cannot listen on {config.api_host}:{config.api_port}: "
            f"{exc.strerror or exc}",
            err=True,
        )
        sys.exit(ExitStatus.FAILED)
    controller.serve_forever()


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and print the effective values (secrets masked)."""
    config, source = load_or_exit(config_path)
    click.echo(f"# effective configuration (file: {source or 'none'}, then VMCTL_* overrides)")
    click.echo(yaml.safe_dump(mask_secrets(as_dict(config)), sort_keys=False).rstrip())


@main.command("schedule")
@config_option
@click.option(
    "--days",
    type=click.IntRange(1, 14),
    default=7,
    show_default=True,
    help="How many days to list.",
)
@click.option(
    "--from",
    "start",
    default=None,
    metavar="WHEN",
    help="Start the list at this date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM) in the "
    "museum's zone instead of now.",
)
def schedule(config_path: str | None, days: int, start: str | None) -> None:
    """List the coming openings, closings and maintenance windows, from the config alone
    (no controller needed)."""
    config, _ = load_or_exit(config_path)
    if config.schedule is None:
        click.echo("no schedule in the configuration: always open, always watched")
        return
    try:
        begin = config.schedule.local_instant(start) if start else datetime.now().astimezone()
    except ValueError as exc:
        click.echo(f"vmcontroller: --from {start!r} is invalid: {exc}", err=True)
        sys.exit(ExitStatus.USAGE)
    click.echo(render_schedule(config.schedule, begin, days, "now" if start is None else "from"))


def render_schedule(plan: Schedule, begin: datetime, days: int, label: str = "now") -> str:
    """The schedule's state at ``begin`` and its changes over the following days."""
    now = plan.at(begin)
    zone = plan.timezone or "the PC's local time zone"
    lines = [
        f"time zone: {zone}; at opening: {plan.at_opening}; at closing: {plan.at_closing}"
        + ("; watched when closed" if plan.watch_when_closed else ""),
        f"{begin:%a %Y-%m-%d %H:%M}  {now.state:<12} {now.why} ({label})",
    ]
    for when, state, why in plan.changes(begin, begin + timedelta(days=days)):
        lines.append(f"{when:%a %Y-%m-%d %H:%M}  {state:<12} {why}")
    return "\n".join(lines)


@main.group(cls=Group)
def notify() -> None:
    """Notifications (webhook, e-mail) and the dead man's switch's ping."""


@notify.command("test")
@config_option
def notify_test(config_path: str | None) -> None:
    """Send a test message now through every configured channel, and ping.

    Straight from the configuration: no running controller is needed. Says
    per channel what happened; exit status 1 if one of them failed.
    """
    config, _ = load_or_exit(config_path)
    # Imported here, as serve's server stack: --help stays fast.
    from .alerts import compose
    from .senders import DeliveryError, channels, ping
    from .vocab import ALERT_TEST

    now = datetime.now().astimezone()
    message = compose(
        config.vm_name,
        [(ALERT_TEST, f"sent by `vmcontroller notify test` on {socket.gethostname()}", now)],
        now,
    )
    attempts: dict[str, Callable[[], None]] = {
        name: functools.partial(send, message) for name, send in channels(config).items()
    }
    pinger = ping(config)
    if pinger is not None:
        attempts["ping"] = pinger
    if not attempts:
        _fail(
            "no notification channel is configured (notify_webhook_url, notify_email_to, ping_url)",
            ExitStatus.USAGE,
        )
    failed = False
    for name, attempt in attempts.items():
        try:
            attempt()
        except DeliveryError as exc:
            failed = True
            click.echo(f"{name}: FAILED: {exc}")
        else:
            click.echo(f"{name}: sent")
    if failed:
        sys.exit(ExitStatus.FAILED)


main.add_command(screen)  # screencmd.py: capture and test the VM's screen


# ====================================================================== verbs over the API


def _target(url: str | None, config_path: str | None) -> tuple[str, str | None]:
    """The controller's base URL and the configuration's staff token, if it is to be used.

    --url / VMCTL_URL wins; else the configuration says where the controller
    listens, and then its api_token (when it has one) is the default token.
    A token from a local configuration is never sent to an address given by hand.
    """
    if url:
        try:
            return check_base_url(url), None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--url'") from None
    # Only api_host, api_port (and the token) matter here: a placeholder VM name
    # keeps a configuration without one (or an admin's partial copy) usable.
    env = {**os.environ, "VMCTL_VM_NAME": "placeholder"}
    config, _ = load_or_exit(config_path, env)
    return base_url_for(config.api_host, config.api_port), getattr(config, "api_token", None)


def _fail(message: str, status: ExitStatus) -> None:
    click.echo(f"vmcontroller: {message}", err=True)
    sys.exit(status)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


Render = Callable[[Any], str]


def api_command(group: click.Group, name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Declare a verb that calls the API.

    The decorated function gets a Client and the verb's own arguments, and
    returns the API's answer and a function that renders it as text. This
    wrapper adds the options every verb shares and turns failures into the
    documented exit status.
    """

    def decorate(func: Callable[..., tuple[Any, Render]]) -> click.Command:
        @click.option(
            "--url",
            metavar="URL",
            envvar="VMCTL_URL",
            help="The controller, e.g. http://127.0.0.1:8000 (default: $VMCTL_URL, "
            "else api_host and api_port of the configuration, 0.0.0.0 meaning "
            "127.0.0.1).",
        )
        @click.option(
            "--token",
            metavar="TOKEN",
            envvar="VMCTL_TOKEN",
            help="Sent as 'Authorization: Bearer TOKEN' (default: $VMCTL_TOKEN, "
            "else the configuration's api_token if the URL comes from it too).",
        )
        @click.option(
            "--json", "as_json", is_flag=True, help="Print the API's JSON answer instead of text."
        )
        @click.option(
            "--timeout",
            metavar="SECONDS",
            type=click.FloatRange(min=0.1),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds to wait for the answer.",
        )
        @config_option
        @functools.wraps(func)
        def command(
            url: str | None,
            token: str | None,
            as_json: bool,
            timeout: float,
            config_path: str | None,
            **kwargs: Any,
        ) -> None:
            base, config_token = _target(url, config_path)
            client = Client(base, token or config_token, timeout)
            try:
                data, render = func(client, **kwargs)
            except Unreachable as exc:
                _fail(str(exc), ExitStatus.UNREACHABLE)
            except ApiError as exc:
                _fail(str(exc), ExitStatus.FAILED)
            if as_json:
                _print_json(data)
            else:
                text = render(data)
                if text:
                    click.echo(text)

        return group.command(name)(command)

    return decorate


def _message(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    details = data.get("details")
    note = details.get("note") if isinstance(details, dict) else None
    return str(data.get("message", "")) + (f"\nnote: {note}" if note else "")


@api_command(main, "status")
@click.option(
    "--field",
    "fields",
    metavar="KEY",
    multiple=True,
    help="Print only this field (dotted for nested ones, e.g. heartbeat.is_healthy), "
    "one value per line; repeatable. For shell scripts.",
)
def status(client: Client, fields: tuple[str, ...]) -> tuple[Any, Render]:
    """Show the VM's state, heartbeat health, maintenance mode and recovery."""
    data = client.status()
    if fields:
        values = [_field(data, name) for name in fields]
        return data, lambda _: "\n".join(values)
    return data, _render_status


@api_command(main, "start")
def start(client: Client) -> tuple[Any, Render]:
    """Start the VM clean (revert to the snapshot); ends a stop by staff."""
    return client.start(), _message


@api_command(main, "stop")
def stop(client: Client) -> tuple[Any, Render]:
    """Pull the plug: the VM stays stopped until `start` or `restart`."""
    return client.stop(), _message


@api_command(main, "restart")
def restart(client: Client) -> tuple[Any, Render]:
    """Revert the VM to its snapshot and run it; answers once it runs."""
    return client.restart(), _message


@api_command(main, "snapshots")
def snapshots(client: Client) -> tuple[Any, Render]:
    """List the VM's snapshots, one name per line."""
    return client.snapshots(), lambda data: "\n".join(data.get("snapshots", []))


@main.group(cls=Group)
def snapshot() -> None:
    """Create or delete a snapshot of the VM."""


@api_command(snapshot, "create")
@click.argument("name", required=False)
def snapshot_create(client: Client, name: str | None) -> tuple[Any, Render]:
    """Snapshot the running VM as NAME (default: the reference snapshot, e.g. 'ready').

    An existing snapshot of that name is replaced.
    """
    return client.create_snapshot(name), _message


@api_command(snapshot, "delete")
@click.argument("name")
def snapshot_delete(client: Client, name: str) -> tuple[Any, Render]:
    """Delete the snapshot NAME."""
    return client.delete_snapshot(name), _message


@main.group(cls=Group)
def revert() -> None:
    """Automatic revert on failures: `disable` is maintenance mode, `enable` ends it."""


@api_command(revert, "enable")
def revert_enable(client: Client) -> tuple[Any, Render]:
    """Leave maintenance mode: failures are recovered automatically again."""
    return client.set_auto_revert(True), _message


@api_command(revert, "disable")
def revert_disable(client: Client) -> tuple[Any, Render]:
    """Enter maintenance mode: failures are logged, nothing is reverted."""
    return client.set_auto_revert(False), _message


@api_command(main, "heartbeat")
def heartbeat(client: Client) -> tuple[Any, Render]:
    """Send one heartbeat, as the guest does (for trying things out)."""
    data = client.heartbeat()
    return data, lambda d: f"{_message(d)}: " + _render_heartbeat(d.get("details") or {})


@api_command(main, "events")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=None,
    help="At most this many events (the API's default: 100).",
)
@click.option(
    "--since",
    metavar="TIME",
    help="Only events after TIME: ISO 8601 (2026-11-01, 2026-11-01T10:00:00+01:00) "
    "or seconds since the epoch.",
)
@click.option(
    "--trigger",
    "triggers",
    metavar="TRIGGER",
    multiple=True,
    help="Only events with this trigger (heartbeat_timeout, vm_stopped, vm_crashed, "
    "vm_paused, guest_request, idle_reset, api, startup); repeatable.",
)
def events(
    client: Client, limit: int | None, since: str | None, triggers: tuple[str, ...]
) -> tuple[Any, Render]:
    """Show the history of recoveries and actions, newest first."""
    return client.events(limit, since, triggers), _render_events


def _day_option(name: str, default: str) -> Callable[[Callable[..., Any]], Any]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_day(value, f"--{name}")
            except ReportRangeError as exc:
                _fail(str(exc), ExitStatus.USAGE)
        return value

    return click.option(
        f"--{name}",
        metavar="DATE",
        callback=check,
        help=f"{default} (YYYY-MM-DD, a day in the controller's local time zone).",
    )


@api_command(main, "report")
@_day_option("since", "The first day (default: 29 days before --until)")
@_day_option("until", "The last day, included (default: today)")
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="A table for people, CSV with a header line for a spreadsheet, or the API's JSON.",
)
def report(client: Client, since: str | None, until: str | None, form: str) -> tuple[Any, Render]:
    """Per day: how long the artwork was healthy, its recoveries, its longest outage."""
    renders: dict[str, Render] = {
        "table": render_report_table,
        "csv": render_report_csv,
        "json": lambda data: json.dumps(data, indent=2, ensure_ascii=False),
    }
    return client.report(since, until), renders[form]


# ====================================================================== ready: the reference snapshot

READY_GUIDE = "scripts/guest/PREPARING-WINDOWS.md"


class ReadyStopped(Exception):
    """A step of `ready` whose condition was not met (exit 1) or whose call failed."""

    def __init__(self, reason: str, status: ExitStatus = ExitStatus.FAILED):
        super().__init__(reason)
        self.status = status


class ReadyRun:
    """One run of `ready`: the steps in order, and maintenance put back as it was on any exit.

    Composed of the API's own calls (status, revert disable/enable, snapshot
    create), so an older controller serves it and nothing new is exposed to
    the guest. The heartbeat check compares the controller's own
    ``last_heartbeat`` values, never this machine's clock with the server's.
    """

    POLL = 0.5  # seconds between looks at the heartbeat while waiting

    def __init__(self, client: Client, say: Callable[[str], None]):
        self.client = client
        self.say = say
        self.step = "status"
        self.was_on: bool | None = None  # maintenance before ready; None: not known yet
        self.summary: dict[str, Any] = {"ok": False, "steps": []}

    def done(self, step: str, text: str) -> None:
        self.summary["steps"].append({"step": step, "result": text})
        self.say(f"{len(self.summary['steps'])}/5 {step}: {text}")

    def run(self, wait: float) -> dict[str, Any]:
        try:
            self._steps(wait)
        except (ReadyStopped, ApiError, Unreachable, KeyboardInterrupt) as exc:
            status = ExitStatus.UNREACHABLE if isinstance(exc, Unreachable) else ExitStatus.FAILED
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            self.summary.update(step=self.step, reason=reason)
            raise ReadyStopped(
                f"ready stopped at step '{self.step}': {reason}; {self._restore()}", status
            ) from None
        self.summary["ok"] = True
        return self.summary

    def _steps(self, wait: float) -> None:
        status = self.client.status()
        name = str(status.get("snapshot_name"))
        self.summary.update(vm_name=status.get("vm_name"), snapshot_name=name)
        self.was_on = not status.get("auto_revert_enabled", True)
        self.summary["maintenance_before"] = self.was_on

        self.step = "maintenance"
        if self.was_on:
            self.done(self.step, "already on (automatic revert disabled); it stays on afterwards")
        else:
            self.client.set_auto_revert(False)
            self.done(self.step, "on: the controller will not revert the VM until ready ends")

        self.step = "VM running"
        status = self.client.status()
        if not status.get("vm_is_running"):
            raise ReadyStopped(_not_running(status))
        self.done(self.step, f"{status.get('vm_name')} is running")

        self.step = "heartbeats"
        beat = self._await_heartbeat(status, wait)
        self.summary["last_heartbeat"] = beat
        self.done(self.step, f"arriving (the last one at {beat})")

        self.step = "snapshot"
        verb = "replacing" if status.get("snapshot_exists") else "taking"
        self.say(f"    {verb} '{name}' (the guest pauses while its memory is saved) ...")
        self.summary["snapshot"] = "replaced" if status.get("snapshot_exists") else "created"
        self.done(self.step, _message(self.client.create_snapshot(name)))

        self.step = "maintenance"
        if self.was_on:
            text = "left on, as it was before ready (`vmcontroller revert enable` ends it)"
        else:
            self.client.set_auto_revert(True)
            text = "off again: automatic revert is back on"
        self.summary["maintenance_after"] = self.was_on
        self.done(self.step, text)

    def _await_heartbeat(self, status: dict[str, Any], wait: float) -> str:
        """The controller's time of a heartbeat that came after maintenance went on."""
        before = (status.get("heartbeat") or {}).get("last_heartbeat")
        deadline = time.monotonic() + wait
        while True:
            heartbeat = status.get("heartbeat") or {}
            last = heartbeat.get("last_heartbeat")
            if last and last != before:
                return str(last)
            if not status.get("vm_is_running"):
                raise ReadyStopped(_not_running(status))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.POLL, left))
            status = self.client.status()
        if last:
            when = (
                f"the last one came at {last} ({_seconds(heartbeat.get('seconds_since_last'))} ago)"
            )
        else:
            when = "none has come since the controller started"
        raise ReadyStopped(
            f"no heartbeat from the guest within {wait:g} s ({when}); check in the guest that "
            "the heartbeat script runs (started at logon), that it calls this controller's "
            "address with the guest token, and that no dialog or firewall stops it "
            f"(see {READY_GUIDE})"
        )

    def _restore(self) -> str:
        """Maintenance back to what it was; the words that say so.

        Once the status was read, a stop finds maintenance asked for or about to be
        (a refused or unanswered request may still have reached the controller):
        turning it off again is right whenever it was off before.
        """
        if self.was_on is None:
            return "nothing was changed"
        if self.was_on:
            self.summary["maintenance_after"] = True
            return "maintenance stays on, as it was before"
        try:
            self.client.set_auto_revert(True)
        except (ApiError, Unreachable) as exc:
            self.summary["maintenance_after"] = None
            return (
                f"maintenance may still be ON: turning it off failed ({exc}); "
                "run `vmcontroller revert enable`"
            )
        self.summary["maintenance_after"] = False
        return "maintenance is off again, as it was before"


def _not_running(status: dict[str, Any]) -> str:
    state = status.get("vm_state")
    if state == "paused":
        return (
            "the VM is not running (paused: it sends no heartbeats); resume or start it and "
            "wait for the artwork, then run ready again"
        )
    return (
        f"the VM is not running (state: {state}); start it and wait for the artwork, "
        "then run ready again"
    )


@api_command(main, "ready")
@click.option(
    "--wait",
    metavar="SECONDS",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="How long to wait for a heartbeat from the guest.",
)
def ready(client: Client, wait: float) -> tuple[Any, Render]:
    """Take or replace the reference snapshot the safe way.

    Turns maintenance on, checks that the VM runs and that the guest's
    heartbeats arrive, snapshots it under the configured name (e.g. 'ready'),
    and turns maintenance off again (or leaves it on if it was on). A step
    whose condition is not met stops it with the reason, and maintenance is
    put back as it was.
    """
    as_json = bool(click.get_current_context().params.get("as_json"))
    run = ReadyRun(client, lambda line: click.echo(line, err=as_json))
    try:
        summary = run.run(wait)
    except ReadyStopped as exc:
        if as_json:
            _print_json(run.summary)
        _fail(str(exc), exc.status)
    return summary, lambda s: f"ready: '{s['snapshot_name']}' is the VM's reference snapshot now"


# ====================================================================== VMs in libvirt


@main.group(cls=Group)
def vm() -> None:
    """Bring an artist's disk image into libvirt as a VM (no controller needed)."""


@vm.command("import")
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, metavar="NAME", help="The new domain's name.")
@click.option(
    "--profile",
    metavar="PROFILE",
    help="The guest's hardware: winxp, win98, win2000, win7 or linux (a template of "
    "/etc/exhibition-vm-controller/vm-profiles/, or etc/vm-profiles/ in a checkout).",
)
@click.option(
    "--network",
    type=click.Choice(vmimport.NETWORKS),
    default="user",
    show_default=True,
    help="user: QEMU's user-mode networking (the guest reaches the controller at "
    "10.0.2.2); default: libvirt's 'default' network.",
)
@click.option(
    "--domain-type",
    type=click.Choice(vmimport.DOMAIN_TYPES),
    default="auto",
    show_default=True,
    help="kvm, qemu (software emulation), or kvm when libvirt can use it.",
)
@click.option(
    "--memory",
    type=click.IntRange(16, 1024 * 1024),
    metavar="MIB",
    help="Memory in MiB (default: the profile's).",
)
@click.option(
    "--images-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=vmimport.DEFAULT_IMAGES_DIR,
    show_default=True,
    help="Where the qcow2 disk NAME.qcow2 is written.",
)
@click.option(
    "--template",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A domain template of your own instead of the profile's.",
)
@click.option("--kernel", metavar="FILE", help="Boot this kernel (a Linux guest's, on the host).")
@click.option("--initrd", metavar="FILE", help="With --kernel: its initial ramdisk.")
@click.option("--cmdline", metavar="TEXT", help="With --kernel: its command line.")
@click.option(
    "--connect",
    "uri",
    metavar="URI",
    default="qemu:///system",
    show_default=True,
    help="The libvirt connection.",
)
@click.option(
    "--print-xml",
    is_flag=True,
    help="Print the domain XML the import would define, and do nothing.",
)
def vm_import(
    image: Path,
    name: str,
    profile: str | None,
    network: str,
    domain_type: str,
    memory: int | None,
    images_dir: Path,
    template: Path | None,
    kernel: str | None,
    initrd: str | None,
    cmdline: str | None,
    uri: str,
    print_xml: bool,
) -> None:
    """Convert IMAGE (vmdk, vdi, vhd, vhdx, raw or qcow2) to a qcow2 and define a VM for it.

    The VM gets the hardware the profile's guest has drivers for, VNC on
    127.0.0.1 and autostart. Nothing is left behind when a step fails.
    """
    from .virsh import VirshRunner

    if not profile and not template:
        raise click.UsageError("give --profile (or --template)")
    request = vmimport.ImportRequest(
        image=image,
        name=name,
        profile=profile or "",
        images_dir=images_dir,
        network=network,
        domain_type=domain_type,
        memory_mib=memory,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        template=template,
    )
    runner = VirshRunner(uri)
    progress = _Progress(image.name)
    try:
        if print_xml:
            _, _, domain = vmimport.plan(request, domain_type)
            if domain_type == "auto":
                chosen = vmimport.choose_domain_type("auto", runner.virt_types())
                domain.set("type", chosen)
            click.echo(vmimport.to_xml(domain), nl=False)
            return
        done = vmimport.import_image(
            request,
            runner,
            on_progress=progress,
            on_note=lambda text: click.echo(f"vmcontroller: {text}", err=True),
        )
    except vmimport.ImportRefused as exc:
        _fail(str(exc), ExitStatus.USAGE)
    except LibvirtFailure as exc:
        progress.end()
        _fail(f"import failed, nothing kept: {exc.message}", ExitStatus.FAILED)
    progress.end()
    click.echo(
        f"Imported {done.name}: {done.source_format} image converted to {done.disk}, "
        f"domain defined from {done.template}, autostart on."
    )
    width = max(len(k) for k in done.hardware) + 2
    for key, value in done.hardware.items():
        click.echo(f"  {key + ':':<{width}}{value}")
    click.echo(vmimport.next_steps(done.name, network))


class _Progress:
    """qemu-img's percentage as one line on stderr: rewritten in place on a terminal,
    else a line per tenth (a log or a pipe gets no carriage returns)."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.shown = -1.0
        self.open = False

    def __call__(self, percent: float) -> None:
        if self.tty:
            click.echo(f"\rconverting {self.label}: {percent:5.1f} %", nl=False, err=True)
            self.open = True
        elif percent >= 100 or int(percent // 10) > int(self.shown // 10) or self.shown < 0:
            click.echo(f"converting {self.label}: {percent:.0f} %", err=True)
        self.shown = percent

    def end(self) -> None:
        if self.open:
            click.echo("", err=True)
            self.open = False


# ====================================================================== text for people


def _field(data: Any, name: str) -> str:
    value = data
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            known = ", ".join(data) if isinstance(data, dict) else ""
            raise click.UsageError(f"no field {name!r} in the answer (top-level fields: {known})")
        value = value[part]
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _seconds(value: Any) -> str:
    return f"{value:g} s" if isinstance(value, (int, float)) else "?"


def _render_heartbeat(hb: dict) -> str:
    since = hb.get("seconds_since_last")
    health = "healthy" if hb.get("is_healthy") else "NOT healthy"
    last = f"last {_seconds(since)} ago" if since is not None else "none received yet"
    checking = "timeout enforced" if hb.get("enabled") else "timeout not enforced now"
    return f"{health}, {last} (timeout {_seconds(hb.get('timeout'))}, {checking})"


def _render_status(data: dict) -> str:
    rows: list[tuple[str, str]] = []
    state = str(data.get("vm_state"))
    if data.get("vm_state_detail"):
        state += f" ({data['vm_state_detail']})"
    rows.append(("VM", f"{data.get('vm_name')}: {state}"))
    rows.append(
        (
            "Snapshot",
            f"{data.get('snapshot_name')} "
            f"({'exists' if data.get('snapshot_exists') else 'MISSING: no recovery possible'})",
        )
    )
    rows.append(("Heartbeat", _render_heartbeat(data.get("heartbeat") or {})))
    rows.append(
        (
            "Auto-revert",
            "enabled" if data.get("auto_revert_enabled") else "DISABLED (maintenance mode)",
        )
    )
    if data.get("stopped_by_staff"):
        rows.append(("Stopped", "by staff: stays stopped until start or restart"))
    plan = data.get("schedule")
    if isinstance(plan, dict):
        text = f"{plan.get('state')} ({plan.get('why')})"
        if not plan.get("enforcing"):
            text += ": not watched"
        if plan.get("next_change"):
            text += f"; {plan.get('next_state')} at {plan['next_change']}"
        rows.append(("Schedule", text))
    recovery = data.get("recovery")
    if isinstance(recovery, dict):
        text = f"{recovery.get('count', 0)} automatic"
        if recovery.get("last_time"):
            text += (
                f", last {recovery['last_time']} ({recovery.get('last_trigger')}: "
                f"{recovery.get('last_outcome')})"
            )
        rows.append(("Recoveries", text))
        guard = recovery.get("guard")
        if isinstance(guard, dict):
            text = (
                f"{guard.get('state')}: {guard.get('recent_recoveries')} of "
                f"{guard.get('max_recoveries')} recoveries within "
                f"{_seconds(guard.get('recovery_window'))}"
            )
            if guard.get("detail"):
                text += f"; {guard['detail']}"
            rows.append(("Guard", text))
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


def _render_events(data: dict) -> str:
    found = data.get("events") or []
    if not found:
        return f"no events for VM {data.get('vm_name')}"
    lines = []
    for e in found:
        took = "" if e.get("duration") is None else f" in {e['duration']:.2f} s"
        times = f" x{e['count']}" if (e.get("count") or 1) > 1 else ""
        line = (
            f"{e.get('time')}  {e.get('trigger')}  {e.get('action')} "
            f"{e.get('outcome')}{times}{took}: {e.get('reason')}"
        )
        if e.get("error"):
            line += f" [error: {e['error']}]"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------- the report

#: The report's columns in the CSV, after the date; one recoveries column per trigger
#: follows, so that a spreadsheet gets the same columns every month.
REPORT_CSV_FIELDS = (
    "healthy_seconds",
    "unhealthy_seconds",
    "staff_seconds",
    "unmonitored_seconds",
    "healthy_share",
    "recoveries_total",
    "longest_outage_seconds",
    "open_seconds",
    "healthy_open_share",
)
#: Triggers that can appear among a report's recoveries (the schedule's never do).
REPORT_TRIGGERS = tuple(t for t in TRIGGERS if t not in SCHEDULE_TRIGGERS)
_TABLE = "{:<10} {:>6} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10}"


def _duration(seconds: float) -> str:
    """H:MM:SS, or days and hours beyond 99 hours (a long range's totals)."""
    whole = int(seconds + 0.5)
    if whole >= 100 * 3600:
        return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _share(value: Any) -> str:
    """Rounded down, so that a day with an outage never shows 100.0 %."""
    if value is None:
        return "-"
    return f"{int(value * 1000) / 10:.1f}%"


def _table_row(label: str, day: dict) -> str:
    return _TABLE.format(
        label,
        _share(day.get("healthy_share")),
        _duration(day.get("healthy_seconds", 0)),
        _duration(day.get("unhealthy_seconds", 0)),
        _duration(day.get("staff_seconds", 0)),
        _duration(day.get("unmonitored_seconds", 0)),
        _duration(day.get("longest_outage_seconds", 0)),
        day.get("recoveries_total", 0),
    ).rstrip()


def render_report_table(data: dict) -> str:
    """Fits 80 columns: the conservator's monthly report, as read in a terminal."""
    total = data.get("total") or {}
    lines = [
        f"VM {data.get('vm')}: {data.get('since')} to {data.get('until')} (local days)",
        _TABLE.format(
            "date", "share", "healthy", "unhealthy", "staff", "unmonitored", "longest", "recoveries"
        ),
    ]
    lines += [_table_row(str(day.get("date")), day) for day in data.get("days") or []]
    lines.append(_table_row("total", total))
    lines.append("share = healthy / (healthy + unhealthy); staff: maintenance or stopped by staff")
    by_trigger = total.get("recoveries") or {}
    if by_trigger:
        lines.append(
            "recoveries by trigger: "
            + ", ".join(f"{trigger} {count}" for trigger, count in by_trigger.items())
        )
    return "\n".join(lines)


def render_report_csv(data: dict) -> str:
    """One header line, one line per day, then the totals (date 'total')."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", *REPORT_CSV_FIELDS, *(f"recoveries_{t}" for t in REPORT_TRIGGERS)])
    rows = [(str(day.get("date")), day) for day in data.get("days") or []]
    rows.append(("total", data.get("total") or {}))
    for label, day in rows:
        recoveries = day.get("recoveries") or {}
        values = ["" if day.get(name) is None else day.get(name) for name in REPORT_CSV_FIELDS]
        writer.writerow([label, *values, *(recoveries.get(t, 0) for t in REPORT_TRIGGERS)])
    return out.getvalue().rstrip("\n")
