"""Writes to the state file without ever holding up the watchdog.

The monitor must go on deciding and acting when the disk is full, the
filesystem was remounted read-only or the database is locked: a failed write
may cost a line of history, never a recovery. So every write goes through
this object. Flags take effect in memory at once (reads are answered from
memory), and every write is queued and carried out by one writer thread, in
order. A write that fails stays queued and is retried with back-off; the
failure is logged once per cause and shown in status, and the recovery is
logged too. Staff actions wait a bounded time for their write to reach the
disk (``flush``), so what was acknowledged survives a kill -9 whenever the
disk allows it.

Nothing here runs SQLite under the monitor's lock: callers may queue writes
while holding it, since queuing only touches memory.

Every change to the history passes here, so this is also where others hear of
them (``add_listener``): the metrics count recoveries from it. Listeners are
told on the caller's thread, outside this object's lock, and a listener that
raises is logged, never felt by the monitor.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .store import Event, Store, StoreError
from .vocab import STARTED

log = logging.getLogger(__name__)

#: Writes kept while the disk refuses them; past this the oldest history rows
#: are dropped (flags are never dropped: there is one queued write per key).
MAX_QUEUED = 10_000
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
_WRITE_ERRORS = (sqlite3.Error, OSError, StoreError)

Write = Callable[[Store], Any]


@dataclass(frozen=True)
class HistoryChange:
    """One change to the history as a listener hears of it: an action begun (outcome
    'started', no duration), finished, or recorded whole (a refusal, a repeat)."""

    vm: str
    trigger: str
    action: str
    outcome: str
    duration: float | None
    reason: str
    error: str | None = None


Listener = Callable[[HistoryChange], None]


class StateWriter:
    """The monitor's view of the Store: reads from memory, writes queued."""

    def __init__(
        self,
        store: Store,
        max_queued: int = MAX_QUEUED,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ):
        self.store = store
        self.max_queued = max_queued
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._flags: dict[str, Any] = {}
        self._flag_queued: dict[str, int] = {}  # key -> seq of its queued write
        self._queue: deque[tuple[int, str | None, Write]] = deque()  # (seq, flag key, write)
        self._seq = 0
        self._written = 0
        self._dropped = 0
        self._problem: str | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._begun: dict[int, tuple[str, str, str, str]] = {}  # id -> vm, trigger, action, reason
        # Replaced whole, never changed in place: read without the lock.
        self._listeners: tuple[Listener, ...] = ()
        self._problem = store.unwritable
        try:
            self._next_id = store.max_event_id() + 1
        except _WRITE_ERRORS as exc:
            self._next_id = 1
            self._problem = f"cannot read the state file: {exc}"

    # ------------------------------------------------------------ life

    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout``), then close the file."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            left = len(self._queue)
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if left:
            log.error(
                "%d write(s) to the state file were lost at exit: %s",
                left,
                self._problem or "the writer did not finish in time",
            )
        self.store.close()

    # ------------------------------------------------------------ status

    @property
    def problem(self) -> str | None:
        """Why state is not being saved now, in words for status; None when all is well."""
        problem = self._problem  # status asks on every poll: no lock to read one reference
        if problem is None:
            return None
        return (
            f"state is not being saved to {str(self.store.path)!r}: {problem} "
            f"({self.pending} write(s) waiting; the watchdog goes on)"
        )

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------ flags

    def get(self, key: str, default: Any = None) -> Any:
        with self._cond:
            if key in self._flags:
                return self._flags[key]
        try:
            value = self.store.get(key, default)
        except _WRITE_ERRORS as exc:
            self._note_failure(exc)
            return default
        with self._cond:
            return self._flags.setdefault(key, value)

    def put(self, key: str, value: Any) -> int:
        """Set a flag now (in memory) and queue its write. Returns a ticket for ``flush``."""
        with self._cond:
            self._flags[key] = value
            queued = self._flag_queued.get(key)
            if queued is not None:
                return queued  # that write, still queued, will write the newest value
            seq = self._enqueue_locked(key, lambda store: store.put(key, self._flag_value(key)))
            self._flag_queued[key] = seq
            return seq

    def _flag_value(self, key: str) -> Any:
        with self._cond:
            self._flag_queued.pop(key, None)  # a put from now on needs a write of its own
            return self._flags[key]

    # ------------------------------------------------------------ listeners

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every change to the history from now on. It must be quick:
        it runs on the thread that made the change (the monitor's, a request's)."""
        with self._cond:
            self._listeners = (*self._listeners, listener)

    def _tell(self, change: HistoryChange) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("a listener of the history failed on %s", change)

    # ------------------------------------------------------------ history

    def begin(self, vm: str, trigger: str, action: str, reason: str) -> int:
        """Queue an action as started; ``finish`` completes it. Returns its id."""
        when = time.time()
        with self._cond:
            event_id = self._next_id
            self._next_id += 1
            self._begun[event_id] = (vm, trigger, action, reason)
            self._enqueue_locked(
                None,
                lambda store: store.begin(
                    vm, trigger, action, reason, when=when, event_id=event_id
                ),
            )
        self._tell(HistoryChange(vm, trigger, action, STARTED, None, reason))
        return event_id

    def finish(
        self, event_id: int, outcome: str, duration: float | None, error: str | None = None
    ) -> int:
        with self._cond:
            begun = self._begun.pop(event_id, None)
            ticket = self._enqueue_locked(
                None, lambda store: store.finish(event_id, outcome, duration, error)
            )
        if begun is not None:
            vm, trigger, action, reason = begun
            self._tell(HistoryChange(vm, trigger, action, outcome, duration, reason, error))
        return ticket

    def record(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        outcome: str,
        duration: float | None = None,
        error: str | None = None,
    ) -> int:
        """Queue an action that is already over (or was refused). Returns its id."""
        when = time.time()
        with self._cond:
            event_id = self._next_id
            self._next_id += 1
            self._enqueue_locked(
                None,
                lambda store: store.record(
                    vm,
                    trigger,
                    action,
                    reason,
                    outcome,
                    duration,
                    error,
                    when=when,
                    event_id=event_id,
                ),
            )
        self._tell(HistoryChange(vm, trigger, action, outcome, duration, reason, error))
        return event_id

    def record_coalesced(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        outcome: str,
        error: str | None = None,
    ) -> None:
        """Queue an event that may repeat at will: repeats share a row (Store.record_coalesced)."""
        when = time.time()
        with self._cond:
            self._enqueue_locked(
                None,
                lambda store: store.record_coalesced(
                    vm, trigger, action, reason, outcome, error, now=when
                ),
            )
        self._tell(HistoryChange(vm, trigger, action, outcome, None, reason, error))

    def mark_interrupted(self) -> None:
        """Queue: actions a crash cut short get the outcome 'interrupted' (logged when done)."""

        def write(store: Store) -> None:
            count = store.mark_interrupted()
            if count:
                log.warning(
                    "%d action(s) were cut short when the controller last stopped; "
                    "they are marked 'interrupted' in the history",
                    count,
                )

        with self._cond:
            self._enqueue_locked(None, write)

    def record_health(self, state: str, when: float) -> None:
        """Queue a change of the artwork's health (the monitor calls it under its own lock:
        it only appends to the queue)."""
        with self._cond:
            self._enqueue_locked(None, lambda store: store.record_health(when, state))

    def health(self, since: float, until: float, wait: float = 1.0) -> list[tuple[float, str]]:
        """Health changes for a report (Store.health), including those queued before the
        call when the disk allows it within ``wait``. Raises StoreError if unreadable."""
        self.flush(wait)
        try:
            return self.store.health(since, until)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot read the health record from {str(self.store.path)!r}: {exc}"
            ) from None

    def actions_between(
        self, since: float, until: float, actions: Iterable[str], wait: float = 1.0
    ) -> list[tuple[float, str, str, str]]:
        """History rows of some actions in a time range (Store.actions_between)."""
        self.flush(wait)
        try:
            return self.store.actions_between(since, until, actions)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot read the history from {str(self.store.path)!r}: {exc}"
            ) from None

    def outbox_add(self, key: str, channel: str, created: float, message: dict[str, Any]) -> int:
        """Queue a notification's row in the outbox (Store.outbox_add). Returns a ticket."""
        with self._cond:
            return self._enqueue_locked(
                f"outbox:{key}", lambda store: store.outbox_add(key, channel, created, message)
            )

    def outbox_remove(self, key: str) -> int:
        """Queue the removal of a delivered (or dropped) notification. Returns a ticket."""
        with self._cond:
            return self._enqueue_locked(f"outbox:{key}", lambda store: store.outbox_remove(key))

    def outbox(self) -> list[tuple[str, str, float, dict[str, Any]]]:
        """What the outbox held at start (read once, before anything is queued)."""
        try:
            return self.store.outbox()
        except _WRITE_ERRORS as exc:
            self._note_failure(exc)
            return []

    def prune(self) -> None:
        with self._cond:
            self._enqueue_locked(None, lambda store: store.prune())

    def events(
        self,
        limit: int = 100,
        since: float | None = None,
        triggers: Iterable[str] = (),
        wait: float = 1.0,
    ) -> list[Event]:
        """History, newest first, including what was queued before the call when the disk
        allows it within ``wait``. Raises StoreError if the file cannot be read."""
        self.flush(wait)
        try:
            return self.store.events(limit=limit, since=since, triggers=triggers)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot read the history from {str(self.store.path)!r}: {exc}"
            ) from None

    # ------------------------------------------------------------ durability

    def flush(self, timeout: float, ticket: int | None = None) -> bool:
        """Wait until the writes queued so far (or up to ``ticket``) are on disk.

        Returns at once, False, while writes are failing: staff are not kept
        waiting for a disk that refuses them (status says so).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._seq if ticket is None else ticket
            while self._written < target:
                remaining = deadline - time.monotonic()
                if (
                    self._problem is not None
                    or remaining <= 0
                    or self._thread is None
                    or not self._thread.is_alive()
                ):
                    return False
                self._cond.wait(remaining)
            return True

    # ------------------------------------------------------------ the writer

    def _enqueue_locked(self, key: str | None, write: Write) -> int:
        self._seq += 1
        self._queue.append((self._seq, key, write))
        if len(self._queue) > self.max_queued:
            self._drop_oldest_history_locked()
        self._cond.notify_all()
        return self._seq

    def _drop_oldest_history_locked(self) -> None:
        for index, (_, key, _write) in enumerate(self._queue):
            if key is None and index > 0:  # the head may be being written right now
                del self._queue[index]
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 1000 == 0:
                    log.error(
                        "the state file refuses writes and %d are queued: %d history "
                        "row(s) dropped so far",
                        self.max_queued,
                        self._dropped,
                    )
                return

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                seq, _key, write = self._queue[0]
            try:
                write(self.store)
            except _WRITE_ERRORS as exc:
                self._note_failure(exc)
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.retry_max)
                self.store.reopen()  # a file opened read-only at start may be writable now
                continue
            except Exception:  # a bug in one write must not stop every later one
                log.exception("a write to the state file failed unexpectedly; skipped")
            delay = self.retry_initial
            with self._cond:
                if self._queue and self._queue[0][0] == seq:
                    self._queue.popleft()
                self._written = seq
                recovered = None
                if not self._queue:  # a disk that takes one write may refuse the next
                    recovered, self._problem = self._problem, None
                self._cond.notify_all()
            if recovered is not None:
                log.warning("the state file is being written again (it was not: %s)", recovered)

    def _note_failure(self, exc: BaseException) -> None:
        cause = f"{type(exc).__name__}: {exc}"
        with self._cond:
            new = cause != self._problem
            self._problem = cause
            waiting = len(self._queue)
            self._cond.notify_all()
        if new:
            log.error(
                "cannot write the state file %r: %s; %d write(s) wait and are retried; "
                "the watchdog goes on without them",
                str(self.store.path),
                cause,
                waiting,
            )
