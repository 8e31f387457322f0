"""The state file and the restart-loop guard, on their own."""

from __future__ import annotations

import sqlite3
import subprocess

from vmcontroller.guard import BACKOFF, FAILED, OK, RecoveryGuard
from vmcontroller.store import Store
from vmcontroller.vocab import INTERRUPTED, STARTED, SUCCEEDED


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_flags_survive_reopening(tmp_path):
    path = tmp_path / "state.db"
    store = Store(path)
    store.put("auto_revert_enabled", False)
    store.put("guard", {"attempts": [1.5], "failures": 2})
    store.close()
    again = Store(path)
    assert again.get("auto_revert_enabled") is False
    assert again.get("guard") == {"attempts": [1.5], "failures": 2}
    assert again.get("missing", "default") == "default"
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_history_is_newest_first_and_filtered(tmp_path):
    store = Store(tmp_path / "s.db")
    for i, trigger in enumerate(["api", "heartbeat_timeout", "vm_stopped", "heartbeat_timeout"]):
        store.record("vm", trigger, "revert", f"r{i}", SUCCEEDED, 0.5)
    events = store.events()
    assert [e.reason for e in events] == ["r3", "r2", "r1", "r0"]
    assert [e.reason for e in store.events(limit=2)] == ["r3", "r2"]
    assert [e.reason for e in store.events(triggers=["heartbeat_timeout"])] == ["r3", "r1"]
    assert store.events(since=events[0].time + 10) == []
    as_json = events[0].as_json()
    assert set(as_json) == {
        "id",
        "time",
        "vm",
        "trigger",
        "action",
        "reason",
        "outcome",
        "duration",
        "error",
        "count",
        "screenshot",
    }
    assert as_json["count"] == 1
    assert "T" in as_json["time"]


def test_unfinished_actions_become_interrupted(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path)
    store.begin("vm", "heartbeat_timeout", "revert", "no heartbeat")
    store.close()  # as if killed here
    again = Store(path)
    assert again.events()[0].outcome == STARTED
    assert again.mark_interrupted() == 1
    event = again.events()[0]
    assert event.outcome == INTERRUPTED and "stopped before" in event.error


def test_history_is_pruned_by_age_and_count(tmp_path):
    store = Store(tmp_path / "s.db", max_age_days=1, max_rows=100)
    old = store.begin("vm", "api", "stop", "old", when=0.0)
    store.finish(old, SUCCEEDED, 0.1)
    for i in range(150):
        store.record("vm", "api", "stop", f"n{i}", SUCCEEDED)
    removed = store.prune()
    left = store.events(limit=1000)
    assert removed == 51 and len(left) == 100
    assert left[0].reason == "n149" and left[-1].reason == "n50"


def test_guard_allows_max_recoveries_then_fails_until_reset(tmp_path):
    clock = Clock()
    store = Store(tmp_path / "s.db")
    guard = RecoveryGuard(
        store, max_recoveries=3, window=600, backoff_initial=5, backoff_max=60, clock=clock
    )
    for _ in range(3):
        assert guard.check().allowed
        guard.started()
        guard.succeeded()
        clock.now += 10
    verdict = guard.check()
    assert not verdict.allowed and verdict.newly_failed and guard.state == FAILED
    assert "3 automatic recoveries within 600 s" in verdict.reason
    again = guard.check()
    assert not again.allowed and not again.newly_failed
    # A restart of the controller remembers it.
    reloaded = RecoveryGuard(store, 3, 600, 5, 60, clock=clock)
    assert reloaded.state == FAILED and not reloaded.check().allowed
    assert reloaded.reset() is True and reloaded.state == OK and reloaded.check().allowed


def test_guard_window_slides(tmp_path):
    clock = Clock()
    guard = RecoveryGuard(Store(tmp_path / "s.db"), 2, 100, 5, 60, clock=clock)
    guard.started()
    clock.now += 60
    guard.started()
    clock.now += 50  # the first attempt is now outside the window
    assert guard.check().allowed


