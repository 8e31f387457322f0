"""The state file and the restart-loop guard, on their own."""
from __future__ import annotations

import sqlite3

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
    assert set(as_json) == {"id", "time", "vm", "trigger", "action", "reason", "outcome",
                            "duration", "error"}
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
    guard = RecoveryGuard(store, max_recoveries=3, window=600, backoff_initial=5,
                          backoff_max=60, clock=clock)
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
    clock.now += 50   # the first attempt is now outside the window
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
