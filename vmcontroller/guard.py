"""The restart-loop guard: automatic recovery must never make things worse.

A VM whose guest never comes back healthy would otherwise be reverted every
timeout, forever, wearing the disk and hiding the fault. The guard allows at
most ``max_recoveries`` automatic recoveries within ``recovery_window``
seconds, spaces failed attempts with exponential backoff, and past the limit
declares the VM ``failed``: left as it is until staff start or restart it.
Its state is persisted, so a controller restart does not reset the count.

Two clocks, because an exhibition PC's wall clock is not to be trusted: a
flat clock battery sets it back a year at boot, NTP steps it forward again.
Within a run every time is on the monotonic clock, which no step moves. Only
the state file holds wall times (a monotonic time means nothing to the next
run), written on the wall clock of the moment they are saved and read back
with caps: a time in the future (the clock went back) counts as now, an
attempt older than the window is gone, and a back-off never lasts longer than
the delay that set it. A step between runs thus disturbs the guard for at
most one window or one back-off, never for the size of the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .vocab import GUARD_BACKOFF as BACKOFF
from .vocab import GUARD_FAILED as FAILED
from .vocab import GUARD_OK as OK

_KEY = "guard"


class FlagStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def put(self, key: str, value: Any) -> object: ...


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None
    newly_failed: bool = False  # this refusal is the one that tripped the guard


class RecoveryGuard:
    """Counts automatic recoveries; not thread-safe on its own (the monitor holds a lock).

    ``clock`` is monotonic seconds (the monitor's clock), ``wallclock`` seconds
    since the epoch, used only to write and read the state file.
    """

    def __init__(
        self,
        store: FlagStore,
        max_recoveries: int,
        window: float,
        backoff_initial: float,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
    ):
        self._store = store
        self.max_recoveries = max_recoveries
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._wallclock = wallclock
        saved = store.get(_KEY, {}) or {}
        self._failures = int(saved.get("failures", 0))
        self._failed_reason: str | None = saved.get("failed_reason")
        self._attempts, self._retry_at = self._from_wall(
            saved.get("attempts", []), saved.get("retry_at")
        )

    # ------------------------------------------------------------ persistence

    def _from_wall(
        self, attempts: list[float], retry_at: float | None
    ) -> tuple[list[float], float | None]:
        """Saved wall times onto this run's monotonic timeline, capped (see the module)."""
        now, wall_now = self._clock(), self._wallclock()
        recent = []
        for wall in attempts:
            age = max(0.0, wall_now - float(wall))
            if age < self.window:
                recent.append(now - age)
        retry = None
        if retry_at is not None:
            remaining = min(float(retry_at) - wall_now, self._delay())
            if remaining > 0:
                retry = now + remaining
        return sorted(recent), retry

    def _save(self) -> None:
        # Saved on the wall clock of this moment, however it was stepped since the
        # times were taken: the next run reads them against the same wall clock.
        offset = self._wallclock() - self._clock()
        self._store.put(
            _KEY,
            {
                "attempts": [t + offset for t in self._attempts],
                "failures": self._failures,
                "retry_at": None if self._retry_at is None else self._retry_at + offset,
                "failed_reason": self._failed_reason,
            },
        )

    # ------------------------------------------------------------ reading

    def _recent(self, now: float) -> list[float]:
        return [t for t in self._attempts if t > now - self.window]

    def _delay(self) -> float:
        """The back-off after the failures counted so far."""
        if self._failures <= 0:
            return 0.0
        return min(self.backoff_initial * 2 ** (self._failures - 1), self.backoff_max)

    @property
    def state(self) -> str:
        if self._failed_reason is not None:
            return FAILED
        if self._retry_at is not None and self._clock() < self._retry_at:
            return BACKOFF
        return OK

    def retry_in(self) -> float | None:
        """Seconds from now before which no automatic attempt may start; None if none is held."""
        if self._failed_reason is not None or self._retry_at is None:
            return None
        remaining = self._retry_at - self._clock()
        return remaining if remaining > 0 else None

    # ------------------------------------------------------------ decisions

    def check(self) -> Verdict:
        """May an automatic recovery start now?"""
        if self._failed_reason is not None:
            return Verdict(False, self._failed_reason)
        remaining = self.retry_in()
        if remaining is not None:
            return Verdict(
                False,
                f"backing off after {self._failures} failed attempt(s) "
                f"until {remaining:.1f} s from now",
            )
        recent = self._recent(self._clock())
        if len(recent) >= self.max_recoveries:
            self._failed_reason = (
                f"{len(recent)} automatic recoveries within "
                f"{self.window:g} s (limit {self.max_recoveries}): the VM is "
                f"left as it is until staff start or restart it"
            )
            self._save()
            return Verdict(False, self._failed_reason, newly_failed=True)
        return Verdict(True)

    def started(self) -> None:
        now = self._clock()
        self._attempts = self._recent(now) + [now]
        self._save()

    def succeeded(self) -> None:
        self._failures = 0
        self._retry_at = None
        self._save()

    def failed(self) -> float:
        """Note a failed attempt; returns the delay before the next one may start."""
        self._failures += 1
        delay = self._delay()
        self._retry_at = self._clock() + delay
        self._save()
        return delay

    def give_up(self, reason: str) -> None:
        """Stop automatic recovery now: retrying cannot help (libvirt refuses the revert
        for a reason only staff can remove). Cleared like a tripped guard, by ``reset``."""
        self._failed_reason = reason
        self._retry_at = None
        self._save()

    def reset(self) -> bool:
        """Staff started or restarted the VM: forget the count. True if it was failed."""
        was_failed = self._failed_reason is not None
        self._attempts, self._failures = [], 0
        self._retry_at = self._failed_reason = None
        self._save()
        return was_failed

    def as_json(self) -> dict[str, Any]:
        remaining = self.retry_in()
        return {
            "state": self.state,
            "detail": self._failed_reason,
            "recent_recoveries": len(self._recent(self._clock())),
            "max_recoveries": self.max_recoveries,
            "recovery_window": self.window,
            "consecutive_failures": self._failures,
            "retry_in": None if remaining is None else round(remaining, 1),
        }
