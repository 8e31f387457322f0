"""Waits for tests that must show that something did NOT happen.

"Nothing happened" only means something if the test first saw a positive
sign that the system is working (a heartbeat answered, an event seen) and
then watched for at least the whole period in which the bad thing would
have happened. That period is derived from the configuration under test,
never picked by feel, and the watch fails at once if the bad thing shows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from vmcontroller.config import Config

#: Time allowed for a revert that is due to become visible: a revert of a
#: running VM takes about 0.6 s here (notes/libvirt.md); this is the slack on
#: top of it for a loaded machine. It lengthens a wait, it is no bound.
ACTION_SLACK = 2.0


def enforcement_period(config: Config) -> float:
    """How long a silent guest may go unpunished at most: the grace period after a
    (re)start, the heartbeat timeout, one check interval, and the revert itself."""
    return (
        config.vm_startup_heartbeat_delay
        + config.heartbeat_timeout
        + config.heartbeat_check_interval
        + ACTION_SLACK
    )


def pause_period(config: Config) -> float:
    """How long a paused VM may stay paused before it is recovered at the latest."""
    return config.heartbeat_timeout + config.heartbeat_check_interval + ACTION_SLACK


def stays_false(
    happened: Callable[[], bool], period: float, message: str, interval: float = 0.05
) -> None:
    """Watch ``happened`` for the whole ``period``; fail as soon as it turns true."""
    deadline = time.monotonic() + period
    while True:
        assert not happened(), f"{message} (within {period:g} s)"
        if time.monotonic() >= deadline:
            return
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def pid_alive(pid: int) -> bool:
    """True while the process runs; a zombie has ended too (a container's PID 1
    may never reap an orphan)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def decisions_of(monitor: Any, monkeypatch: Any) -> list[str]:
    """Every action the monitor thread decides from now on (decide.py's words), in order:
    a busy loop shows as the same decision over and over."""
    seen: list[str] = []
    begin = monitor._begin_locked

    def spy(what: str, now: float) -> Any:
        seen.append(what)
        return begin(what, now)

    monkeypatch.setattr(monitor, "_begin_locked", spy)
    return seen
