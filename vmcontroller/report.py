"""The availability report: per local day, how long the artwork was healthy, and its recoveries.

A conservator's monthly report asks "how well did it run", which the history of
actions cannot answer: it says what was done, not how long the artwork was fine.
The monitor therefore records its health as transitions (store.py's ``health``
table, one row per change); this module turns those rows and the history's
recoveries into figures per calendar day, without reading a clock or a file, so
that every rule (a day of 23 or 25 hours, an outage across midnight, a
controller that was off) is tested with hand-made rows.

Days are those of the PC's local time zone (``tz=None``) or of ``tz``: a day
runs from one local midnight to the next, whatever their distance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from .vocab import (
    HEALTH_HEALTHY,
    HEALTH_STAFF,
    HEALTH_START,
    HEALTH_STOP,
    HEALTH_UNHEALTHY,
    RECOVERY_ACTIONS,
    REFUSED,
    REPORT_MAX_DAYS,
    SKIPPED,
)

#: Default length of a report: the last 30 days, today included.
DEFAULT_DAYS = 30
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
#: The days a report may name: far enough from year 1 and year 9999 that their midnights,
#: and the 29 days before the first, are times every platform's clock functions take.
FIRST_DAY = date(1971, 1, 1)
LAST_DAY = date(9998, 12, 31)
#: What each recorded state counts as. The time from a start to the first health
#: known (the first heartbeat) is not healthy yet: counted with unhealthy time.
_BUCKET = {
    HEALTH_HEALTHY: "healthy",
    HEALTH_UNHEALTHY: "unhealthy",
    HEALTH_STAFF: "staff",
    HEALTH_START: "unhealthy",
    HEALTH_STOP: "unmonitored",
}


class ReportRangeError(ValueError):
    """A date or range the report cannot answer; its text is for the user."""


@dataclass(frozen=True)
class Recovery:
    """A history row that brought the VM back (or tried to)."""

    time: float
    trigger: str


@dataclass
class Day:
    """The figures of one day (or of the whole range, when ``date`` is None: its longest
    outage is then the longest unhealthy span clipped to the range, which may span days)."""

    date: date | None
    healthy: float = 0.0
    unhealthy: float = 0.0
    staff: float = 0.0
    unmonitored: float = 0.0
    recoveries: dict[str, int] = field(default_factory=dict)
    longest_outage: float = 0.0
    #: Opening time (None: no schedule) and the healthy part of it.
    open: float | None = None
    healthy_open: float = 0.0

    def add(self, bucket: str, seconds: float) -> None:
        setattr(self, bucket, getattr(self, bucket) + seconds)

    def as_json(self) -> dict[str, Any]:
        known = self.healthy + self.unhealthy
        body: dict[str, Any] = {} if self.date is None else {"date": self.date.isoformat()}
        body.update(
            {
                "healthy_seconds": round(self.healthy, 3),
                "unhealthy_seconds": round(self.unhealthy, 3),
                "staff_seconds": round(self.staff, 3),
                "unmonitored_seconds": round(self.unmonitored, 3),
                "healthy_share": round(self.healthy / known, 6) if known > 0 else None,
                "recoveries": dict(sorted(self.recoveries.items())),
                "recoveries_total": sum(self.recoveries.values()),
                "longest_outage_seconds": round(self.longest_outage, 3),
                "open_seconds": None if self.open is None else round(self.open, 3),
                "healthy_open_share": (
                    round(min(1.0, self.healthy_open / self.open), 6) if self.open else None
                ),
            }
        )
        return body


def parse_day(raw: str, name: str) -> date:
    """A calendar day written YYYY-MM-DD; anything else is refused with a sentence."""
    try:
        day = date.fromisoformat(raw) if _DATE.fullmatch(raw) else None
    except ValueError:
        day = None
    if day is None:
        raise ReportRangeError(f"{name} must be a date written YYYY-MM-DD (got {raw!r})")
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ReportRangeError(
            f"{name} must be a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()} "
            f"(got {raw!r})"
        )
    return day


def date_range(
    since: str | None, until: str | None, now: float, tz: tzinfo | None = None
) -> tuple[date, date]:
    """The days asked for: ``until`` defaults to today, ``since`` to 29 days before it."""
    last = parse_day(until, "until") if until is not None else today(now, tz)
    first = parse_day(since, "since") if since is not None else last - timedelta(DEFAULT_DAYS - 1)
    if first > last:
        raise ReportRangeError(
            f"since ({first.isoformat()}) must not be after until ({last.isoformat()})"
        )
    if (last - first).days + 1 > REPORT_MAX_DAYS:
        raise ReportRangeError(
            f"a report covers at most {REPORT_MAX_DAYS} days (asked for {(last - first).days + 1})"
        )
    return first, last


def today(now: float, tz: tzinfo | None = None) -> date:
    return datetime.fromtimestamp(now, tz).date()


def midnight(day: date, tz: tzinfo | None = None) -> float:
    """When ``day`` begins, as seconds since the epoch (a naive time is local time)."""
    return datetime.combine(day, time(), tzinfo=tz).timestamp()


def bounds(first: date, last: date, tz: tzinfo | None = None) -> tuple[float, float]:
    """The range's start and end (the midnight after ``last``)."""
    return midnight(first, tz), midnight(last + timedelta(1), tz)


