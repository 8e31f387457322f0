"""The monitor's state machine, driven through the in-memory FakeRunner.

Timings are short (timeouts of a few tenths of a second) and every wait is a
condition with a deadline; the same behaviours are proven against real
libvirt in test_integration.py.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fake_virsh import FakeRunner
from libvirt_env import wait_until
from waits import decisions_of, enforcement_period, pause_period, stays_false

from vmcontroller.config import Config, build_config
from vmcontroller.errors import NotInitialised
from vmcontroller.monitor import Monitor
from vmcontroller.store import Store
from vmcontroller.virsh import VirshError
from vmcontroller.vm import Domain

TIMEOUT = 0.4
GRACE = 0.1


def config_for(runner: FakeRunner, **overrides) -> Config:
    """The configuration make_monitor gives a monitor: tests derive their waits from it."""
    return build_config(
        {
            "vm_name": runner.domain,
            "heartbeat_timeout": TIMEOUT,
            "vm_startup_heartbeat_delay": GRACE,
            "heartbeat_check_interval": 0.05,
            **overrides,
        }
    )


@pytest.fixture
def make_monitor():
    made: list[Monitor] = []

    def make(
        runner: FakeRunner | None = None, store: Store | None = None, **overrides
    ) -> tuple[Monitor, FakeRunner]:
        runner = runner or FakeRunner()
        config = config_for(runner, **overrides)
        monitor = Monitor(
            Domain(runner, runner.domain, config.snapshot_name), config, store or Store(":memory:")
        )
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


@contextmanager
def beating(
    monitor: Monitor, every: float = 0.05, beat: Callable[[], object] | None = None
) -> Iterator[None]:
    """A guest sending heartbeats in the background while the block runs (``beat``: how
    it sends one, e.g. with a progress value)."""
    stop = threading.Event()
    send = beat or monitor.heartbeat

    def run() -> None:
        while not stop.wait(every):
            send()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_startup_reverts_to_the_snapshot(make_monitor):
    monitor, runner = make_monitor()
    assert runner.count("snapshot-revert") == 1
    status = monitor.heartbeat_status()
    assert status["is_healthy"] is False and status["last_heartbeat"] is None
    assert status["seconds_since_last"] is None


def test_startup_without_snapshot_boots_a_stopped_vm(make_monitor):
    monitor, runner = make_monitor(FakeRunner(state="shut off", snapshots=()))
    assert runner.count("start") == 1 and runner.state == "running"


def test_startup_in_maintenance_leaves_a_stopped_silent_vm_alone(make_monitor):
    monitor, runner = make_monitor(FakeRunner(state="shut off"), auto_revert_enabled=False)
    wait_until(
        lambda: monitor.status()["vm_state"] == "shut off",
        5,
        message="the monitor to see the VM shut off",
    )
    stays_false(
        lambda: runner.count("snapshot-revert") + runner.count("start") > 0,
        enforcement_period(config_for(runner)),
        "maintenance at start-up touched the VM",
    )


def test_requests_before_initialisation_are_refused():
    runner = FakeRunner()
    config = build_config({"vm_name": "art"})
    monitor = Monitor(Domain(runner, "art", "ready"), config, Store(":memory:"))
    with pytest.raises(NotInitialised):
        monitor.heartbeat()
    with pytest.raises(NotInitialised):
        monitor.status()


def test_grace_period_tolerates_silence_longer_than_the_timeout_then_enforces_it(make_monitor):
    grace = TIMEOUT * 5  # by configuration, the silence during the grace outlasts the timeout
    monitor, runner = make_monitor(vm_startup_heartbeat_delay=grace)
    config = config_for(runner, vm_startup_heartbeat_delay=grace)
    assert runner.count("snapshot-revert") == 1, "the start-up revert begins the grace period"
    assert monitor.heartbeat_status()["enabled"] is False, "not enforced during the grace"
    seen_off = 0
    while not monitor.heartbeat_status()["enabled"]:
        assert runner.count("snapshot-revert") == 1, "reverted during the grace period"
        assert monitor.heartbeat_status()["last_heartbeat"] is None, "the guest stays silent"
        seen_off += 1
        assert seen_off < enforcement_period(config) / 0.01, "the grace period never ends"
        time.sleep(0.01)
    # Enforcement is on: the same silence is now a failure, acted on within the timeout.
    wait_until(
        lambda: runner.count("snapshot-revert") == 2,
        enforcement_period(config),
        message="a revert once the timeout is enforced",
    )
    events = monitor.store.events(limit=1)
    assert (events[0].trigger, events[0].action) == ("heartbeat_timeout", "revert")


def test_heartbeats_keep_the_vm_alone_past_grace_and_timeout(make_monitor):
    monitor, runner = make_monitor()
    monitor.heartbeat()
    wait_until(lambda: monitor.heartbeat_status()["enabled"], 5, message="the grace to end")
    keep_alive(monitor, enforcement_period(config_for(runner)))
    assert runner.count("snapshot-revert") == 1
    assert monitor.heartbeat_status()["is_healthy"] is True


def test_heartbeat_timeout_reverts_and_the_guest_must_prove_itself_again(make_monitor):
    # Not before the deadline: test_decide.py proves it on the pure rules, with no clock.
    monitor, runner = make_monitor()
    monitor.heartbeat()
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.005, "a revert on timeout")
    assert monitor.store.events(limit=1)[0].trigger == "heartbeat_timeout"
    # After the restart the guest must prove itself again.
    assert monitor.heartbeat_status()["is_healthy"] is False
    monitor.heartbeat()
    assert monitor.heartbeat_status()["is_healthy"] is True


def test_a_guest_that_never_sends_a_heartbeat_is_a_failure(make_monitor):
    monitor, runner = make_monitor()
    wait_until(lambda: runner.count("snapshot-revert") >= 2, 5, message="revert without heartbeats")


def test_maintenance_logs_one_timeout_and_reverts_neither_silence_nor_destroy(make_monitor, caplog):
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)

    def timeouts() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "no heartbeat" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        wait_until(lambda: timeouts(), 5, message="the timeout to be logged in maintenance")
        runner.external("shut off", "Stopped", "Destroyed")
        wait_until(
            lambda: monitor.status()["vm_state"] == "shut off",
            5,
            message="the monitor to see the destroy",
        )
        stays_false(
            lambda: runner.count("snapshot-revert") > 1 or len(timeouts()) > 1,
            enforcement_period(config_for(runner)),
            "maintenance acted or logged again",
        )
    assert runner.count("snapshot-revert") == 1
    assert runner.state == "shut off"
    assert len(timeouts()) == 1, "a timeout in maintenance is logged once, not on every check"
    assert any("maintenance" in r.getMessage() for r in caplog.records)


def test_enabling_after_maintenance_gives_the_guest_a_full_timeout(make_monitor, caplog):
    # A timeout well above the few check intervals in which an immediate revert would come.
    timeout = 1.5
    monitor, runner = make_monitor(heartbeat_timeout=timeout)
    config = config_for(runner, heartbeat_timeout=timeout)
    monitor.set_auto_revert(False)
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        wait_until(
            lambda: any("no heartbeat" in r.getMessage() for r in caplog.records),
            enforcement_period(config),
            message="the silence to outlast the timeout",
        )
    monitor.set_auto_revert(True)
    # Were the old silence counted, the revert would come within a check interval or two.
    stays_false(
        lambda: runner.count("snapshot-revert") > 1,
        config.heartbeat_check_interval * 10,
        "reverted at once after enabling",
    )
    wait_until(
        lambda: runner.count("snapshot-revert") == 2,
        enforcement_period(config),
        0.005,
        "revert after enabling",
    )


def test_external_destroy_is_recovered_from_the_event_with_trigger_vm_stopped(make_monitor):
    monitor, runner = make_monitor(heartbeat_timeout=60)  # the timeout cannot be the cause
    monitor.heartbeat()
    runner.external("shut off", "Stopped", "Destroyed")
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.002, "recovery after destroy")
    assert runner.state == "running"
    wait_until(
        lambda: monitor.store.events(limit=1)[0].outcome == "succeeded",
        5,
        message="the recovery to be recorded",
    )
    assert monitor.store.events(limit=1)[0].trigger == "vm_stopped"


def test_stop_through_the_api_stays_stopped_past_grace_and_timeout(make_monitor):
    monitor, runner = make_monitor()
    assert monitor.stop_vm() is True
    assert monitor.status()["stopped_by_staff"] is True
    stays_false(
        lambda: runner.state != "shut off" or runner.count("snapshot-revert") > 1,
        enforcement_period(config_for(runner)),
        "a VM stopped by staff was started",
    )
    assert runner.state == "shut off" and runner.count("snapshot-revert") == 1
    assert monitor.heartbeat_status()["enabled"] is False
    assert monitor.stop_vm() is False  # stopping a stopped VM is no error
    monitor.start_vm()
    assert runner.state == "running" and runner.count("snapshot-revert") == 2
    wait_until(lambda: runner.count("snapshot-revert") == 3, 5, message="monitoring resumed")


def test_paused_longer_than_the_timeout_is_recovered_with_trigger_vm_paused(make_monitor):
    monitor, runner = make_monitor()
    with beating(monitor):  # heartbeats keep coming: only the pause can be the cause
        runner.external("paused", "Suspended", "Paused")
        wait_until(
            lambda: runner.count("snapshot-revert") == 2, 5, 0.005, "recovery of a paused VM"
        )
    wait_until(
        lambda: monitor.store.events(limit=1)[0].outcome == "succeeded",
        5,
        message="the recovery to be recorded",
    )
    assert monitor.store.events(limit=1)[0].trigger == "vm_paused"


def test_a_brief_pause_is_no_failure(make_monitor):
    monitor, runner = make_monitor()
    runner.external("paused", "Suspended", "Paused")
    runner.external("running", "Resumed", "Unpaused")
    keep_alive(monitor, pause_period(config_for(runner)))
    assert runner.count("snapshot-revert") == 1


class GatedRunner(FakeRunner):
    """Reverts wait at a gate the test opens: a revert is 'under way' as long as it likes."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def snapshot_revert(self, domain: str, name: str, **kw) -> None:
        self.gate.wait(30)
        super().snapshot_revert(domain, name, **kw)


