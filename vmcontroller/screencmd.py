"""``vmcontroller screen``: the technician's helper for writing screen rules.

Both verbs work from the configuration alone, straight through virsh (no running
controller needed): ``capture`` saves the VM's screen as the controller sees it, to
measure regions and cut reference images from; ``test`` runs rules against the live
screen, or against saved screenshots, and says what each rule sees.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import yaml

from .clibase import ExitStatus, Group, config_option, load_or_exit
from .config import Config
from .screen import (
    BadImage,
    Frame,
    Judge,
    ScreenConfig,
    ScreenError,
    Verdict,
    decode,
    load_references,
    parse_screen,
)
from .virsh import VirshError, VirshRunner

#: The longest a live test watches unless told otherwise.
MAX_WATCH = 600.0


def _fail(message: str, status: int) -> None:
    click.echo(f"vmcontroller: {message}", err=True)
    sys.exit(status)


def _runner(config: Config) -> VirshRunner:
    return VirshRunner(config.libvirt_uri, config.virsh_timeout)


def _take(config: Config) -> bytes:
    try:
        return _runner(config).screenshot(config.vm_name)
    except VirshError as exc:
        _fail(f"cannot take the screen of VM {config.vm_name!r}: {exc.message}", ExitStatus.FAILED)
        raise AssertionError("unreachable") from None  # pragma: no cover: _fail exits


@click.group(cls=Group)
def screen() -> None:
    """The VM's screen: save it, and try screen rules on it (no controller needed)."""


@screen.command("capture")
@config_option
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="FILE",
    help="Where to save the PNG (default: VM-YYYYMMDD-HHMMSS.png here).",
)
def capture(config_path: str | None, output: str | None) -> None:
    """Save the VM's screen now as a PNG, in the guest's own pixels: the ones the
    rules' regions are written in, and the ones to cut a reference image from."""
    config = load_or_exit(config_path)[0]
    png = _take(config)
    try:
        frame = decode(png)
    except BadImage as exc:
        _fail(f"libvirt's screenshot is not an image: {exc}", ExitStatus.FAILED)
    path = Path(output or f"{config.vm_name}-{datetime.now():%Y%m%d-%H%M%S}.png")
    try:
        path.write_bytes(png)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}", ExitStatus.FAILED)
    width, height = frame.size
    click.echo(
        f"saved {path}: {width}x{height} pixels (regions are [x, y, width, height] in these)"
    )


def _rules(rules: str | None, config: Config) -> ScreenConfig:
    """The rules to try: a YAML file (the screen: section alone, or a config that has
    one), else the configuration's own."""
    if rules is None:
        if config.screen is None:
            _fail("no screen: section in the configuration; name a RULES file", ExitStatus.USAGE)
        assert config.screen is not None
        return config.screen
    path = Path(rules)
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", ExitStatus.USAGE)
    except yaml.YAMLError as exc:
        _fail(f"{path} is not YAML: {str(exc).splitlines()[0]}", ExitStatus.USAGE)
    if isinstance(data, dict) and "screen" in data:
        data = data["screen"]
    try:
        found = parse_screen(data, path.parent)
        load_references(found)
    except (ScreenError, BadImage) as exc:
        _fail(f"{path}: {exc}", ExitStatus.USAGE)
    return found


def render(at: float, verdicts: list[Verdict]) -> list[str]:
    """One look's lines: each rule's name, kind and what it sees."""
    lines = [f"after {at:5.1f} s:"]
    for v in verdicts:
        word = "FAILS" if v.failing else ("holds" if v.holding else "ok")
        lines.append(f"  {v.rule} ({v.kind}): {word}: {v.detail}")
    return lines


@screen.command("test")
@config_option
@click.argument("rules", required=False, metavar="[RULES]")
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="PNG",
    help="Judge saved screenshots (in the order given, one interval apart) instead of "
    "the live screen; may be repeated.",
)
@click.option(
    "--watch",
    type=click.FloatRange(0, MAX_WATCH),
    default=None,
    metavar="SECONDS",
    help="Watch the live screen this long (default: the longest rule's seconds plus one "
    f"interval, at most {MAX_WATCH:g}); 0 takes one screenshot.",
)
def test(
    config_path: str | None, rules: str | None, images: tuple[str, ...], watch: float | None
) -> None:
    """Run screen rules (RULES: a YAML file with a screen: section, default the
    configuration's) against the live screen or saved screenshots, and say what each
    rule sees at every look. Exit status 1 if a rule fails at the end."""
    config = load_or_exit(config_path)[0]
    plan = _rules(rules, config)
    judge = Judge(plan, load_references(plan))
    judge.reset(0.0)
    verdicts: list[Verdict] = []
    if images:
        for i, name in enumerate(images):
            verdicts = judge.look(_frame_of(Path(name)), i * plan.interval)
            click.echo("\n".join(render(i * plan.interval, verdicts)))
    else:
        span = watch if watch is not None else _default_watch(plan)
        began = time.monotonic()
        while True:
            at = time.monotonic() - began
            verdicts = judge.look(_decoded(_take(config)), at)
            click.echo("\n".join(render(at, verdicts)))
            if at + plan.interval > span:
                break
            time.sleep(max(0.0, began + at + plan.interval - time.monotonic()))
    failing = [v.rule for v in verdicts if v.failing]
    click.echo(
        f"would revert: rule {', '.join(failing)}" if failing else "no rule fails: no revert"
    )
    sys.exit(ExitStatus.FAILED if failing else ExitStatus.OK)


def _default_watch(plan: ScreenConfig) -> float:
    longest = max((r.seconds for r in plan.rules), default=0.0)
    return min(MAX_WATCH, longest + plan.interval)


def _frame_of(path: Path) -> Frame:
    try:
        return decode(path.read_bytes())
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}", ExitStatus.USAGE)
    except BadImage as exc:
        _fail(f"{path}: {exc}", ExitStatus.USAGE)
    raise AssertionError("unreachable")  # pragma: no cover: _fail exits


def _decoded(png: bytes) -> Frame:
    try:
        return decode(png)
    except BadImage as exc:
        _fail(f"libvirt's screenshot is not an image: {exc}", ExitStatus.FAILED)
        raise AssertionError("unreachable") from None  # pragma: no cover: _fail exits
