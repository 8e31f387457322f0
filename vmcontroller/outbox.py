"""Delivery: notifications kept until a channel took them, and the ping.

A mail server that is down on Sunday must not lose Sunday's alert, nor must
a restart of the controller: every message is written to the state file's
outbox (through the StateWriter, never under the monitor's lock) before its
first attempt, once per channel, and removed when that channel took it. A
failing channel is retried with back-off (doubling up to a cap) without
holding up the others or the monitor. A message that keeps failing for days
stays, up to ``max_kept`` per channel: past that the oldest go, logged.

One thread (``Courier``) does it all: it asks the monitor what is to be told,
delivers what is due, and pings the dead man's switch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .alerts import Message
from .senders import DeliveryError, Ping, Sender
from .statewriter import StateWriter
from .vocab import DELIVERY_RETRY_INITIAL, DELIVERY_RETRY_MAX, OUTBOX_MAX

log = logging.getLogger(__name__)

#: How often the courier asks the monitor whether something is to be told.
TICK = 1.0
#: A staff-like wait for the outbox row to reach the disk before the first attempt.
FLUSH_WAIT = 2.0


@dataclass
class _Entry:
    key: str  # message id / channel
    channel: str
    created: float  # wall-clock seconds
    message: Message
    attempts: int = 0
    next_try: float = 0.0  # monotonic


def retry_delay(attempts: int, initial: float, cap: float) -> float:
    """The wait after the ``attempts``-th failure in a row: doubling, capped."""
    return min(cap, initial * 2 ** max(0, attempts - 1))


class Outbox:
    """Waiting notifications, per channel, with their back-off. Thread-safe."""

    def __init__(
        self,
        writer: StateWriter,
        channels: Mapping[str, Sender],
        max_kept: int = OUTBOX_MAX,
        retry_initial: float = DELIVERY_RETRY_INITIAL,
        retry_max: float = DELIVERY_RETRY_MAX,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ):
        self.writer = writer
        self.channels = dict(channels)
        self.max_kept = max_kept
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._clock = clock
        self._wallclock = wallclock
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._last: dict[str, dict[str, Any]] = {
            name: {"last_delivery": None, "last_error": None, "failed": 0} for name in channels
        }
        for key, channel, created, data in writer.outbox():
            if channel not in self.channels:
                log.warning(
                    "notification %s waited for channel %r, which is no longer configured: dropped",
                    key,
                    channel,
                )
                writer.outbox_remove(key)
                continue
            self._entries.append(_Entry(key, channel, created, Message.from_json(data)))
        if self._entries:
            log.info("%d notification(s) from before the restart wait for delivery", len(self))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, message: Message) -> int:
        """Queue ``message`` for every channel. Returns the state file's ticket."""
        created = self._wallclock()
        ticket = 0
        with self._lock:
            for channel in self.channels:
                entry = _Entry(f"{message.id}/{channel}", channel, created, message)
                self._entries.append(entry)
                ticket = self.writer.outbox_add(entry.key, channel, created, message.as_json())
                self._trim_locked(channel)
        return ticket

    def _trim_locked(self, channel: str) -> None:
        mine = [e for e in self._entries if e.channel == channel]
        if len(mine) <= self.max_kept:
            return
        oldest = mine[0]
        self._entries.remove(oldest)
        self.writer.outbox_remove(oldest.key)
        log.error(
            "%d notifications wait for channel %s: the oldest (%r) is dropped",
            self.max_kept,
            channel,
            oldest.message.subject,
        )

    def deliver_due(self) -> float | None:
        """Try every entry whose time has come, oldest first, one failure per channel per
        round (a channel that is down is not hammered). Returns when to look again."""
        now = self._clock()
        with self._lock:
            due = [e for e in self._entries if e.next_try <= now]
        down: set[str] = set()
        for entry in due:
            if entry.channel in down:
                continue
            try:
                self.channels[entry.channel](entry.message)
            except DeliveryError as exc:
                down.add(entry.channel)
                self._failed(entry, str(exc))
                continue
            except Exception as exc:  # a bug in a sender must not stop the others
                log.exception("sending notification %s failed unexpectedly", entry.key)
                down.add(entry.channel)
                self._failed(entry, f"{type(exc).__name__}: {exc}")
                continue
            self._delivered(entry)
        with self._lock:
            if not self._entries:
                return None
            return min(e.next_try for e in self._entries)

    def _delivered(self, entry: _Entry) -> None:
        with self._lock:
            if entry in self._entries:
                self._entries.remove(entry)
            state = self._last[entry.channel]
            recovered = state["last_error"] is not None
            state["last_delivery"] = _iso(self._wallclock())
            state["last_error"] = None
        ticket = self.writer.outbox_remove(entry.key)
        self.writer.flush(FLUSH_WAIT, ticket)  # a restart must not send it again
        if recovered:
            log.warning("notifications by %s are delivered again", entry.channel)
        log.info("notification %r delivered by %s", entry.message.subject, entry.channel)

    def _failed(self, entry: _Entry, error: str) -> None:
        now = self._clock()
        with self._lock:
            entry.attempts += 1
            delay = retry_delay(entry.attempts, self.retry_initial, self.retry_max)
            # Everything waiting for this channel waits with it: it is the channel that is down.
            for other in self._entries:
                if other.channel == entry.channel:
                    other.next_try = max(other.next_try, now + delay)
            state = self._last[entry.channel]
            new = state["last_error"] != error
            state["last_error"] = error
            state["failed"] += 1
        level = logging.ERROR if new else logging.DEBUG
        log.log(
            level,
            "notification %r not delivered by %s: %s; next attempt in %g s",
            entry.message.subject,
            entry.channel,
            error,
            delay,
        )

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "channels": {
                    name: {
                        **{k: v for k, v in state.items() if k != "failed"},
                        "queued": sum(1 for e in self._entries if e.channel == name),
                    }
                    for name, state in self._last.items()
                },
                "queued": len(self._entries),
            }

    def failures(self) -> dict[str, int]:
        """Failed attempts per channel since start (metrics)."""
        with self._lock:
            return {name: int(state["failed"]) for name, state in self._last.items()}


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