def test_twenty_concurrent_restarts_make_exactly_one_revert(make_monitor, caplog):
    runner = GatedRunner()
    monitor, _ = make_monitor(runner, heartbeat_timeout=60)
    runner.gate.clear()  # the next revert is held until every restart has arrived
    errors: list[BaseException] = []

    def restart():
        try:
            monitor.restart_vm()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def joined() -> int:
        return sum("joins the restart already under way" in r.getMessage() for r in caplog.records)

    threads = [threading.Thread(target=restart) for _ in range(20)]
    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        for t in threads:
            t.start()
        wait_until(lambda: joined() == 19, 10, message="19 restarts joining the first")
        runner.gate.set()
        for t in threads:
            t.join(10)
    assert not errors and not any(t.is_alive() for t in threads)
    assert runner.count("snapshot-revert") - 1 == 1, "one revert for all twenty"


def test_failed_recovery_backs_off_instead_of_looping(make_monitor):
    monitor, runner = make_monitor(recovery_backoff_initial=5)
    runner.snapshots.clear()
    runner.external("shut off", "Stopped", "Destroyed")
    wait_until(
        lambda: monitor.status()["recovery"]["guard"]["state"] == "backoff",
        5,
        message="the first failed attempt",
    )
    attempts = runner.count("snapshot-revert")
    # A loop would try again within a check interval; the back-off (5 s) is far longer.
    stays_false(
        lambda: runner.count("snapshot-revert") > attempts,
        config_for(runner).heartbeat_check_interval * 20,
        "retried without back-off",
    )


