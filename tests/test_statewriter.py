"""The state writer: flags answer from memory, writes reach the disk in order, a disk
that refuses them costs nothing but the writes (retried, reported, never raised).

The failures here come from a real SQLite on a real file: a database locked by
another connection (past the busy timeout), and a file whose directory was
made read-only. Full and read-only filesystems under a real controller and a
real VM are in test_watchdog_faults.py.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest
from libvirt_env import wait_until

from vmcontroller.statewriter import StateWriter
from vmcontroller.store import Store, StoreError
from vmcontroller.vocab import SUCCEEDED


@pytest.fixture
def writer(tmp_path):
    made: list[StateWriter] = []

    def make(**kwargs) -> StateWriter:
        store = Store(tmp_path / "state.db")
        store._db.execute("PRAGMA busy_timeout = 50")  # keep the locked case quick
        w = StateWriter(store, retry_initial=0.05, retry_max=0.2, **kwargs)
        w.start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close(1)


def test_writes_reach_the_disk_in_order_and_flags_answer_from_memory(writer, tmp_path):
    w = writer()
    w.put("manual_stop", True)
    first = w.record("art", "api", "stop", "staff", SUCCEEDED, 0.1)
    event_id = w.begin("art", "api", "revert", "staff")
    w.finish(event_id, SUCCEEDED, 0.5)
    assert w.get("manual_stop") is True
    assert w.flush(5)
    on_disk = Store(tmp_path / "state.db")
    assert on_disk.get("manual_stop") is True
    assert [(e.id, e.action, e.outcome) for e in on_disk.events()] == [
        (event_id, "revert", SUCCEEDED),
        (first, "stop", SUCCEEDED),
    ]
    assert w.problem is None and w.pending == 0


def test_a_locked_database_delays_writes_without_raising_and_loses_none(writer, tmp_path, caplog):
    w = writer()
    w.put("auto_revert_enabled", True)
    assert w.flush(5)
    other = sqlite3.connect(str(tmp_path / "state.db"), isolation_level=None, timeout=0.05)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the lock
    with caplog.at_level(logging.ERROR, logger="vmcontroller.statewriter"):
        for n in range(5):
            w.put("auto_revert_enabled", n % 2 == 0)  # returns at once every time
            w.record("art", "guest_request", "revert", f"try {n}", "refused")
        assert w.get("auto_revert_enabled") is True
        wait_until(lambda: w.problem is not None, 10, message="the failure to be reported")
        assert "locked" in w.problem
        assert w.flush(0.2) is False, "staff are not kept waiting for a refusing disk"
        wait_until(lambda: len(caplog.records) >= 1, 5)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, "logged once per cause, not once per retry"
    other.execute("ROLLBACK")
    other.close()
    wait_until(lambda: w.pending == 0, 10, message="the queued writes to go through")
    assert w.problem is None
    on_disk = Store(tmp_path / "state.db")
    assert on_disk.get("auto_revert_enabled") is True
    assert [e.reason for e in on_disk.events()] == [f"try {n}" for n in reversed(range(5))]


def test_too_many_refused_writes_drop_the_oldest_history_never_a_flag(writer, tmp_path):
    w = writer(max_queued=10)
    other = sqlite3.connect(str(tmp_path / "state.db"), isolation_level=None, timeout=0.05)
    other.execute("BEGIN EXCLUSIVE")
    for n in range(30):
        w.record("art", "guest_request", "revert", f"try {n}", "refused")
    w.put("manual_stop", True)
    assert w.pending <= 11
    other.execute("ROLLBACK")
    other.close()
    wait_until(lambda: w.pending == 0, 10, message="the queue to drain")
    on_disk = Store(tmp_path / "state.db")
    assert on_disk.get("manual_stop") is True
    assert "try 29" in [e.reason for e in on_disk.events()]


def test_many_threads_queue_without_waiting_for_the_disk(writer, tmp_path):
    w = writer()

    def hammer(k: int) -> None:
        for n in range(50):
            w.put(f"flag{k}", n)
            w.record("art", "api", "x", f"{k}-{n}", SUCCEEDED)

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.flush(30)
    on_disk = Store(tmp_path / "state.db")
    assert [on_disk.get(f"flag{k}") for k in range(4)] == [49] * 4
    assert len(on_disk.events(limit=1000)) == 200
    ids = [e.id for e in on_disk.events(limit=1000)]
    assert len(set(ids)) == 200


# ---------------------------------------------------------------- a damaged state file


def damaged(path, table: str) -> Store:
    """A state file with one table's root page overwritten, as a failing disk leaves it;
    the rest of the file (its header, the schema, the other table) reads fine."""
    store = Store(path)
    for n in range(300):
        store.record("art", "api", "stop", f"row {n} " + "x" * 100, SUCCEEDED)
    store.put("manual_stop", True)
    store.close()
    db = sqlite3.connect(path)
    [root] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    [page_size] = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)
    return Store(path)


def test_an_unreadable_history_is_reported_and_the_flags_still_answer(tmp_path):
    """The watchdog starts on a file whose history cannot be read: status says why, and
    GET /events gets a StoreError (a 503 with the reason) instead of a traceback."""
    path = tmp_path / "state.db"
    w = StateWriter(damaged(path, "events"))
    assert w.problem is not None
    assert "cannot read the state file: database disk image is malformed" in w.problem
    assert w.get("manual_stop") is True
    with pytest.raises(StoreError) as caught:
        w.events(wait=0)
    assert str(caught.value) == (
        f"cannot read the history from {str(path)!r}: database disk image is malformed"
    )
    w.close(1)


def test_an_unreadable_flag_reads_as_its_default_and_is_reported(tmp_path):
    w = StateWriter(damaged(tmp_path / "state.db", "flags"))
    assert w.get("manual_stop", "default") == "default"
    assert w.problem is not None and "malformed" in w.problem
    w.close(1)


def test_a_write_that_fails_for_a_bug_is_logged_and_skipped_and_later_writes_go_on(
    writer, tmp_path, caplog
):
    w = writer()
    with caplog.at_level(logging.ERROR, logger="vmcontroller.statewriter"):
        w.put("bad", object())  # cannot be stored as JSON: a bug, not a refusing disk
        w.record("art", "api", "stop", "after the bad write", SUCCEEDED)
        assert w.flush(5)
    assert "a write to the state file failed unexpectedly; skipped" in caplog.text
    assert "is not JSON serializable" in caplog.text
    assert w.problem is None and w.pending == 0
    on_disk = Store(tmp_path / "state.db")
    assert [e.reason for e in on_disk.events()] == ["after the bad write"]
    assert on_disk.get("bad", "never written") == "never written"


def test_an_unreadable_health_record_or_history_range_raises_store_error_for_the_report(
    tmp_path,
):
    """A report over a damaged file gets a StoreError naming the file (its 503), not an
    sqlite3 traceback."""
    path = tmp_path / "health.db"
    w = StateWriter(damaged(path, "health_time"))  # an empty table is read through its index
    with pytest.raises(StoreError) as caught:
        w.health(0.0, 1e12, wait=0)
    assert str(caught.value) == (
        f"cannot read the health record from {str(path)!r}: database disk image is malformed"
    )
    w.close(1)
    path = tmp_path / "events.db"
    w = StateWriter(damaged(path, "events"))
    with pytest.raises(StoreError) as caught:
        w.actions_between(0.0, 1e12, ["revert"], wait=0)
    assert str(caught.value) == (
        f"cannot read the history from {str(path)!r}: database disk image is malformed"
    )
    w.close(1)


def test_an_unreadable_outbox_at_start_reads_as_empty_and_is_reported(tmp_path):
    """Notifications that cannot be read back are lost, but the watchdog starts and says so."""
    w = StateWriter(damaged(tmp_path / "state.db", "outbox"))
    assert w.outbox() == []
    assert w.problem is not None and "malformed" in w.problem
    assert w.get("manual_stop") is True, "the other tables still answer"
    w.close(1)
