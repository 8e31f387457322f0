"""The monitor's state machine, driven through the in-memory FakeRunner.

Timings are short (timeouts of a few tenths of a second) and every wait is a
condition with a deadline; the same behaviours are proven against real
libvirt in test_integration.py.
"""
from __future__ import annotations

import logging
import threading
import time

import pytest

from fake_virsh import FakeRunner
from libvirt_env import wait_until
from vmcontroller.config import build_config
from vmcontroller.store import Store
from vmcontroller.monitor import Monitor, NotInitialised
from vmcontroller.virsh import VirshError
from vmcontroller.vm import Domain

TIMEOUT = 0.4
GRACE = 0.1


@pytest.fixture
def make_monitor():
    made: list[Monitor] = []

    def make(runner: FakeRunner | None = None, store: Store | None = None,
             **overrides) -> tuple[Monitor, FakeRunner]:
        runner = runner or FakeRunner()
        config = build_config({"vm_name": runner.domain, "heartbeat_timeout": TIMEOUT,
                               "vm_startup_heartbeat_delay": GRACE,
                               "heartbeat_check_interval": 0.05, **overrides})
        monitor = Monitor(Domain(runner, runner.domain, config.snapshot_name), config,
                          store or Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        monitor.on_events_connection(True)
        monitor.start()
        assert monitor.wait_initialised(5)
        made.append(monitor)
        return monitor, runner

    yield make
    for monitor in made:
        monitor.stop()


def keep_alive(monitor: Monitor, seconds: float, every: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        monitor.heartbeat()
        time.sleep(every)


def test_startup_reverts_to_the_snapshot(make_monitor):
    monitor, runner = make_monitor()
    assert runner.count("snapshot-revert") == 1
    status = monitor.heartbeat_status()
    assert status["is_healthy"] is False and status["last_heartbeat"] is None
    assert status["seconds_since_last"] is None


def test_startup_without_snapshot_boots_a_stopped_vm(make_monitor):
    monitor, runner = make_monitor(FakeRunner(state="shut off", snapshots=()))
    assert runner.count("start") == 1 and runner.state == "running"


def test_startup_in_maintenance_leaves_the_vm_alone(make_monitor):
    monitor, runner = make_monitor(FakeRunner(state="shut off"), auto_revert_enabled=False)
    time.sleep(TIMEOUT * 2)
    assert runner.count("snapshot-revert") == 0 and runner.count("start") == 0


def test_requests_before_initialisation_are_refused():
    runner = FakeRunner()
    config = build_config({"vm_name": "art"})
    monitor = Monitor(Domain(runner, "art", "ready"), config, Store(":memory:"))
    with pytest.raises(NotInitialised):
        monitor.heartbeat()
    with pytest.raises(NotInitialised):
        monitor.status()


def test_grace_period_then_monitoring(make_monitor):
    monitor, runner = make_monitor()
    wait_until(lambda: monitor.heartbeat_status()["enabled"], 2, message="monitoring enabled")


def test_heartbeats_keep_the_vm_alone(make_monitor):
    monitor, runner = make_monitor()
    keep_alive(monitor, TIMEOUT * 4)
    assert runner.count("snapshot-revert") == 1
    assert monitor.heartbeat_status()["is_healthy"] is True


def test_heartbeat_timeout_reverts(make_monitor):
    monitor, runner = make_monitor()
    monitor.heartbeat()
    last = time.monotonic()
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.005, "a revert on timeout")
    waited = time.monotonic() - last
    # Not before the deadline (grace + timeout bound it from below).
    assert waited >= TIMEOUT * 0.9
    # After the restart the guest must prove itself again.
    assert monitor.heartbeat_status()["is_healthy"] is False
    monitor.heartbeat()
    assert monitor.heartbeat_status()["is_healthy"] is True


def test_a_guest_that_never_sends_a_heartbeat_is_a_failure(make_monitor):
    monitor, runner = make_monitor()
    wait_until(lambda: runner.count("snapshot-revert") >= 2, 5, message="revert without heartbeats")


def test_maintenance_logs_but_does_not_revert(make_monitor, caplog):
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        time.sleep(GRACE + TIMEOUT * 3)
        runner.external("shut off", "Stopped", "Destroyed")
        time.sleep(0.3)
    assert runner.count("snapshot-revert") == 1
    assert runner.state == "shut off"
    timeouts = [r for r in caplog.records if "no heartbeat" in r.getMessage()]
    assert len(timeouts) == 1, "a timeout in maintenance is logged once, not on every check"
    assert any("maintenance" in r.getMessage() for r in caplog.records)


def test_enabling_after_maintenance_gives_the_guest_a_full_timeout(make_monitor):
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    time.sleep(GRACE + TIMEOUT * 2)
    monitor.set_auto_revert(True)
    enabled_at = time.monotonic()
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.005, "revert after enabling")
    assert time.monotonic() - enabled_at >= TIMEOUT * 0.9