def test_restart_without_snapshot_is_refused_clearly(make_monitor):
    from vmcontroller.errors import SnapshotMissing

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
        wait_until(
            lambda: monitor.status()["recovery"]["guard"]["state"] == "failed",
            10,
            message="the guard to trip",
        )
        assert reverts(runner) == 1 + 3, "startup + max_recoveries"
        stays_false(
            lambda: reverts(runner) > 1 + 3,
            enforcement_period(config_for(runner)),
            "a revert after the guard tripped",
        )
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
    monitor, runner = make_monitor(
        recovery_backoff_initial=0.2, recovery_backoff_max=0.8, max_recoveries=100
    )
    delays: list[float] = []
    failed = monitor.guard.failed

    def recording() -> float:
        delays.append(failed())
        return delays[-1]

    monitor.guard.failed = recording  # the delays the monitor was told to wait
    runner.snapshots.clear()
    runner.external("shut off", "Stopped", "Destroyed")
    wait_until(lambda: len(delays) >= 4, 10, message="four failed attempts")
    assert delays[:4] == [0.2, 0.4, 0.8, 0.8], delays
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
    assert third.status()["vm_state"] == "shut off"
    stays_false(
        lambda: runner.state != "shut off" or reverts(runner) > 1,
        enforcement_period(config_for(runner)),
        "the VM stopped by staff was started",
    )
    assert third.status()["stopped_by_staff"] is True
    actions = [(e.trigger, e.action) for e in third.store.events()]
    assert ("api", "stop") in actions and ("api", "disable_auto_revert") in actions


