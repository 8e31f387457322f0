"""Opening hours: what the exhibition should be doing at a given moment.

A pure module (no clock, no I/O): the monitor passes ``now`` in, so every rule
(a holiday, an extra opening day, a maintenance window, the night the clocks
change) can be tested as a table with an injected time zone. Times in the
config are wall-clock times of the museum's zone, with minute resolution;
they are turned into instants only when asked, so that 10:00 on the day the
clocks change is still 10:00 on the gallery's clock, once.

Opening periods lie within one day (10:00-18:00, not 22:00-02:00): a museum
that is open past midnight writes two periods.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .vocab import AT_CLOSING_CHOICES, AT_OPENING_CHOICES
from .vocab import SCHEDULE_CLOSED_STATE as CLOSED
from .vocab import SCHEDULE_MAINTENANCE_STATE as MAINTENANCE
from .vocab import SCHEDULE_OPEN_STATE as OPEN

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: How far around ``now`` the schedule is unrolled: far enough back to find when a long
#: closure (a holiday after a closing day) began, far enough ahead to list a week.
LOOK_BACK_DAYS = 15
LOOK_AHEAD_DAYS = 15
_PERIOD = re.compile(r"\s*([0-2]?\d):([0-5]\d)\s*-\s*([0-2]?\d):([0-5]\d)\s*")
_STAMP = re.compile(r"\s*(\d{4}-\d{2}-\d{2})[ T]([0-2]?\d):([0-5]\d)\s*")
_TINY = timedelta(microseconds=1)


class ScheduleError(ValueError):
    """A problem in the ``schedule:`` mapping: ``key`` names where it is, the message
    the value and what is expected (config.py turns it into its one-line error)."""

    def __init__(self, key: str, value: Any, expected: str):
        where = f"schedule.{key}" if key else "schedule"  # "" is the mapping itself
        super().__init__(f"{where}={value!r} is invalid: expected {expected}")
        self.key = key


@dataclass(frozen=True)
class Period:
    """One opening period within a day, in the museum's wall-clock time."""

    opens: time
    closes: time

    def __str__(self) -> str:
        return f"{self.opens:%H:%M}-{self.closes:%H:%M}"


@dataclass(frozen=True)
class Window:
    """A maintenance window, in the museum's wall-clock time (naive datetimes)."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class Moment:
    """The schedule's answer at one instant."""

    state: str  # OPEN, CLOSED or MAINTENANCE
    why: str
    since: datetime  # when this state began (at most LOOK_BACK_DAYS back)
    opening: bool  # it began at an opening time (not at the end of a maintenance window)
    next_state: str | None
    next_change: datetime | None  # None: no change within LOOK_AHEAD_DAYS

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "why": self.why,
            "since": self.since.isoformat(),
            "next_state": self.next_state,
            "next_change": self.next_change.isoformat() if self.next_change else None,
        }