def test_guard_backs_off_exponentially_after_failures(tmp_path):
    clock = Clock()
    guard = RecoveryGuard(Store(tmp_path / "s.db"), 100, 600, 5, 30, clock=clock)
    delays = []
    for _ in range(5):
        guard.started()
        delays.append(guard.failed())
        assert guard.state == BACKOFF and not guard.check().allowed
        clock.now += delays[-1]
        assert guard.check().allowed
    assert delays == [5, 10, 20, 30, 30]
    guard.succeeded()
    guard.started()
    assert guard.failed() == 5
    assert guard.as_json()["consecutive_failures"] == 1


# ------------------------------------------------------------------ clock steps
# A gallery PC with a flat clock battery boots a year in the past; NTP (when
# there is a network) steps it forward again. The guard measures its window
# and back-off on the monotonic clock within a run and keeps only wall times
# on disk, read back with caps, so neither step disturbs it for longer than
# its own limits.

YEAR = 365 * 86400.0


class Clocks:
    """A steady monotonic clock and a wall clock that can be stepped on its own."""

    def __init__(self, mono: float = 5_000.0, wall: float = 1_750_000_000.0):
        self.mono_now, self.wall_now = mono, wall

    def mono(self) -> float:
        return self.mono_now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move together."""
        self.mono_now += seconds
        self.wall_now += seconds


def make_guard(
    store: Store,
    clocks: Clocks,
    max_recoveries: int = 3,
    window: float = 600,
    backoff_initial: float = 5,
    backoff_max: float = 60,
) -> RecoveryGuard:
    return RecoveryGuard(
        store,
        max_recoveries,
        window,
        backoff_initial,
        backoff_max,
        clock=clocks.mono,
        wallclock=clocks.wall,
    )


def fail_until_backoff_max(guard: RecoveryGuard) -> float:
    delay = 0.0
    while delay < guard.backoff_max:
        guard.started()
        delay = guard.failed()
    return delay


def test_a_clock_stepped_back_between_runs_keeps_no_attempt_forever(tmp_path):
    store = Store(tmp_path / "s.db")
    first = Clocks()
    guard = make_guard(store, first)
    for _ in range(3):  # at the limit: one more check would trip the guard
        guard.started()
        guard.succeeded()
        first.advance(10)
    # The controller restarts on a PC whose clock went back a year (and whose
    # monotonic clock started again from a small number after the reboot).
    second = Clocks(mono=30.0, wall=first.wall_now - YEAR)
    reloaded = make_guard(store, second)
    # Attempts "in the future" count as just made: still within the window now...
    assert reloaded.as_json()["recent_recoveries"] == 3
    # ...but they leave it one window later, not a year later.
    second.advance(600 + 1)
    assert reloaded.as_json()["recent_recoveries"] == 0
    assert reloaded.check().allowed and reloaded.state == OK


def test_a_clock_stepped_back_between_runs_backs_off_no_longer_than_backoff_max(tmp_path):
    store = Store(tmp_path / "s.db")
    first = Clocks()
    guard = make_guard(store, first, max_recoveries=100)
    assert fail_until_backoff_max(guard) == 60
    second = Clocks(mono=30.0, wall=first.wall_now - YEAR)
    reloaded = make_guard(store, second, max_recoveries=100)
    assert reloaded.state == BACKOFF, "a back-off in progress survives the restart"
    assert 0 < reloaded.retry_in() <= 60
    assert reloaded.as_json()["retry_in"] <= 60
    second.advance(60)
    assert reloaded.check().allowed and reloaded.retry_in() is None


def test_a_clock_stepped_forward_between_runs_expires_what_it_passed(tmp_path):
    store = Store(tmp_path / "s.db")
    first = Clocks()
    guard = make_guard(store, first, max_recoveries=100)
    fail_until_backoff_max(guard)
    reloaded = make_guard(store, Clocks(mono=30.0, wall=first.wall_now + YEAR), max_recoveries=100)
    assert reloaded.as_json()["recent_recoveries"] == 0
    assert reloaded.retry_in() is None and reloaded.check().allowed
    # The count of consecutive failures is not a time: the next back-off still grows.
    assert reloaded.failed() == 60


def test_a_wall_clock_step_within_a_run_changes_neither_window_nor_backoff():
    clocks = Clocks()
    guard = make_guard(FlagDict(), clocks, max_recoveries=2, window=100)
    guard.started()
    assert guard.failed() == 5
    for step in (-YEAR, +2 * YEAR, -YEAR + 3600):
        clocks.wall_now += step
        assert guard.state == BACKOFF and guard.retry_in() == 5
        assert guard.as_json()["recent_recoveries"] == 1
    clocks.advance(5)
    assert guard.check().allowed
    guard.started()
    guard.succeeded()
    clocks.advance(90)  # the first attempt is 95 s old: inside the window of 100 s
    clocks.wall_now -= YEAR
    verdict = guard.check()
    assert not verdict.allowed and verdict.newly_failed, "two attempts within the window"


def test_a_jump_forward_within_a_run_keeps_the_backoff_in_progress():
    clocks = Clocks()
    guard = make_guard(FlagDict(), clocks, max_recoveries=100)
    assert fail_until_backoff_max(guard) == 60
    clocks.wall_now += YEAR
    clocks.mono_now += 1
    assert guard.state == BACKOFF and not guard.check().allowed
    assert guard.retry_in() == 59


def test_times_saved_after_a_step_are_on_the_new_wall_timeline(tmp_path):
    store = Store(tmp_path / "s.db")
    clocks = Clocks()
    guard = make_guard(store, clocks, max_recoveries=100)
    clocks.wall_now -= YEAR  # stepped back within the run...
    guard.started()
    guard.failed()  # ...then saved
    saved = store.get("guard")
    assert saved["attempts"] == [clocks.wall_now]
    assert saved["retry_at"] == clocks.wall_now + 5
    # Read back by the next run on the same (stepped) clock: nothing is lost or stretched.
    reloaded = make_guard(store, Clocks(mono=10.0, wall=clocks.wall_now + 2))
    assert reloaded.retry_in() == 3 and reloaded.as_json()["recent_recoveries"] == 1


def test_a_persisted_backoff_is_never_longer_than_the_delay_that_set_it(tmp_path):
    store = Store(tmp_path / "s.db")
    clocks = Clocks()
    store.put(
        "guard",
        {
            "attempts": [clocks.wall_now + YEAR],
            "failures": 1,
            "retry_at": clocks.wall_now + YEAR,
            "failed_reason": None,
        },
    )
    guard = make_guard(store, clocks)
    assert guard.retry_in() == 5  # one failure: backoff_initial, not a year
    assert guard.as_json()["recent_recoveries"] == 1


class FlagDict(dict):
    """A store for the guard alone, in memory."""

    def put(self, key, value):
        self[key] = value


# ------------------------------------------------------------------ bounded growth
# A guest script that repeats a refused request in a loop must not write one
# fsync'ed history row per request, and a pruned history must give its space back.

REFUSAL = "automatic revert is disabled (maintenance)"


def test_repeats_of_one_cause_share_a_row_per_interval(tmp_path):
    store = Store(tmp_path / "s.db")
    t = 1_750_000_000.0
    for i in range(50):
        store.record_coalesced(
            "vm",
            "guest_request",
            "revert",
            f"crash {i}",
            "refused",
            error=REFUSAL,
            interval=60,
            now=t + i,
        )
    [row] = store.events()
    assert row.count == 50 and row.reason == "crash 0" and row.time == t
    assert row.as_json()["count"] == 50
    # Another cause (trigger, error, vm, action, outcome) is another row...
    store.record_coalesced(
        "vm", "idle_reset", "revert", "idle", "refused", error=REFUSAL, interval=60, now=t + 50
    )
    store.record_coalesced(
        "vm",
        "guest_request",
        "revert",
        "x",
        "refused",
        error="the recovery guard tripped",
        interval=60,
        now=t + 51,
    )
    store.record_coalesced("vm", "guest_request", "revert", "x", "refused", interval=60, now=t + 52)
    store.record_coalesced("vm", "guest_request", "revert", "x", "refused", interval=60, now=t + 53)
    assert [e.count for e in store.events()] == [2, 1, 1, 50]
    # ...and so is the same cause once its interval is over.
    store.record_coalesced(
        "vm", "guest_request", "revert", "later", "refused", error=REFUSAL, interval=60, now=t + 60
    )
    assert [(e.reason, e.count) for e in store.events(limit=1)] == [("later", 1)]
    # A plain record is never coalesced.
    store.record("vm", "api", "stop", "staff", SUCCEEDED)
    store.record("vm", "api", "stop", "staff", SUCCEEDED)
    assert [e.count for e in store.events(limit=2)] == [1, 1]


def test_a_row_dated_in_the_future_collects_no_repeats(tmp_path):
    """The clock went back: repeats start a row of their own instead of joining one
    that stays 'within the interval' for as long as the step."""
    store = Store(tmp_path / "s.db")
    t = 1_750_000_000.0
    store.record_coalesced(
        "vm",
        "guest_request",
        "revert",
        "a",
        "refused",
        error=REFUSAL,
        interval=60,
        now=t + 365 * 86400,
    )
    store.record_coalesced(
        "vm", "guest_request", "revert", "b", "refused", error=REFUSAL, interval=60, now=t
    )
    store.record_coalesced(
        "vm", "guest_request", "revert", "c", "refused", error=REFUSAL, interval=60, now=t + 1
    )
    assert [(e.reason, e.count) for e in store.events()] == [("b", 2), ("a", 1)]


def test_a_repeat_is_not_worth_an_fsync_but_the_first_row_is(tmp_path):
    store = Store(tmp_path / "s.db")
    calls: list[str] = []
    store._db.set_trace_callback(calls.append)
    store.record_coalesced("vm", "guest_request", "revert", "a", "refused", error=REFUSAL)
    first, calls[:] = list(calls), []
    store.record_coalesced("vm", "guest_request", "revert", "b", "refused", error=REFUSAL)
    repeat = list(calls)
    assert sum(c.startswith("INSERT") for c in first) == 1
    assert not any("synchronous" in c.lower() for c in first), first
    assert not any(c.startswith("INSERT") for c in repeat), repeat
    assert any("synchronous=NORMAL" in c for c in repeat), repeat
    # Everything else is back to a full sync once the repeat is written.
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_state_file_from_before_the_count_column_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE flags (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
            vm TEXT NOT NULL, trigger TEXT NOT NULL, action TEXT NOT NULL,
            reason TEXT NOT NULL, outcome TEXT NOT NULL, duration REAL, error TEXT);
        INSERT INTO events (time, vm, trigger, action, reason, outcome)
            VALUES (1.0, 'vm', 'api', 'stop', 'old row', 'succeeded');
        INSERT INTO flags VALUES ('manual_stop', 'true');
    """)
    old.close()
    store = Store(path)
    [row] = store.events()
    assert row.reason == "old row" and row.count == 1 and row.as_json()["count"] == 1
    assert store.get("manual_stop") is True
    store.record_coalesced("vm", "guest_request", "revert", "a", "refused", error=REFUSAL)
    store.record_coalesced("vm", "guest_request", "revert", "a", "refused", error=REFUSAL)
    assert store.events(limit=1)[0].count == 2
    store.close()
    assert Store(path).events(limit=1)[0].count == 2  # opening again migrates nothing twice