def test_guest_request_is_queued_once_and_recorded(make_monitor):
    from vmcontroller.vocab import GUEST_REQUEST, IDLE_RESET

    monitor, runner = make_monitor(vm_startup_heartbeat_delay=5)
    assert monitor.request_revert(GUEST_REQUEST, "player crashed")["queued"] is False, (
        "in the grace period after the startup revert"
    )
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
    from vmcontroller.errors import Conflict
    from vmcontroller.vocab import GUEST_REQUEST

    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    with pytest.raises(Conflict, match="maintenance"):
        monitor.request_revert(GUEST_REQUEST, "x")
    monitor.set_auto_revert(True)
    monitor.stop_vm()
    with pytest.raises(Conflict, match="stopped by staff"):
        monitor.request_revert(GUEST_REQUEST, "x")
    assert [e.outcome for e in monitor.store.events(triggers=[GUEST_REQUEST])] == [
        "refused",
        "refused",
    ]


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
    for _ in range(10_000):  # libvirt stays hung until the test says otherwise
        runner.fail(
            "domstate+snapshot-list", VirshTimeout("virsh domstate did not answer within 2 s")
        )
    monitor.on_events_connection(False)
    wait_until(lambda: monitor.status()["vm_state"] == "unknown", 5, message="unknown state")
    assert "did not answer" in monitor.status()["vm_state_detail"]
    assert monitor.heartbeat()["is_healthy"] is True
    runner.stop_failing("domstate+snapshot-list")  # libvirt answers again
    wait_until(lambda: monitor.status()["vm_state"] == "running", 5, message="libvirt back")


