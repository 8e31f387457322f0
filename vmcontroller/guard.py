"""The restart-loop guard: automatic recovery must never make things worse.

A VM whose guest never comes back healthy would otherwise be reverted every
timeout, forever, wearing the disk and hiding the fault. The guard allows at
most ``max_recoveries`` automatic recoveries within ``recovery_window``
seconds, spaces failed attempts with exponential backoff, and past the limit
declares the VM ``failed``: left as it is until staff start or restart it.
Its state is persisted, so a controller restart does not reset the count.
Times are wall-clock seconds because they must survive a restart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .vocab import GUARD_BACKOFF as BACKOFF
from .vocab import GUARD_FAILED as FAILED
from .vocab import GUARD_OK as OK

_KEY = "guard"


class FlagStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def put(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None
    newly_failed: bool = False   # this refusal is the one that tripped the guard


class RecoveryGuard:
    """Counts automatic recoveries; not thread-safe on its own (the monitor holds a lock)."""

    def __init__(self, store: FlagStore, max_recoveries: int, window: float,
                 backoff_initial: float, backoff_max: float,
                 clock: Callable[[], float] = time.time):
        self._store = store
        self.max_recoveries = max_recoveries
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        saved = store.get(_KEY, {}) or {}
        self._attempts: list[float] = [float(t) for t in saved.get("attempts", [])]
        self._failures = int(saved.get("failures", 0))
        self._retry_at: float | None = saved.get("retry_at")
        self._failed_reason: str | None = saved.get("failed_reason")

    def _save(self) -> None:
        self._store.put(_KEY, {"attempts": self._attempts, "failures": self._failures,
                               "retry_at": self._retry_at, "failed_reason": self._failed_reason})

    def _recent(self, now: float) -> list[float]:
        return [t for t in self._attempts if t > now - self.window]

    @property
    def state(self) -> str:
        if self._failed_reason is not None:
            return FAILED
        if self._retry_at is not None and self._clock() < self._retry_at:
            return BACKOFF
        return OK

    @property
    def retry_at(self) -> float | None:
        """Wall time before which no automatic attempt may start (after a failure)."""
        return self._retry_at if self.state == BACKOFF else None

    def check(self) -> Verdict:
        """May an automatic recovery start now?"""
        if self._failed_reason is not None:
            return Verdict(False, self._failed_reason)
        now = self._clock()
        if self._retry_at is not None and now < self._retry_at:
            return Verdict(False, f"backing off after {self._failures} failed attempt(s) "
                                  f"until {self._retry_at - now:.1f} s from now")
        recent = self._recent(now)
        if len(recent) >= self.max_recoveries:
            self._failed_reason = (f"{len(recent)} automatic recoveries within "
                                   f"{self.window:g} s (limit {self.max_recoveries}): the VM is "
                                   f"left as it is until staff start or restart it")
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
        delay = min(self.backoff_initial * 2 ** (self._failures - 1), self.backoff_max)
        self._retry_at = self._clock() + delay
        self._save()
        return delay

    def reset(self) -> bool:
        """Staff started or restarted the VM: forget the count. True if it was failed."""
        was_failed = self._failed_reason is not None
        self._attempts, self._failures = [], 0
        self._retry_at = self._failed_reason = None
        self._save()
        return was_failed

    def as_json(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "state": self.state,
            "detail": self._failed_reason,
            "recent_recoveries": len(self._recent(now)),
            "max_recoveries": self.max_recoveries,
            "recovery_window": self.window,
            "consecutive_failures": self._failures,
            "retry_in": None if self.retry_at is None else round(self.retry_at - now, 1),
        }
