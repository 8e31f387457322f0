"""What must survive a restart or a kill -9: staff's flags, the guard, history.

SQLite in WAL mode, one file. Every write is its own committed transaction,
so whatever was acknowledged to staff (maintenance on, VM stopped) is on disk
before the HTTP answer leaves, and a crash at any moment leaves either the
old or the new value, never half of one.

The file runs for years on a small disk, so it must not grow without bound:
history is pruned by age and count, the space pruning frees is given back
(incremental auto-vacuum, then a WAL checkpoint), and an event that a guest
can repeat at will is coalesced into one row per cause and interval with a
count, instead of a row per request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import StateFileError
from .vocab import API_PREFIX, INTERRUPTED, REFUSED, REPEAT_INTERVAL, SCREEN, SKIPPED, STARTED

SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time      REAL NOT NULL,
    vm        TEXT NOT NULL,
    trigger   TEXT NOT NULL,
    action    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    duration  REAL,
    error     TEXT,
    count     INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS health (
    time   REAL NOT NULL,
    state  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS health_time ON health (time);
CREATE TABLE IF NOT EXISTS outbox (
    key      TEXT PRIMARY KEY,
    channel  TEXT NOT NULL,
    created  REAL NOT NULL,
    message  TEXT NOT NULL
);
"""
# Added after the first release: state files from before lack it.
MIGRATIONS = {
    "count": "ALTER TABLE events ADD COLUMN count INTEGER NOT NULL DEFAULT 1",
}
_COLUMNS = "id, time, vm, trigger, action, reason, outcome, duration, error, count"
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL

log = logging.getLogger(__name__)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring an older file's events table up to SCHEMA (a new one has every column)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    for column, statement in MIGRATIONS.items():
        if column not in present:
            db.execute(statement)


class StoreError(StateFileError):
    """The state file cannot be opened or written; worded for the admin."""


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    vm: str
    trigger: str
    action: str
    reason: str
    outcome: str
    duration: float | None
    error: str | None
    count: int = 1  # occurrences coalesced into this row (see record_coalesced)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": datetime.fromtimestamp(self.time, timezone.utc).astimezone().isoformat(),
            "vm": self.vm,
            "trigger": self.trigger,
            "action": self.action,
            "reason": self.reason,
            "outcome": self.outcome,
            "duration": None if self.duration is None else round(self.duration, 3),
            "error": self.error,
            "count": self.count,
            "screenshot": self.screenshot,
        }

    @property
    def screenshot(self) -> str | None:
        """Where the screenshot that caused this recovery is served (a screen rule's
        revert keeps it under the row's id), or None for any other row."""
        if self.trigger != SCREEN or self.outcome in (REFUSED, SKIPPED):
            return None
        return f"{API_PREFIX}/screen/{self.id}"