def test_post_revert_command_runs_with_the_vm_name(make_monitor, tmp_path):
    out = tmp_path / "hook.txt"
    monitor, runner = make_monitor(
        post_revert_command=["sh", "-c", f'echo "{{vm_name}} $VMCTL_SNAPSHOT_NAME" >> {out}']
    )
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
    runner.fail(
        "snapshot-revert",
        SnapshotLacksDefinition(
            "revert requires force: snapshot 'ready' lacks domain 'art' rollback info"
        ),
    )
    wait_until(
        lambda: monitor.status()["recovery"]["guard"]["state"] == "failed",
        5,
        message="recovery to stop",
    )
    guard = monitor.status()["recovery"]["guard"]
    assert "take the snapshot again" in guard["detail"] and "Staff:" in guard["detail"], guard
    failed = monitor.store.events(limit=1, triggers=["heartbeat_timeout"])[0]
    assert failed.outcome == "failed" and "rollback info" in failed.error
    assert monitor.status()["heartbeat"]["enabled"] is True
    from vmcontroller.errors import Conflict

    with pytest.raises(Conflict, match="guard tripped"):  # guest requests wait for staff too
        monitor.request_revert("guest_request", "x")
    monitor.create_snapshot("ready")  # staff take the reference again
    assert monitor.status()["recovery"]["guard"]["state"] == "ok"
    wait_until(lambda: reverts(runner) == before + 1, 5, message="recovery to resume")


def test_a_forced_revert_is_recorded_with_libvirts_refusal(make_monitor):
    from vmcontroller.virsh import RevertRisky

    monitor, runner = make_monitor(heartbeat_timeout=60)
    runner.fail(
        "snapshot-revert",
        RevertRisky(
            "revert requires force: Target domain max memory 131072 does not match source 65536"
        ),
    )
    monitor.restart_vm()
    event = monitor.store.events(limit=1)[0]
    assert (event.trigger, event.action, event.outcome) == ("api", "revert", "succeeded")
    assert "does not match source" in event.error and "--force" in event.error, event
    assert any("--force" in call for call in runner.calls if call[0] == "snapshot-revert")


def test_a_guest_repeating_a_refused_request_writes_one_row_and_one_log_line(make_monitor, caplog):
    from vmcontroller.errors import Conflict

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
        beat = threading.Thread(
            target=lambda: answered.append((monitor.heartbeat(), monitor.status())), daemon=True
        )
        beat.start()
        beat.join(2)
        assert answered, "a heartbeat waited for the state file"
        staff.join(5)
        assert not staff.is_alive(), "the staff action waits at most briefly for the disk"
        assert monitor.status()["auto_revert_enabled"] is False
    finally:
        other.execute("ROLLBACK")
        other.close()
    wait_until(
        lambda: Store(path).get("auto_revert_enabled") is False,
        15,
        message="the write once the lock is gone",
    )


# ------------------------------------------------------------------ issue 10: the lines no test ran