def test_state_files_use_incremental_auto_vacuum_new_or_old(tmp_path):
    fresh = Store(tmp_path / "new.db")
    assert fresh._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE flags (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO flags VALUES ('auto_revert_enabled', 'false')")
    old.commit()
    assert old.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    old.close()
    store = Store(path)
    assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert store.get("auto_revert_enabled") is False
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def on_disk(path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_a_pruned_state_file_shrinks_on_disk(tmp_path):
    path = tmp_path / "s.db"
    store = Store(path, max_age_days=1, max_rows=100)
    now = 1_750_000_000.0
    reason = "a guest that says why at some length " * 10
    with store._lock:  # quickly: one transaction for the filling
        store._db.execute("BEGIN")
        store._db.executemany(
            "INSERT INTO events (time, vm, trigger, action, reason, outcome) "
            "VALUES (?, 'vm', 'guest_request', 'revert', ?, 'refused')",
            [(now - 2 * 86400 + i, reason) for i in range(20000)],
        )
        store._db.execute("COMMIT")
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = on_disk(path)
    assert full > 5_000_000
    assert store.prune(now=now) == 20000
    assert on_disk(path) < full / 10, (on_disk(path), full)
    store.record("vm", "api", "stop", "still works", SUCCEEDED)
    assert store.events(limit=1)[0].reason == "still works"


class FailingConnection:
    """A real connection on which vacuuming fails, as on a full disk."""

    def __init__(self, real: sqlite3.Connection):
        self._real = real

    def _check(self, sql: str) -> None:
        if sql.strip() == "VACUUM" or "incremental_vacuum" in sql:
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql, *args):
        self._check(sql)
        return self._real.execute(sql, *args)

    def executescript(self, sql):
        self._check(sql)
        return self._real.executescript(sql)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_compaction_is_best_effort(tmp_path, monkeypatch, caplog):
    """Giving space back must never cost the history or the controller's start."""
    old = tmp_path / "old.db"
    legacy = sqlite3.connect(old)
    legacy.execute("CREATE TABLE flags (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    legacy.commit()
    legacy.close()
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: FailingConnection(connect(*a, **kw)))
    store = Store(old, max_rows=1)  # the one-time conversion fails: it still opens
    assert "could not convert" in caplog.text
    store.record("vm", "api", "stop", "a", SUCCEEDED)
    store.record("vm", "api", "stop", "b", SUCCEEDED)
    assert store.prune() == 1  # and pruning deletes even if it cannot compact
    assert "could not compact" in caplog.text
    assert [e.reason for e in store.events()] == ["b"]


def test_a_state_file_that_can_be_neither_written_nor_read_starts_from_an_empty_state(tmp_path):
    """README, 'A state file that refuses writes': the controller runs on what it holds, and
    when the file cannot even be read, that is nothing: an empty history, default flags."""
    blocker = tmp_path / "a-file"
    blocker.write_text("its parent is a file: no state file can be made under it")
    store = Store(blocker / "state.db")
    assert store.unwritable is not None and "nor read" in store.unwritable, store.unwritable
    assert store.events() == [] and store.get("auto_revert_enabled") is None


OLD_SCHEMA = """
    CREATE TABLE flags (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL,
        vm TEXT NOT NULL, trigger TEXT NOT NULL, action TEXT NOT NULL,
        reason TEXT NOT NULL, outcome TEXT NOT NULL, duration REAL, error TEXT);
    INSERT INTO flags VALUES ('manual_stop', 'true');
"""


def test_an_old_state_file_on_a_read_only_disk_starts_empty_and_says_so(tmp_path):
    """A file from before the count column cannot be converted without writing: the
    controller runs from an empty state, and what it reports must say so (not merely
    that the file is not written)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"cannot mount a tmpfs for the test (needs root): {proc.stderr}"
    try:
        old = sqlite3.connect(mount / "state.db")
        old.executescript(OLD_SCHEMA)
        old.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        store = Store(mount / "state.db")
        assert store.unwritable is not None
        assert "older version" in store.unwritable and "empty state" in store.unwritable, (
            store.unwritable
        )
        assert store.events() == [] and store.get("manual_stop") is None
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_saved_back_off_without_a_failure_holds_nothing(tmp_path):
    """A back-off lasts at most the delay its failures set: a state file that has a
    retry time but no failure (edited by hand, or from a bug) holds no recovery back."""
    clocks = Clocks()
    store = FlagDict(guard={"attempts": [], "failures": 0, "retry_at": clocks.wall() + 3600})
    guard = make_guard(store, clocks)
    assert guard.state == OK and guard.retry_in() is None and guard.check().allowed