def test_external_destroy_is_recovered(make_monitor):
    monitor, runner = make_monitor()
    keep_alive(monitor, 0.2)
    runner.external("shut off", "Stopped", "Destroyed")
    began = time.monotonic()
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.002, "recovery after destroy")
    assert time.monotonic() - began < TIMEOUT, "detected from the event, not the heartbeat timeout"
    assert runner.state == "running"


def test_stop_through_the_api_stays_stopped(make_monitor):
    monitor, runner = make_monitor()
    assert monitor.stop_vm() is True
    time.sleep(GRACE + TIMEOUT * 3)
    assert runner.state == "shut off" and runner.count("snapshot-revert") == 1
    assert monitor.heartbeat_status()["enabled"] is False
    assert monitor.stop_vm() is False  # stopping a stopped VM is no error
    monitor.start_vm()
    assert runner.state == "running" and runner.count("snapshot-revert") == 2
    wait_until(lambda: runner.count("snapshot-revert") == 3, 5, message="monitoring resumed")


def test_paused_longer_than_the_timeout_is_recovered(make_monitor):
    monitor, runner = make_monitor()
    runner.external("paused", "Suspended", "Paused")
    began = time.monotonic()
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.005, "recovery of a paused VM")
    assert time.monotonic() - began >= TIMEOUT * 0.9


def test_a_brief_pause_is_no_failure(make_monitor):
    monitor, runner = make_monitor()
    runner.external("paused", "Suspended", "Paused")
    runner.external("running", "Resumed", "Unpaused")
    keep_alive(monitor, TIMEOUT * 3)
    assert runner.count("snapshot-revert") == 1


def test_concurrent_restarts_join_the_one_under_way(make_monitor):
    monitor, runner = make_monitor(FakeRunner(revert_seconds=0.3))
    errors: list[BaseException] = []

    def restart():
        try:
            monitor.restart_vm()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=restart) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert runner.count("snapshot-revert") - 1 <= 2


def test_failed_recovery_backs_off_instead_of_looping(make_monitor):
    monitor, runner = make_monitor()
    runner.snapshots.clear()
    runner.external("shut off", "Stopped", "Destroyed")
    time.sleep(TIMEOUT * 3)
    attempts = runner.count("snapshot-revert") - 1
    assert 1 <= attempts <= 4, f"{attempts} revert attempts in {TIMEOUT * 3:.1f} s"


def test_restart_without_snapshot_is_refused_clearly(make_monitor):
    from vmcontroller.vm import SnapshotMissing
    monitor, runner = make_monitor(FakeRunner(snapshots=()))
    with pytest.raises(SnapshotMissing, match="does not exist"):
        monitor.restart_vm()


def test_libvirt_failure_during_restart_is_raised_with_virsh_message(make_monitor):
    monitor, runner = make_monitor()
    runner.fail("snapshot-revert", VirshError("internal error: qemu unexpectedly closed"))
    with pytest.raises(VirshError, match="qemu unexpectedly closed"):
        monitor.restart_vm()


# ------------------------------------------------------------------ issue 3: trust over months

def reverts(runner: FakeRunner) -> int:
    """Recovery attempts: reverts to 'ready' (a missing one is also tried under its spare's name)."""
    return sum(1 for c in runner.calls if c[0] == "snapshot-revert" and c[2] == "ready")


def test_guard_trips_after_max_recoveries_and_staff_clear_it(make_monitor, caplog):
    monitor, runner = make_monitor(max_recoveries=3, recovery_window=600)
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        wait_until(lambda: monitor.status()["recovery"]["guard"]["state"] == "failed", 10,
                   message="the guard to trip")
        time.sleep(TIMEOUT * 3)
    assert reverts(runner) == 1 + 3, "startup + max_recoveries, then nothing"
    status = monitor.status()
    assert status["recovery"]["count"] == 3
    assert status["recovery"]["last_outcome"] == "guard_tripped"
    assert "left as it is" in status["recovery"]["guard"]["detail"]
    assert any("recovery guard tripped" in r.getMessage() for r in caplog.records)
    refused = monitor.store.events(limit=1)[0]
    assert (refused.outcome, refused.trigger) == ("refused", "heartbeat_timeout")
    monitor.restart_vm()
    assert monitor.status()["recovery"]["guard"]["state"] == "ok"
    wait_until(lambda: reverts(runner) == 1 + 3 + 1 + 1, 10, message="recovery resumed")