class HungPollRunner(FakeRunner):
    """The safety poll's virsh call waits at a gate the test opens (a libvirtd that hangs)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def state_and_snapshots(self, domain: str):
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(30)
        return super().state_and_snapshots(domain)


def test_a_queued_guest_request_dropped_by_a_staff_stop_leaves_the_monitor_idle(
    make_monitor, monkeypatch
):
    from vmcontroller.vocab import GUEST_REQUEST

    runner = HungPollRunner()
    monitor, _ = make_monitor(runner, heartbeat_timeout=60)
    wait_until(lambda: monitor.heartbeat_status()["enabled"], 5, message="the grace to end")
    runner.gate.clear()
    monitor.on_events_connection(True)  # the monitor looks at the VM and hangs in virsh
    assert runner.waiting.wait(5), "the monitor thread to hang in its state check"
    assert monitor.request_revert(GUEST_REQUEST, "player crashed")["queued"] is True
    monitor.stop_vm()  # staff win the VM before the monitor takes the request
    seen = decisions_of(monitor, monkeypatch)
    runner.gate.set()
    wait_until(lambda: "check_state" in seen, 5, message="the hung check to end")
    # A request still marked queued would be decided again at every step: a busy loop.
    period = config_for(runner).heartbeat_check_interval * 20
    stays_false(
        lambda: "run_pending" in seen,
        period,
        "the monitor went on deciding to run a request staff had dropped",
    )
    assert runner.state == "shut off" and reverts(runner) == 1


def test_an_unreadable_boot_id_counts_as_a_new_host_boot(make_monitor, tmp_path, monkeypatch):
    from vmcontroller import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "BOOT_ID_PATH", tmp_path / "no-such-file")
    assert monitor_module.host_boot_id() is None
    store_path = tmp_path / "state.db"
    first, runner = make_monitor(store=Store(store_path), heartbeat_timeout=60)
    first.heartbeat()  # healthy when last seen, and still running
    first.stop()
    second, _ = make_monitor(runner, store=Store(store_path), heartbeat_timeout=60)
    # Without a boot id the controller cannot tell a restart of its own from a host boot.
    started = second.store.events(limit=1, triggers=["startup"])[0]
    assert started.action == "revert" and "host has booted" in started.reason, started
    assert reverts(runner) == 2


def test_an_unreadable_history_at_start_is_logged_and_the_watchdog_still_works(
    make_monitor, tmp_path, caplog
):
    import sqlite3

    path = tmp_path / "state.db"
    store = Store(path)
    # Damaged after it was opened (Store falls back to an empty state for a file it
    # cannot read at open): its history table no longer reads.
    db = sqlite3.connect(str(path))
    db.executescript("DROP TABLE events; CREATE TABLE events (damaged TEXT);")
    db.close()
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        monitor, runner = make_monitor(store=store)
    assert any("cannot read the history at start" in r.getMessage() for r in caplog.records)
    assert monitor.status()["recovery"]["last_time"] is None
    wait_until(
        lambda: reverts(runner) == 2,
        enforcement_period(config_for(runner)),
        message="a revert of the silent guest all the same",
    )


def test_a_restart_joining_one_that_outlasts_api_busy_timeout_answers_busy(make_monitor):
    from vmcontroller.errors import Busy

    runner = GatedRunner()
    monitor, _ = make_monitor(runner, heartbeat_timeout=60, api_busy_timeout=0.2)
    runner.gate.clear()
    first = threading.Thread(target=monitor.restart_vm, daemon=True)
    first.start()
    wait_until(lambda: monitor._job is not None, 5, message="the first restart to be under way")
    try:
        with pytest.raises(Busy, match="has been under way for more than 0.2 s") as busy:
            monitor.restart_vm()
        assert busy.value.retry_after >= 1.0
    finally:
        runner.gate.set()
        first.join(10)
    assert reverts(runner) == 2, "the first restart alone reverted"


def test_a_post_revert_command_that_fails_is_logged_with_its_status_and_output(
    make_monitor, caplog
):
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        make_monitor(post_revert_command=["sh", "-c", "echo conntrack refused; exit 3"])
        wait_until(
            lambda: any("post_revert_command" in r.getMessage() for r in caplog.records),
            5,
            message="the command's failure to be logged",
        )
    line = next(r.getMessage() for r in caplog.records if "post_revert_command" in r.getMessage())
    assert "exited with status 3" in line and "conntrack refused" in line, line


def test_a_failure_while_preparing_at_start_is_logged_and_the_timeout_still_armed(caplog):
    def broken_boot_id() -> str:
        raise RuntimeError("simulated bug at start-up")

    runner = FakeRunner()
    config = config_for(runner)
    monitor = Monitor(
        Domain(runner, runner.domain, config.snapshot_name),
        config,
        Store(":memory:"),
        boot_id=broken_boot_id,
    )
    runner.listener = monitor.on_lifecycle_event
    try:
        with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
            monitor.start()
            assert monitor.wait_initialised(5)
        assert any("could not prepare VM" in r.getMessage() for r in caplog.records)
        assert monitor.heartbeat_status()["enabled"] is True
        wait_until(
            lambda: reverts(runner) == 1,
            enforcement_period(config),
            message="the silent guest to be reverted on its timeout",
        )
        assert monitor.store.events(limit=1)[0].trigger == "heartbeat_timeout"
    finally:
        monitor.stop()


def test_a_failing_monitor_step_is_logged_and_the_watchdog_goes_on(
    make_monitor, monkeypatch, caplog
):
    monitor, runner = make_monitor(heartbeat_timeout=60)
    original = monitor._step
    failed: list[int] = []

    def failing_once() -> bool:
        if not failed:
            failed.append(1)
            raise RuntimeError("simulated bug in a step")
        return original()

    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        monkeypatch.setattr(monitor, "_step", failing_once)
        with monitor._cond:
            monitor._cond.notify_all()
        wait_until(lambda: failed, 5, message="the failing step")
        runner.external("shut off", "Stopped", "Destroyed")
        wait_until(lambda: reverts(runner) == 2, 5, message="the destroy to be recovered")
    assert any("monitor step failed" in r.getMessage() for r in caplog.records)
    assert monitor.thread_alive


def test_a_controller_restarted_during_a_backoff_waits_it_out(make_monitor, tmp_path):
    store_path = tmp_path / "state.db"
    first, runner = make_monitor(
        store=Store(store_path), recovery_backoff_initial=60, recovery_backoff_max=60
    )
    runner.snapshots.clear()  # the next recovery fails
    wait_until(
        lambda: first.status()["recovery"]["guard"]["state"] == "backoff",
        5,
        message="a failed recovery and its back-off",
    )
    first.stop()
    attempts = runner.count("snapshot-revert")
    second, _ = make_monitor(
        runner, store=Store(store_path), recovery_backoff_initial=60, recovery_backoff_max=60
    )
    assert second.status()["recovery"]["guard"]["state"] == "backoff"
    # The silent guest times out, but the back-off saved by the first run holds.
    stays_false(
        lambda: runner.count("snapshot-revert") > attempts,
        enforcement_period(config_for(runner)),
        "an attempt during the saved back-off",
    )


def test_an_automatic_recovery_that_cannot_get_the_vm_in_time_gives_up_and_retries(
    make_monitor, caplog
):
    runner = GatedDeleteRunner()
    runner.snapshots.append("backup")
    runner.parents["backup"] = None
    monitor, _ = make_monitor(
        runner, heartbeat_timeout=60, virsh_timeout=1, virsh_long_timeout=1, state_poll_interval=1
    )
    runner.gate.clear()
    staff = threading.Thread(target=monitor.delete_snapshot, args=("backup",), daemon=True)
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        staff.start()
        assert runner.waiting.wait(5)
        runner.external("shut off", "Stopped", "Destroyed")
        # longest_locked_operation: 1 + 2 * 1 s; the staff operation holds the VM longer.
        wait_until(
            lambda: any(
                "has been under way for more than 3 s" in r.getMessage() for r in caplog.records
            ),
            30,
            message="the recovery to give up",
        )
    assert reverts(runner) == 1 and runner.state == "shut off"
    runner.gate.set()
    staff.join(10)
    wait_until(
        lambda: reverts(runner) == 2 and runner.state == "running",
        30,
        message="the recovery once the VM is free",
    )


class GatedDeleteRunner(FakeRunner):
    """Snapshot deletes wait at a gate the test opens: a staff operation holding the VM."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def snapshot_delete(self, domain: str, name: str) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(60)
        super().snapshot_delete(domain, name)


