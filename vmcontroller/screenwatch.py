"""Screen liveness, the moving part: take the VM's screen every few seconds, judge it
with the configured rules (screen.py), tell the monitor when one fails, and keep the
pictures staff need (the latest, and each one that caused a recovery).

It runs in its own thread, never under the monitor's lock: a screenshot is a virsh
call of tens of milliseconds, and decoding one a few more. The monitor decides what a
failure means (grace period, maintenance, schedule, guard), exactly as for silence.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from .screen import Judge, ScreenConfig, Verdict, decode, load_references

log = logging.getLogger(__name__)

#: Kept screenshots are named by their history row's id: ``<id>.png``.
_SUFFIX = ".png"


class Look(NamedTuple):
    running: bool  # there is a screen to take
    judged: bool  # a failing rule is acted on now
    armed_at: float  # the rules count from this arming


class ScreenShelf:
    """The latest screenshot (in memory: one every few seconds for months must not wear
    the PC's disk) and those that caused a recovery (on disk, bounded by count and size,
    the oldest going first)."""

    def __init__(self, folder: Path, keep: int, keep_bytes: int):
        self.folder = folder
        self.keep_count = keep
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._latest: tuple[bytes, datetime] | None = None

    def put_latest(self, png: bytes, when: datetime) -> None:
        with self._lock:
            self._latest = (png, when)

    def latest(self) -> tuple[bytes, datetime] | None:
        with self._lock:
            return self._latest

    def keep(self, event_id: int, png: bytes) -> None:
        """Keep the screenshot of history row ``event_id``, then drop the oldest beyond
        the bounds. Written whole or not at all (a rename), so a crash leaves no half
        picture."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{event_id}{_SUFFIX}"
        part = path.with_suffix(".part")
        part.write_bytes(png)
        os.replace(part, path)
        self._prune()

    def kept(self, event_id: int) -> bytes | None:
        try:
            return (self.folder / f"{event_id}{_SUFFIX}").read_bytes()
        except OSError:
            return None

    def kept_ids(self) -> list[int]:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        return sorted(int(n[: -len(_SUFFIX)]) for n in names if _is_kept_name(n))

    def _prune(self) -> None:
        ids = self.kept_ids()
        sizes = {i: _size(self.folder / f"{i}{_SUFFIX}") for i in ids}
        total = sum(sizes.values())
        while ids and (len(ids) > self.keep_count or total > self.keep_bytes):
            oldest = ids.pop(0)
            total -= sizes[oldest]
            try:
                (self.folder / f"{oldest}{_SUFFIX}").unlink()
            except OSError as exc:  # pragma: no cover: a folder made read-only meanwhile
                log.warning("cannot remove the kept screenshot %d: %s", oldest, exc)
                return
            log.info("kept screenshots: removed the oldest (%d) to stay within bounds", oldest)


def _is_kept_name(name: str) -> bool:
    return name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class _Seen:
    """What the watcher saw last, for status (under the watcher's lock)."""

    at: datetime | None = None
    size: tuple[int, int] | None = None
    verdicts: tuple[Verdict, ...] = ()
    error: str | None = None
    judged: bool = False


class ScreenWatcher:
    """One thread: every ``interval`` seconds, a screenshot of the running VM, judged."""

    def __init__(
        self,
        config: ScreenConfig,
        take: Callable[[], bytes],
        look: Callable[[], Look],
        report: Callable[[str, bytes], bool],
        shelf: ScreenShelf,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        wait: Callable[[float], bool] | None = None,
    ):
        self.config = config
        self._take = take
        self._look = look
        self._report = report
        self.shelf = shelf
        self._clock = clock
        self._wallclock = wallclock
        # A missing or unreadable reference image stops the controller at start (BadImage).
        self._judge = Judge(config, load_references(config))
        self._armed_at: float | None = None
        self._lock = threading.Lock()
        self._seen = _Seen()
        self._stop = threading.Event()
        #: Sleeps up to the given seconds; True when the watcher is to stop.
        self._wait = wait or self._stop.wait
        self._thread: threading.Thread | None = None
        #: Screenshots taken and judged; read without the lock (metrics, the benchmark).
        self.frames = 0

    def start(self) -> None:
        """Start the thread, or start it again if it died (the controller's supervise)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="screen", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Look every interval until stopped. Each look is due an interval after the last
        one was due, not after it ended (a look takes tens of milliseconds, which would
        otherwise stretch every interval); after one that overran, the next is at once."""
        interval = self.config.interval
        due = self._clock() + interval
        while not self._wait(max(0.0, due - self._clock())):
            try:
                self.step(due)
            except Exception:  # the watcher must outlive a surprise; the next look retries
                log.exception("screen check failed; continuing")
            due = max(due + interval, self._clock())

    def step(self, due: float | None = None) -> list[Verdict]:
        """One look: take the screen if the VM runs, judge it, report a failing rule.

        ``due``: when the look was due. The rules count on that time, not on when the
        look ran (a few milliseconds later, by varying amounts): a rule of 10 s at an
        interval of 2 s then fails at the fifth look after the change, not at the sixth
        for the one that ran 2 ms less late than the first.
        """
        look = self._look()
        if not look.running:
            return []
        try:
            png = self._take()
            frame = decode(png)
        except Exception as exc:  # libvirt mid-revert, a guest without a screen, BadImage
            self._note_error(str(getattr(exc, "message", exc)))
            return []
        now, wall = (self._clock() if due is None else due), self._wallclock()
        self.shelf.put_latest(png, wall)
        if look.armed_at != self._armed_at:
            self._judge.reset(now)  # a fresh start: nothing before it counts
            self._armed_at = look.armed_at
        verdicts = self._judge.look(frame, now)
        self.frames += 1
        with self._lock:
            if self._seen.error is not None:
                log.info("screenshots of the VM work again")
            self._seen = _Seen(wall, frame.size, tuple(verdicts), None, look.judged)
        failing = [v for v in verdicts if v.failing]
        if failing and look.judged:
            reason = "; ".join(f"screen rule {v.rule!r} ({v.kind}): {v.detail}" for v in failing)
            if self._report(reason, png):
                log.warning("%s", reason)
        return verdicts

    def _note_error(self, message: str) -> None:
        with self._lock:
            if self._seen.error != message:
                log.warning("cannot take the VM's screen: %s", message)
            self._seen.error = message

    def status(self) -> dict[str, Any]:
        with self._lock:
            seen = self._seen
        return {
            "interval": self.config.interval,
            "judged": seen.judged,
            "last_screenshot": seen.at.isoformat() if seen.at else None,
            "size": list(seen.size) if seen.size else None,
            "error": seen.error,
            "rules": [v.as_json() for v in seen.verdicts],
        }