def counts_as_recovery(action: str, outcome: str) -> bool:
    """A start or revert that was carried out (refused by the guard or skipped is not)."""
    return action in RECOVERY_ACTIONS and outcome not in (REFUSED, SKIPPED)


def build(
    first: date,
    last: date,
    transitions: Sequence[tuple[float, str]],
    recoveries: Iterable[Recovery],
    now: float,
    tz: tzinfo | None = None,
    open_spans: Sequence[tuple[float, float]] | None = None,
) -> tuple[list[Day], Day]:
    """The days from ``first`` to ``last`` and their totals.

    ``transitions`` are (time, state) oldest first, the one in force when the range
    begins included; before the first, and after a stop, nothing watched the artwork
    (unmonitored), nor after ``now`` (the future). ``open_spans``: the opening hours
    (schedule.py) as (begin, end) times, None without a schedule; a day's opening time
    counts up to ``now``, and its healthy share is the healthy part of it.
    """
    days = [Day(first + timedelta(n)) for n in range((last - first).days + 1)]
    starts = [midnight(d.date, tz) for d in days if d.date is not None]
    ends = starts[1:] + [midnight(last + timedelta(1), tz)]
    pieces = _spans(transitions, starts[0], ends[-1], now)
    for begin, end, bucket in pieces:
        for day, day_start, day_end in zip(days, starts, ends):
            overlap = min(end, day_end) - max(begin, day_start)
            if overlap > 0:
                day.add(bucket, overlap)
    if open_spans is not None:
        healthy = [(b, e) for b, e, bucket in pieces if bucket == "healthy"]
        for day, day_start, day_end in zip(days, starts, ends):
            day.open = 0.0
            for begin, end in open_spans:
                lo, hi = max(begin, day_start), min(end, day_end, now)
                if hi <= lo:
                    continue
                day.open += hi - lo
                for h_begin, h_end in healthy:
                    day.healthy_open += max(0.0, min(hi, h_end) - max(lo, h_begin))
    longest = 0.0
    for begin, end in _outages(transitions, now):
        longest = max(longest, min(end, ends[-1]) - max(begin, starts[0]))
        for day, day_start, day_end in zip(days, starts, ends):
            overlap = min(end, day_end) - max(begin, day_start)
            if overlap > day.longest_outage:
                day.longest_outage = overlap
    for recovery in recoveries:
        for day, day_start, day_end in zip(days, starts, ends):
            if day_start <= recovery.time < day_end:
                day.recoveries[recovery.trigger] = day.recoveries.get(recovery.trigger, 0) + 1
    total = _total(days)
    total.longest_outage = longest
    return days, total


def _spans(
    transitions: Sequence[tuple[float, str]], start: float, end: float, now: float
) -> list[tuple[float, float, str]]:
    """The range cut into (begin, end, bucket) pieces that cover it whole."""
    pieces: list[tuple[float, float, str]] = []
    cursor, bucket = start, "unmonitored"
    for when, state in sorted(transitions, key=lambda row: row[0]):
        when = min(when, now)
        if when > cursor:
            pieces.append((cursor, min(when, end), bucket))
            cursor = when
        bucket = _BUCKET.get(state, "unmonitored")
        if cursor >= end:
            return pieces
    if now > cursor:
        pieces.append((cursor, min(now, end), bucket))
        cursor = now
    if end > cursor:
        pieces.append((cursor, end, "unmonitored"))
    return [piece for piece in pieces if piece[1] > piece[0]]


def _outages(transitions: Sequence[tuple[float, str]], now: float) -> list[tuple[float, float]]:
    """Every unhealthy span, from the change that began it to the one that ended it."""
    found: list[tuple[float, float]] = []
    began: float | None = None
    for when, state in sorted(transitions, key=lambda row: row[0]):
        when = min(when, now)
        bad = _BUCKET.get(state) == "unhealthy"
        if bad and began is None:
            began = when
        elif not bad and began is not None:
            found.append((began, when))
            began = None
    if began is not None:
        found.append((began, now))
    return found


def _total(days: Sequence[Day]) -> Day:
    total = Day(None)
    for day in days:
        total.healthy += day.healthy
        total.unhealthy += day.unhealthy
        total.staff += day.staff
        total.unmonitored += day.unmonitored
        if day.open is not None:
            total.open = (total.open or 0.0) + day.open
            total.healthy_open += day.healthy_open
        for trigger, count in day.recoveries.items():
            total.recoveries[trigger] = total.recoveries.get(trigger, 0) + count
    return total


def as_json(vm: str, first: date, last: date, days: Sequence[Day], total: Day) -> dict[str, Any]:
    """The answer of ``GET /api/v1/report``."""
    return {
        "vm": vm,
        "since": first.isoformat(),
        "until": last.isoformat(),
        "days": [day.as_json() for day in days],
        "total": total.as_json(),
    }