def test_a_queued_guest_request_is_dropped_when_staff_switch_to_maintenance_first(
    make_monitor, caplog
):
    from vmcontroller.vocab import GUEST_REQUEST

    runner = GatedDeleteRunner()
    runner.snapshots.append("backup")
    runner.parents["backup"] = None
    monitor, _ = make_monitor(runner, heartbeat_timeout=60)
    wait_until(lambda: monitor.heartbeat_status()["enabled"], 5, message="the grace to end")
    runner.gate.clear()
    staff = threading.Thread(target=monitor.delete_snapshot, args=("backup",), daemon=True)
    staff.start()
    assert runner.waiting.wait(5)  # the VM is busy: the request waits in the queue
    assert monitor.request_revert(GUEST_REQUEST, "player crashed")["queued"] is True
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        monitor.set_auto_revert(False)
        runner.gate.set()
        staff.join(10)
        wait_until(
            lambda: any(
                "player crashed; automatic revert is disabled" in r.getMessage()
                for r in caplog.records
            ),
            5,
            message="the request to be dropped",
        )
    stays_false(
        lambda: reverts(runner) > 1,
        config_for(runner).heartbeat_check_interval * 10,
        "the dropped request was carried out",
    )


def test_heartbeats_that_resume_after_a_silence_in_maintenance_are_logged(make_monitor, caplog):
    monitor, runner = make_monitor()
    monitor.set_auto_revert(False)
    monitor.heartbeat()
    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        wait_until(
            lambda: any("no heartbeat" in r.getMessage() for r in caplog.records),
            enforcement_period(config_for(runner)),
            message="the silence to be logged",
        )
        assert monitor.heartbeat()["is_healthy"] is True
    resumed = [r.getMessage() for r in caplog.records if "resumed after" in r.getMessage()]
    assert len(resumed) == 1 and "of silence" in resumed[0], resumed