class Courier:
    """The delivery thread: alerts from the monitor into the outbox, out to the channels,
    and the ping while ``ping_wanted`` says the artwork is fine."""

    def __init__(
        self,
        outbox: Outbox,
        take_alerts: Callable[[], list[Message]],
        ping: Ping | None = None,
        ping_interval: float = 60.0,
        ping_wanted: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ):
        self.outbox = outbox
        self.take_alerts = take_alerts
        self.ping = ping
        self.ping_interval = ping_interval
        self.ping_wanted = ping_wanted
        self._clock = clock
        self._wallclock = wallclock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_ping = 0.0
        self._ping_state: dict[str, Any] = {"last_ping": None, "last_error": None}

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="courier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """For the status answer: channels, what waits, the ping."""
        ping = None
        if self.ping is not None:
            ping = {"interval": self.ping_interval, **self._ping_state}
        return {**self.outbox.status(), "ping": ping}

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wake = self._round()
            except Exception:  # the courier must outlive any surprise
                log.exception("notification round failed; continuing")
                wake = self._clock() + TICK
            self._wake.wait(max(0.0, min(wake, self._clock() + TICK) - self._clock()))
            self._wake.clear()

    def _round(self) -> float:
        for message in self.take_alerts():
            log.warning("notifying: %s", message.subject)
            ticket = self.outbox.add(message)
            self.outbox.writer.flush(FLUSH_WAIT, ticket)  # queued on disk before the first try
        wake = self._clock() + TICK
        if self.outbox.channels:
            next_try = self.outbox.deliver_due()
            if next_try is not None:
                wake = min(wake, next_try)
        if self.ping is not None:
            self._ping_if_due()
        return wake

    def _ping_if_due(self) -> None:
        now = self._clock()
        if now < self._next_ping or not self.ping_wanted():
            return
        assert self.ping is not None
        self._next_ping = now + self.ping_interval
        try:
            self.ping()
        except DeliveryError as exc:
            if self._ping_state["last_error"] != str(exc):
                log.error("dead man's switch: ping failed: %s", exc)
            self._ping_state["last_error"] = str(exc)
            return
        if self._ping_state["last_error"] is not None:
            log.warning("dead man's switch: pings arrive again")
        self._ping_state = {"last_ping": _iso(self._wallclock()), "last_error": None}