def test_failed_recoveries_back_off_exponentially(make_monitor):
    monitor, runner = make_monitor(recovery_backoff_initial=0.2, recovery_backoff_max=0.8,
                                   max_recoveries=100)
    runner.snapshots.clear()
    runner.external("shut off", "Stopped", "Destroyed")
    wait_until(lambda: reverts(runner) >= 1 + 4, 10, message="four attempts")
    times = [e.time for e in reversed(monitor.store.events(limit=100))
             if e.action == "revert" and e.outcome == "failed"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38 and gaps[2] >= 0.78, gaps
    status = monitor.status()["recovery"]
    assert status["last_outcome"] == "failed" and status["guard"]["consecutive_failures"] >= 3
    assert "does not exist" in monitor.store.events(limit=1)[0].error


def test_maintenance_and_manual_stop_survive_a_controller_restart(make_monitor, tmp_path):
    store_path = tmp_path / "state.db"
    first, runner = make_monitor(store=Store(store_path))
    first.set_auto_revert(False)
    first.stop()
    second, _ = make_monitor(runner, store=Store(store_path), auto_revert_enabled=True)
    assert second.status()["auto_revert_enabled"] is False, "the config only seeds the first start"
    assert reverts(runner) == 1, "no revert at start in maintenance"
    second.set_auto_revert(True)
    second.stop_vm()
    second.stop()
    third, _ = make_monitor(runner, store=Store(store_path))
    time.sleep(TIMEOUT * 2)
    assert runner.state == "shut off" and reverts(runner) == 1
    assert third.status()["stopped_by_staff"] is True
    actions = [(e.trigger, e.action) for e in third.store.events()]
    assert ("api", "stop") in actions and ("api", "disable_auto_revert") in actions


def test_guest_request_is_queued_once_and_recorded(make_monitor):
    from vmcontroller.vocab import GUEST_REQUEST, IDLE_RESET
    monitor, runner = make_monitor(vm_startup_heartbeat_delay=5)
    assert monitor.request_revert(GUEST_REQUEST, "player crashed")["queued"] is False, \
        "in the grace period after the startup revert"
    monitor.stop_vm()
    monitor.start_vm()
    # grace period again; wait until it is over, keeping the guest alive
    monitor.heartbeat()
    with monitor._cond:
        monitor._w.grace_until = monitor._clock()
    before = reverts(runner)
    answer = monitor.request_revert(GUEST_REQUEST, "player crashed (severity high)")
    assert answer["queued"] is True
    wait_until(lambda: reverts(runner) == before + 1, 5, message="the queued revert")
    event = monitor.store.events(triggers=[GUEST_REQUEST])[0]
    assert event.reason == "player crashed (severity high)" and event.outcome == "succeeded"
    assert monitor.request_revert(IDLE_RESET, "idle")["queued"] is False


def test_guest_requests_are_refused_in_maintenance_and_after_a_stop(make_monitor):
    from vmcontroller.monitor import Conflict
    from vmcontroller.vocab import GUEST_REQUEST
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    with pytest.raises(Conflict, match="maintenance"):
        monitor.request_revert(GUEST_REQUEST, "x")
    monitor.set_auto_revert(True)
    monitor.stop_vm()
    with pytest.raises(Conflict, match="stopped by staff"):
        monitor.request_revert(GUEST_REQUEST, "x")
    assert [e.outcome for e in monitor.store.events(triggers=[GUEST_REQUEST])] == \
        ["refused", "refused"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_monitor_thread_is_restarted(make_monitor, caplog, monkeypatch):
    monitor, runner = make_monitor()
    original = monitor._step
    calls = []

    def dying_step():
        if not calls:
            calls.append(1)
            raise SystemExit("simulated death")  # not an Exception: escapes the loop's guard
        return original()

    monkeypatch.setattr(monitor, "_step", dying_step)
    wait_until(lambda: not monitor.thread_alive, 5, message="the thread to die")
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        assert monitor.ensure_thread() is False
    assert monitor.thread_alive and monitor.ensure_thread() is True
    assert any("died" in r.getMessage() for r in caplog.records)
    wait_until(lambda: reverts(runner) >= 2, 5, message="the new thread to keep watch")


def test_status_is_unknown_while_libvirt_fails_and_heartbeats_still_count(make_monitor):
    from vmcontroller.virsh import VirshTimeout
    monitor, runner = make_monitor(heartbeat_timeout=5)
    runner.fail("domstate+snapshot-list", VirshTimeout("virsh domstate did not answer within 2 s"))
    monitor.on_events_connection(False)
    wait_until(lambda: monitor.status()["vm_state"] == "unknown", 5, message="unknown state")
    assert "did not answer" in monitor.status()["vm_state_detail"]
    assert monitor.heartbeat()["is_healthy"] is True
    wait_until(lambda: monitor.status()["vm_state"] == "running", 5, message="libvirt back")


def test_post_revert_command_runs_with_the_vm_name(make_monitor, tmp_path):
    out = tmp_path / "hook.txt"
    monitor, runner = make_monitor(post_revert_command=[
        "sh", "-c", f'echo "{{vm_name}} $VMCTL_SNAPSHOT_NAME" >> {out}'])
    wait_until(lambda: out.exists() and out.read_text().strip(), 5, message="the hook after start")
    assert out.read_text().splitlines() == ["art ready"]
    monitor.restart_vm()
    wait_until(lambda: len(out.read_text().splitlines()) == 2, 5, message="the hook after restart")


def test_a_revert_libvirt_refuses_for_good_stops_recovery_until_staff_act(make_monitor):
    """RevertNeedsStaff (vm.py) is not retried with back-off: the guard stops at once with
    the message that says what staff must do; a staff restart or a new reference resumes."""
    from vmcontroller.virsh import SnapshotLacksDefinition
    monitor, runner = make_monitor(recovery_backoff_initial=0.1)
    before = reverts(runner)
    runner.fail("snapshot-revert", SnapshotLacksDefinition(
        "revert requires force: snapshot 'ready' lacks domain 'art' rollback info"))
    wait_until(lambda: monitor.status()["recovery"]["guard"]["state"] == "failed", 5,
               message="recovery to stop")
    guard = monitor.status()["recovery"]["guard"]
    assert "take the snapshot again" in guard["detail"] and "Staff:" in guard["detail"], guard
    failed = monitor.store.events(limit=1, triggers=["heartbeat_timeout"])[0]
    assert failed.outcome == "failed" and "rollback info" in failed.error
    assert monitor.status()["heartbeat"]["enabled"] is True
    from vmcontroller.monitor import Conflict
    with pytest.raises(Conflict, match="guard tripped"):   # guest requests wait for staff too
        monitor.request_revert("guest_request", "x")
    monitor.create_snapshot("ready")   # staff take the reference again
    assert monitor.status()["recovery"]["guard"]["state"] == "ok"
    wait_until(lambda: reverts(runner) == before + 1, 5, message="recovery to resume")


def test_a_forced_revert_is_recorded_with_libvirts_refusal(make_monitor):
    from vmcontroller.virsh import RevertRisky
    monitor, runner = make_monitor(heartbeat_timeout=60)
    runner.fail("snapshot-revert", RevertRisky(
        "revert requires force: Target domain max memory 131072 does not match source 65536"))
    monitor.restart_vm()
    event = monitor.store.events(limit=1)[0]
    assert (event.trigger, event.action, event.outcome) == ("api", "revert", "succeeded")
    assert "does not match source" in event.error and "--force" in event.error, event
    assert any("--force" in call for call in runner.calls if call[0] == "snapshot-revert")


def test_a_guest_repeating_a_refused_request_writes_one_row_and_one_log_line(make_monitor,
                                                                            caplog):
    from vmcontroller.monitor import Conflict
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        for _ in range(50):
            with pytest.raises(Conflict):
                monitor.request_revert("guest_request", "player crashed")
    refused = monitor.store.events(triggers=["guest_request"])
    assert [(e.outcome, e.count) for e in refused] == [("refused", 50)]
    lines = [r for r in caplog.records if "guest request refused" in r.getMessage()]
    assert len(lines) == 1


def test_a_locked_state_file_never_delays_a_heartbeat(make_monitor, tmp_path):
    """Staff switch maintenance while another program holds the state file's lock: the
    switch acts at once, and heartbeats and status answer meanwhile (no disk I/O under
    the lock heartbeats take)."""
    import sqlite3
    path = tmp_path / "state.db"
    monitor, runner = make_monitor(store=Store(path))
    assert monitor.store.flush(5)
    other = sqlite3.connect(str(path), isolation_level=None, timeout=0.1)
    other.execute("BEGIN EXCLUSIVE")
    try:
        staff = threading.Thread(target=monitor.set_auto_revert, args=(False,), daemon=True)
        staff.start()
        answered = []
        beat = threading.Thread(target=lambda: answered.append(
            (monitor.heartbeat(), monitor.status())), daemon=True)
        beat.start()
        beat.join(2)
        assert answered, "a heartbeat waited for the state file"
        staff.join(5)
        assert not staff.is_alive(), "the staff action waits at most briefly for the disk"
        assert monitor.status()["auto_revert_enabled"] is False
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(lambda: Store(path).get("auto_revert_enabled") is False, 15,
               message="the write once the lock is gone")