class GatedRevertRunner(FakeRunner):
    """Once armed, the next revert waits for the gate and then fails as libvirt might."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def snapshot_revert(self, domain: str, name: str, **kw) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(10)
            self.calls.append(("snapshot-revert", domain, name, "failed"))
            raise VirshError("internal error: injected while staff waited")
        super().snapshot_revert(domain, name, **kw)


def test_a_staff_start_joining_an_automatic_recovery_that_fails_does_its_own_start(
    make_monitor, caplog
):
    """Staff pressing start while an automatic revert is under way join it; if it fails,
    they get their start, not the recovery's error (seen as a 409 on a loaded machine)."""
    runner = GatedRevertRunner()
    monitor, _ = make_monitor(runner, heartbeat_timeout=60, vm_startup_heartbeat_delay=60)
    runner.armed = True
    runner.external("shut off", "Stopped", "Destroyed")
    assert runner.entered.wait(5), "the automatic recovery to reach libvirt"
    outcome: list[object] = []

    def staff_start() -> None:
        try:
            outcome.append(monitor.start_vm())
        except Exception as exc:  # the test reports it below
            outcome.append(exc)

    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        thread = threading.Thread(target=staff_start)
        thread.start()
        wait_until(
            lambda: any("joins the restart" in r.getMessage() for r in caplog.records),
            5,
            message="the staff start to join the recovery under way",
        )
        runner.gate.set()
        thread.join(10)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert runner.state == "running"
    assert runner.count("snapshot-revert") == 3, runner.calls  # start-up, failed, staff's


def test_an_unreadable_health_record_at_start_is_logged_and_the_watchdog_starts(caplog):
    """The previous run's record cannot be closed; the new run's is opened all the same."""
    runner = FakeRunner()
    config = build_config({"vm_name": runner.domain, "vm_startup_heartbeat_delay": 0.1})
    store = Store(":memory:")

    def unreadable() -> None:
        raise sqlite3.DatabaseError("database disk image is malformed")

    store.last_health = unreadable  # type: ignore[method-assign]
    monitor = Monitor(Domain(runner, runner.domain, "ready"), config, store)
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        monitor.start()
        try:
            assert monitor.wait_initialised(5)
            assert "cannot read the health record at start: database disk image" in caplog.text
            monitor.store.flush(5)
            assert [state for _, state in store.health(0, 1e12)][:1] == ["start"]
        finally:
            monitor.close()