class Store:
    """One SQLite file shared by the threads of one controller (a lock serialises them)."""

    def __init__(self, path: str | Path, max_age_days: float = 90, max_rows: int = 10000):
        self.path = Path(path)
        self.max_age = max_age_days * 86400
        self.max_rows = max_rows
        self._lock = threading.Lock()
        #: Why the file cannot be written (it was opened read-only, or not at all), or None.
        self.unwritable: str | None = None
        try:
            self._db = self._open()
        except (OSError, sqlite3.Error) as exc:
            # Untestable: SQLite opens a memory database unless memory itself runs
            # out; kept because a memory database has no file to fall back on reading.
            if str(path) == ":memory:":  # pragma: no cover: see the reason above
                raise StoreError(f"cannot open the state file {str(path)!r}: {exc}") from None
            # A watchdog that refuses to start because its state file cannot be
            # written (a filesystem remounted read-only after an error, a full
            # disk) leaves the artwork unwatched: run on what can be read instead.
            self.unwritable = f"cannot open it for writing: {exc}"
            self._db = self._open_read_only()
            log.error(
                "the state file %s %s; running on what it holds, changes are not saved "
                "until it can be written again",
                self.path,
                self.unwritable,
            )

    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=10
        )
        try:
            self._use_incremental_vacuum()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except BaseException:
            self._db.close()
            raise
        return self._db

    def _open_read_only(self) -> sqlite3.Connection:
        """The file as it is, never written (immutable: nothing may change it now); an empty
        history if it cannot even be read. Writes to it fail, and are retried by the writer."""
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            db.execute("SELECT count(*) FROM flags").fetchone()
            present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
            if "count" in present:
                return db
            db.close()
            self.unwritable = (self.unwritable or "") + (
                "; it is from an older version, which cannot be converted "
                "without writing: starting from an empty state"
            )
        except sqlite3.Error as exc:
            self.unwritable = (
                self.unwritable or ""
            ) + f"; nor read ({exc}): starting from an empty state"
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.executescript(SCHEMA)
        _add_missing_columns(db)
        db.execute("PRAGMA query_only=ON")
        return db

    def reopen(self) -> bool:
        """Try again to open a file that could not be written at start. True if it now can."""
        if self.unwritable is None:
            return True
        with self._lock:
            old = self._db
            try:
                self._db = self._open()
            except (OSError, sqlite3.Error):
                self._db = old
                return False
            old.close()
            self.unwritable = None
        log.warning("the state file %s can be written again", self.path)
        return True

    def _use_incremental_vacuum(self) -> None:
        """Let prune() give space back. The mode is fixed when the first table is
        created; a file from before it was set is rewritten once (VACUUM) to adopt it."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            return
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        has_tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if has_tables:
            try:
                self._db.execute("VACUUM")
            except sqlite3.Error as exc:
                # It needs room for a copy of the file; without it the controller
                # still runs, the file just does not shrink until a later start.
                log.warning(
                    "could not convert the state file %s to incremental vacuum "
                    "(%s): pruned history will not shrink it",
                    self.path,
                    exc,
                )

    def _migrate(self) -> None:
        _add_missing_columns(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ flags

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM flags WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO flags (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # ------------------------------------------------------------ history

    def begin(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        when: float | None = None,
        event_id: int | None = None,
    ) -> int:
        """Record an action as started; ``finish`` completes it. Returns its id.

        ``event_id`` lets a writer that queues rows hand out their ids before
        they reach the disk (see statewriter.py); an id already taken is kept.
        """
        with self._lock:
            return self._insert(
                vm,
                trigger,
                action,
                reason,
                STARTED,
                None,
                None,
                time.time() if when is None else when,
                event_id,
            )

    def max_event_id(self) -> int:
        """The highest id handed out so far (0 for an empty history)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
            ).fetchone()
            top = self._db.execute("SELECT MAX(id) FROM events").fetchone()
        return max(int(row[0]) if row else 0, int(top[0] or 0))

    def finish(
        self, event_id: int, outcome: str, duration: float | None, error: str | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE events SET outcome = ?, duration = ?, error = ? WHERE id = ?",
                (outcome, duration, error, event_id),
            )

    def record(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        outcome: str,
        duration: float | None = None,
        error: str | None = None,
        when: float | None = None,
        event_id: int | None = None,
    ) -> int:
        """Record an action that is already over (or was refused): one row, one commit."""
        with self._lock:
            return self._insert(
                vm,
                trigger,
                action,
                reason,
                outcome,
                duration,
                error,
                time.time() if when is None else when,
                event_id,
            )

    def record_coalesced(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        outcome: str,
        error: str | None = None,
        interval: float = REPEAT_INTERVAL,
        now: float | None = None,
    ) -> int:
        """Record an event that may repeat at will (a refused guest request).

        Repeats of one cause, the same (vm, trigger, action, outcome, error), within
        ``interval`` seconds of the first share its row: its count goes up, its time
        and reason stay the first's. Returns the row's id. The first row of each
        interval is committed with a full sync; a repeat only bumps a counter and
        is not worth an fsync: a power cut may lose the last few increments (never
        the row, never the file's consistency: WAL with synchronous=NORMAL).
        """
        now = time.time() if now is None else now
        with self._lock:
            # Only rows not dated after now: after a clock step back, a row "in the
            # future" would otherwise collect repeats for as long as the step.
            row = self._db.execute(
                "SELECT id FROM events WHERE time > ? AND time <= ? AND vm = ? AND trigger = ? "
                "AND action = ? AND outcome = ? AND error IS ? ORDER BY id DESC LIMIT 1",
                (now - interval, now, vm, trigger, action, outcome, error),
            ).fetchone()
            if row is None:
                return self._insert(vm, trigger, action, reason, outcome, None, error, now)
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("UPDATE events SET count = count + 1 WHERE id = ?", (row[0],))
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            return int(row[0])

    def _insert(
        self,
        vm: str,
        trigger: str,
        action: str,
        reason: str,
        outcome: str,
        duration: float | None,
        error: str | None,
        when: float,
        event_id: int | None = None,
    ) -> int:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO events (id, time, vm, trigger, action, reason, outcome, "
            "duration, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, when, vm, trigger, action, reason, outcome, duration, error),
        )
        return int(cursor.lastrowid or 0) if event_id is None else event_id

    def mark_interrupted(self) -> int:
        """At start: actions a crash cut short get the outcome 'interrupted'."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE events SET outcome = ?, error = ? WHERE outcome = ?",
                (INTERRUPTED, "the controller stopped before this action ended", STARTED),
            )
            return cursor.rowcount

    def events(
        self, limit: int = 100, since: float | None = None, triggers: Iterable[str] = ()
    ) -> list[Event]:
        """Newest first."""
        query = f"SELECT {_COLUMNS} FROM events"
        where: list[str] = []
        args: list[float | str] = []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        triggers = list(triggers)
        if triggers:
            where.append(f"trigger IN ({', '.join('?' * len(triggers))})")
            args.extend(triggers)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [Event(*row) for row in rows]

    # ------------------------------------------------------------ health

    def record_health(self, when: float, state: str) -> None:
        """A change of the artwork's health (vocab.HEALTH_STATES), one row per change."""
        with self._lock:
            self._db.execute("INSERT INTO health (time, state) VALUES (?, ?)", (when, state))

    def health(self, since: float, until: float) -> list[tuple[float, str]]:
        """The changes from ``since`` to ``until``, oldest first, after the one in force
        at ``since`` (if any): what a report of that range needs."""
        with self._lock:
            before = self._db.execute(
                "SELECT time, state FROM health WHERE time < ? "
                "ORDER BY time DESC, rowid DESC LIMIT 1",
                (since,),
            ).fetchall()
            rows = self._db.execute(
                "SELECT time, state FROM health WHERE time >= ? AND time < ? ORDER BY time, rowid",
                (since, until),
            ).fetchall()
        return [(float(t), str(s)) for t, s in before + rows]

    def actions_between(
        self, since: float, until: float, actions: Iterable[str]
    ) -> list[tuple[float, str, str, str]]:
        """(time, trigger, action, outcome) of the history rows with one of ``actions``
        from ``since`` to ``until``, oldest first: a report's recoveries."""
        wanted = list(actions)
        with self._lock:
            rows = self._db.execute(
                "SELECT time, trigger, action, outcome FROM events WHERE time >= ? AND time < ? "
                f"AND action IN ({', '.join('?' * len(wanted))}) ORDER BY time, id",
                (since, until, *wanted),
            ).fetchall()
        return [(float(t), str(tr), str(a), str(o)) for t, tr, a, o in rows]

    def last_health(self) -> tuple[float, str] | None:
        """The latest change recorded (the previous run's last word at start)."""
        with self._lock:
            row = self._db.execute(
                "SELECT time, state FROM health ORDER BY time DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    # ------------------------------------------------------------ outbox

    def outbox_add(self, key: str, channel: str, created: float, message: dict[str, Any]) -> None:
        """A notification waiting for delivery by ``channel``; kept until removed."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (key, channel, created, message) VALUES (?, ?, ?, ?)",
                (key, channel, created, json.dumps(message)),
            )

    def outbox_remove(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE key = ?", (key,))

    def outbox(self) -> list[tuple[str, str, float, dict[str, Any]]]:
        """(key, channel, created, message) of every waiting notification, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, channel, created, message FROM outbox ORDER BY created, rowid"
            ).fetchall()
        return [(str(k), str(c), float(t), json.loads(m)) for k, c, t, m in rows]

    def prune(self, now: float | None = None) -> int:
        """Drop history older than max_age or beyond max_rows, and give the space back.

        Health changes older than max_age go too, but the last of them, which says
        what the health was when the kept ones begin."""
        now = time.time() if now is None else now
        with self._lock:
            removed = self._db.execute(
                "DELETE FROM events WHERE time < ? AND outcome != ?", (now - self.max_age, STARTED)
            ).rowcount
            removed += self._db.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC "
                "LIMIT 1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
            removed += self._db.execute(
                "DELETE FROM health WHERE time < ? AND rowid != (SELECT rowid FROM health "
                "WHERE time < ? ORDER BY time DESC, rowid DESC LIMIT 1)",
                (now - self.max_age, now - self.max_age),
            ).rowcount
            if removed:
                self._compact()
        return removed

    def _compact(self) -> None:
        """Give the space of deleted rows back to the disk; best effort (a full disk
        or a reader holding the WAL only postpones it to the next prune)."""
        try:
            # incremental_vacuum frees one page per step of its statement and returns
            # no row, so execute() would free a single page; executescript() steps it
            # to the end. The checkpoint then moves the freed pages out of the main
            # file, truncating it, and empties the WAL, which the deletes had grown.
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("could not compact the state file %s after pruning: %s", self.path, exc)
