"""What to tell people, and when: the monitor's events turned into few messages.

A gallery's technician wants one e-mail when the artwork is in trouble and one
when it is fine again, not a message per failed revert. So problems are
gathered: the first waits ``gather`` seconds for the rest of its storm, and
after a message the next waits at least ``min_interval``; what happened
meanwhile goes out together. "Resolved" follows only a problem that was told.

While the museum is closed (or in a maintenance window) and not watched, nothing
is told: problems are held, and at opening those still true are told (an event
such as a start after a crash stays true; a condition such as libvirt not
answering is dropped by ``ended`` when it ends before).

Pure: every method takes the time (monotonic seconds) from its caller, so the
rules are tested with a made-up clock; the monitor calls it under its lock,
and a message it returns is queued for delivery elsewhere (outbox.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .vocab import (
    ALERT_GATHER,
    ALERT_RESOLVED,
    ALERT_TEST,
    ALERT_UNHEALTHY,
)

#: Subjects of single-problem messages, in words for a person.
_TITLES = {
    "guard_tripped": "automatic recovery gave up (restart-loop guard tripped)",
    "recovery_failed": "a recovery failed",
    "unhealthy": "the artwork has not been healthy for a while during opening hours",
    "libvirt_unreachable": "libvirt does not answer",
    "controller_crashed": "the controller started after a crash",
    ALERT_RESOLVED: "resolved: the artwork is healthy again",
    ALERT_TEST: "test message",
}


@dataclass(frozen=True)
class Message:
    """One notification, the same for every channel; ``id`` lets a receiver drop a
    message it got twice (a delivery cut off after the receiver took it)."""

    id: str
    vm: str
    kinds: tuple[str, ...]
    subject: str
    lines: tuple[str, ...]
    time: str  # ISO 8601, local time with offset

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "vm": self.vm,
            "kinds": list(self.kinds),
            "subject": self.subject,
            "text": "\n".join(self.lines),
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        return cls(
            id=str(data["id"]),
            vm=str(data["vm"]),
            kinds=tuple(str(k) for k in data["kinds"]),
            subject=str(data["subject"]),
            lines=tuple(str(data["text"]).split("\n")),
            time=str(data["time"]),
        )


def compose(vm: str, items: list[tuple[str, str, datetime]], when: datetime) -> Message:
    """A message of ``items`` (kind, detail, when it happened), oldest first."""
    kinds = tuple(dict.fromkeys(kind for kind, _, _ in items))
    problems = [k for k in kinds if k != ALERT_RESOLVED]
    if len(kinds) == 1:
        headline = _TITLES.get(kinds[0], kinds[0])
    elif problems and kinds[-1] == ALERT_RESOLVED:
        headline = f"{_TITLES.get(problems[0], problems[0])}; since resolved"
    else:
        headline = f"{len(problems)} problems: " + ", ".join(problems)
    lines = tuple(
        f"{at.strftime('%Y-%m-%d %H:%M:%S')} {_TITLES.get(kind, kind)}: {detail}"
        for kind, detail, at in items
    )
    return Message(
        id=str(uuid.uuid4()),
        vm=vm,
        kinds=kinds,
        subject=f"[{vm}] {headline}",
        lines=lines,
        time=when.isoformat(timespec="seconds"),
    )


@dataclass
class Alerts:
    """The rules for one VM. Not thread-safe: its owner (the monitor) holds a lock."""

    vm: str
    min_interval: float
    unhealthy_after: float  # seconds of opening time
    gather: float = ALERT_GATHER
    _items: list[tuple[str, str, datetime]] = field(default_factory=list)
    _first_at: float | None = None  # when the oldest waiting item came
    _last_sent: float | None = None
    _told: bool = False  # a problem was told (or is waiting) and not resolved yet
    _active: set[str] = field(default_factory=set)  # kinds told once per incident
    _unhealthy_for: float = 0.0  # opening time spent unhealthy so far
    _observed_at: float | None = None
    _held: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # while not watched

    def problem(
        self, kind: str, detail: str, now: float, wall: datetime, watched: bool = True
    ) -> None:
        """Something went wrong. A kind already told in this incident is not told again
        until the artwork has been healthy in between. Not ``watched`` (closed hours):
        held, the first of each kind, until opening."""
        if not watched:
            self._held.setdefault(kind, (detail, wall))
            return
        if kind in self._active:
            return
        self._active.add(kind)
        self._told = True
        self._add(kind, detail, now, wall)

    def ended(self, kind: str) -> None:
        """A condition held while not watched is over: it is not told at opening."""
        self._held.pop(kind, None)

    def observe(
        self,
        now: float,
        healthy: bool | None,
        is_open: bool,
        wall: datetime,
        watched: bool = True,
    ) -> None:
        """The artwork's health now (None: neither, e.g. stopped by staff or in maintenance:
        time that counts for nothing). Unhealthy opening time adds up to an alert;
        health after a told problem is a "resolved". Watched again (opening): what was
        held is told, dated when it happened."""
        if watched and self._held:
            held, self._held = self._held, {}
            for kind, (detail, at) in held.items():
                self.problem(kind, f"{detail} (held: the museum was closed)", now, at)
        since = self._observed_at
        self._observed_at = now
        if healthy:
            self._unhealthy_for = 0.0
            self._active.clear()
            if self._told:
                self._told = False
                self._add(ALERT_RESOLVED, "heartbeats arrive again", now, wall)
            return
        if healthy is None or not is_open or since is None:
            return
        self._unhealthy_for += max(0.0, now - since)
        if self._unhealthy_for >= self.unhealthy_after:
            minutes = self.unhealthy_after / 60
            self.problem(
                ALERT_UNHEALTHY,
                f"no heartbeats for {minutes:g} minute(s) of opening time",
                now,
                wall,
            )

    def due(self, now: float, wall: datetime) -> Message | None:
        """The message to send now, if one is due (its items are then forgotten here)."""
        ready = self.next_due()
        if ready is None or now < ready:
            return None
        message = compose(self.vm, self._items, wall)
        self._items = []
        self._first_at = None
        self._last_sent = now
        return message

    def next_due(self) -> float | None:
        """When the waiting items go out (None: nothing waits)."""
        if self._first_at is None:
            return None
        ready = self._first_at + self.gather
        if self._last_sent is not None:
            ready = max(ready, self._last_sent + self.min_interval)
        return ready

    def _add(self, kind: str, detail: str, now: float, wall: datetime) -> None:
        if self._first_at is None:
            self._first_at = now
        self._items.append((kind, detail, wall))