@dataclass(frozen=True)
class Schedule:
    """The configured opening hours and what to do at their edges."""

    weekly: tuple[tuple[Period, ...], ...]  # seven entries, Monday first
    closed_dates: frozenset[date] = frozenset()
    extra_days: tuple[tuple[date, tuple[Period, ...]], ...] = ()
    maintenance: tuple[Window, ...] = ()
    timezone: str | None = None  # None: the PC's local time zone
    at_opening: str = "revert"
    at_closing: str = "stop"
    watch_when_closed: bool = False
    _zone: tzinfo | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------ wall clock <-> instants

    def _aware(self, local: datetime) -> datetime:
        """A wall-clock time of the museum as an instant. In the hour the clocks skip the
        time is taken with the offset before the change (zoneinfo's fold=0)."""
        if self._zone is None:
            aware = local.astimezone()  # the system's rules for that very date
        else:
            aware = local.replace(tzinfo=self._zone)
        # In UTC: Python compares two times of one zone by their wall-clock reading,
        # which is ambiguous in the hour the clocks go back.
        return aware.astimezone(timezone.utc)

    def _shown(self, instant: datetime) -> datetime:
        """An instant in the museum's zone, for people and the API."""
        return instant.astimezone(self._zone) if self._zone else instant.astimezone()

    def _local(self, instant: datetime) -> datetime:
        if self._zone is None:
            return instant.astimezone().replace(tzinfo=None)
        return instant.astimezone(self._zone).replace(tzinfo=None)

    def local_instant(self, text: str) -> datetime:
        """A date (midnight) or date and time written in the museum's zone, as an instant;
        raises ValueError."""
        local = datetime.fromisoformat(text.strip())
        if local.tzinfo is not None:
            return local
        return self._shown(self._aware(local))

    # ------------------------------------------------------------ what is planned

    def periods_on(self, day: date) -> tuple[tuple[Period, ...], str]:
        """The opening periods of a date and why (weekday, closed date, extra day)."""
        if day in self.closed_dates:
            return (), f"closed on {day.isoformat()} (closed_dates)"
        for extra, periods in self.extra_days:
            if extra == day:
                return periods, f"extra opening day {day.isoformat()}"
        periods = self.weekly[day.weekday()]
        return periods, WEEKDAYS[day.weekday()]

    def _spans(self, around: datetime) -> tuple[list[tuple[datetime, datetime, str]], list]:
        """Opening periods and maintenance windows near ``around``, as instants."""
        today = self._local(around).date()
        opens: list[tuple[datetime, datetime, str]] = []
        for offset in range(-LOOK_BACK_DAYS, LOOK_AHEAD_DAYS + 1):
            day = today + timedelta(days=offset)
            periods, why = self.periods_on(day)
            for p in periods:
                start = self._aware(datetime.combine(day, p.opens))
                end = self._aware(datetime.combine(day, p.closes))
                if end > start:
                    opens.append((start, end, f"opening hours {p} ({why})"))
        windows = [
            (self._aware(w.start), self._aware(w.end), f"maintenance window {w}")
            for w in self.maintenance
        ]
        return opens, windows

    def at(self, now: datetime) -> Moment:
        """Open, closed or a maintenance window at ``now`` (an aware datetime), since when,
        and the next change."""
        now = now.astimezone(timezone.utc)
        opens, windows = self._spans(now)

        def state_at(t: datetime) -> tuple[str, str]:
            for start, end, why in windows:
                if start <= t < end:
                    return MAINTENANCE, why
            for start, end, why in opens:
                if start <= t < end:
                    return OPEN, why
            return CLOSED, "outside opening hours"

        state, why = state_at(now)
        if state == CLOSED:
            _, day_why = self.periods_on(self._local(now).date())
            if "closed_dates" in day_why:
                why = day_why
        edges = sorted({t for s, e, _ in opens + windows for t in (s, e)})
        since = now - timedelta(days=LOOK_BACK_DAYS)
        for edge in reversed([t for t in edges if t <= now]):
            if state_at(edge)[0] == state and state_at(edge - _TINY)[0] != state:
                since = edge
                break
        opening = state == OPEN and any(since == s for s, _, _ in opens)
        next_state, next_change = None, None
        for edge in (t for t in edges if t > now):
            after = state_at(edge)[0]
            if after != state:
                next_state, next_change = after, edge
                break
        return Moment(
            state,
            why,
            self._shown(since),
            opening,
            next_state,
            self._shown(next_change) if next_change else None,
        )

    def changes(self, start: datetime, end: datetime) -> list[tuple[datetime, str, str]]:
        """Every change of state from ``start`` to ``end``: (instant, new state, why)."""
        found: list[tuple[datetime, str, str]] = []
        moment = self.at(start)
        while moment.next_change is not None and moment.next_change <= end:
            moment = self.at(moment.next_change)
            found.append((moment.since, moment.state, moment.why))
        return found

    def open_spans(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The opening time between two instants (maintenance windows cut out), oldest
        first: what the availability report counts a day's opening time from."""
        first = self._local(start).date() - timedelta(days=1)
        last = self._local(end).date() + timedelta(days=1)
        windows = [(self._aware(w.start), self._aware(w.end)) for w in self.maintenance]
        spans: list[tuple[datetime, datetime]] = []
        day = first
        while day <= last:
            for p in self.periods_on(day)[0]:
                pieces = [
                    (
                        self._aware(datetime.combine(day, p.opens)),
                        self._aware(datetime.combine(day, p.closes)),
                    )
                ]
                for w_start, w_end in windows:
                    pieces = [
                        part
                        for a, b in pieces
                        for part in ((a, min(b, w_start)), (max(a, w_end), b))
                        if part[1] > part[0]
                    ]
                spans.extend(
                    (max(a, start), min(b, end)) for a, b in pieces if b > start and a < end
                )
            day += timedelta(days=1)
        return sorted(spans)

    def enforcing(self, state: str) -> bool:
        """Whether heartbeats are enforced (and failures recovered) in this state."""
        if state == OPEN:
            return True
        return state == CLOSED and self.watch_when_closed

    def as_config(self) -> dict[str, Any]:
        """The schedule as the plain data it was written as (check-config, logs)."""
        hours = {
            name: [str(p) for p in periods] or "closed"
            for name, periods in zip(WEEKDAYS, self.weekly, strict=True)
        }
        return {
            "timezone": self.timezone,
            "hours": hours,
            "closed_dates": sorted(d.isoformat() for d in self.closed_dates),
            "extra_days": {d.isoformat(): [str(p) for p in ps] for d, ps in self.extra_days},
            "maintenance": [
                {"start": f"{w.start:%Y-%m-%d %H:%M}", "end": f"{w.end:%Y-%m-%d %H:%M}"}
                for w in self.maintenance
            ],
            "at_opening": self.at_opening,
            "at_closing": self.at_closing,
            "watch_when_closed": self.watch_when_closed,
        }


# ------------------------------------------------------------------ parsing the config

_PERIOD_RULE = "'closed', or opening periods such as '10:00-18:00' (a string or a list of them)"
_KEYS = (
    "timezone",
    "hours",
    "closed_dates",
    "extra_days",
    "maintenance",
    "at_opening",
    "at_closing",
    "watch_when_closed",
)


def _periods(key: str, value: Any) -> tuple[Period, ...]:
    if value is None or value == "closed":
        return ()
    items = value if isinstance(value, list) else [value]
    periods = []
    for item in items:
        match = _PERIOD.fullmatch(item) if isinstance(item, str) else None
        if match is None:
            raise ScheduleError(key, value, _PERIOD_RULE)
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        try:
            opens, closes = time(h1, m1), time(h2, m2)
        except ValueError:
            raise ScheduleError(key, value, _PERIOD_RULE) from None
        if closes <= opens:
            raise ScheduleError(
                key,
                value,
                "a period that closes after it opens, within one day (write "
                "'20:00-23:59' and the next day's '00:00-02:00' for a night opening)",
            )
        periods.append(Period(opens, closes))
    periods.sort(key=lambda p: p.opens)
    for before, after in zip(periods, periods[1:], strict=False):
        if after.opens < before.closes:
            raise ScheduleError(key, value, "periods that do not overlap")
    return tuple(periods)


def _date(key: str, value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ScheduleError(key, value, "a date written YYYY-MM-DD, e.g. 2027-12-25") from None


def _stamp(key: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None, second=0, microsecond=0)
    expected = "a local date and time written 'YYYY-MM-DD HH:MM', e.g. '2027-03-02 08:00'"
    match = _STAMP.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ScheduleError(key, value, expected)
    day, hour, minute = match.groups()
    try:
        return datetime.combine(date.fromisoformat(day), time(int(hour), int(minute)))
    except ValueError:
        raise ScheduleError(key, value, expected) from None


def parse_schedule(raw: Any) -> Schedule | None:
    """The config's ``schedule:`` mapping as a Schedule (None: no schedule, always open)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScheduleError("", raw, "a mapping with the keys " + ", ".join(_KEYS))
    for key in raw:
        if key not in _KEYS:
            raise ScheduleError(str(key), raw[key], "one of the keys " + ", ".join(_KEYS))
    zone_name = raw.get("timezone")
    zone: tzinfo | None = None
    if zone_name is not None:
        try:
            zone = ZoneInfo(zone_name) if isinstance(zone_name, str) else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        if zone is None:
            raise ScheduleError(
                "timezone",
                zone_name,
                "an IANA time zone such as Europe/Vienna (or leave it out: the PC's own time zone)",
            )
    hours = raw.get("hours")
    if not isinstance(hours, Mapping) or not hours:
        raise ScheduleError(
            "hours", hours, "a mapping of weekdays (monday ... sunday) to opening periods"
        )
    for day in hours:
        if day not in WEEKDAYS:
            raise ScheduleError(f"hours.{day}", hours[day], "a weekday: " + ", ".join(WEEKDAYS))
    weekly = tuple(_periods(f"hours.{day}", hours.get(day)) for day in WEEKDAYS)
    closed = raw.get("closed_dates") or []
    if not isinstance(closed, list):
        raise ScheduleError("closed_dates", closed, "a list of dates written YYYY-MM-DD")
    closed_dates = frozenset(_date("closed_dates", d) for d in closed)
    extra = raw.get("extra_days") or {}
    if not isinstance(extra, Mapping):
        raise ScheduleError(
            "extra_days",
            extra,
            "a mapping of dates to opening periods, e.g. 2027-04-05: 10:00-18:00",
        )
    extra_days = []
    for day, value in extra.items():
        when = _date("extra_days", day)
        if when in closed_dates:
            raise ScheduleError(
                f"extra_days.{when}", value, "a date that is not also in closed_dates"
            )
        extra_days.append((when, _periods(f"extra_days.{when}", value)))
    windows = raw.get("maintenance") or []
    if not isinstance(windows, list):
        raise ScheduleError("maintenance", windows, "a list of {start: ..., end: ...} windows")
    maintenance = []
    for i, item in enumerate(windows):
        if not isinstance(item, Mapping) or set(item) != {"start", "end"}:
            raise ScheduleError(
                f"maintenance[{i}]", item, "a mapping with start and end ('YYYY-MM-DD HH:MM')"
            )
        start = _stamp(f"maintenance[{i}].start", item["start"])
        end = _stamp(f"maintenance[{i}].end", item["end"])
        if end <= start:
            raise ScheduleError(f"maintenance[{i}].end", item["end"], "a time after its start")
        maintenance.append(Window(start, end))
    choices = {"at_opening": AT_OPENING_CHOICES, "at_closing": AT_CLOSING_CHOICES}
    picked = {}
    for key, allowed in choices.items():
        value = raw.get(key, allowed[0])
        if value not in allowed:
            raise ScheduleError(key, value, "one of " + ", ".join(allowed))
        picked[key] = value
    watch = raw.get("watch_when_closed", False)
    if not isinstance(watch, bool):
        raise ScheduleError("watch_when_closed", watch, "true or false")
    if watch and picked["at_closing"] == "stop":
        raise ScheduleError(
            "watch_when_closed",
            watch,
            "false while at_closing is stop (a VM watched in "
            "closed hours would be reverted right after closing stopped it; set at_closing: "
            "keep_running)",
        )
    return Schedule(
        weekly=weekly,
        closed_dates=closed_dates,
        extra_days=tuple(sorted(extra_days)),
        maintenance=tuple(sorted(maintenance, key=lambda w: w.start)),
        timezone=zone_name,
        at_opening=picked["at_opening"],
        at_closing=picked["at_closing"],
        watch_when_closed=watch,
        _zone=zone,
    )
