"""A wall clock that tests set: the time a monitor believes it is (opening hours)."""

from __future__ import annotations

import threading
from datetime import datetime


class WallClock:
    """The time the monitor believes it is; tests move it (from any thread)."""

    def __init__(self, when: datetime):
        self._when = when
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._when

    def set(self, when: datetime) -> None:
        with self._lock:
            self._when = when
