"""The monitor acting on the opening hours, with the FakeRunner and an injected wall clock.

The wall clock is a value the test sets (opening time, closing time, a jump back); the
monitor looks at the schedule every few hundredths of a second (``schedule_recheck``),
so each change is seen at once. The same transitions drive a real VM in
test_schedule_real.py.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fake_virsh import FakeRunner
from libvirt_env import wait_until
from waits import enforcement_period, stays_false
from wallclock import WallClock

from vmcontroller.config import Config, build_config
from vmcontroller.errors import Conflict
from vmcontroller.monitor import Monitor
from vmcontroller.store import Store
from vmcontroller.virsh import VirshError
from vmcontroller.vm import Domain
from vmcontroller.vocab import (
    ALERT_CRASH_RESTART,
    ALERT_GATHER,
    ALERT_LIBVIRT_UNREACHABLE,
    HEALTH_HEALTHY,
    HEALTH_START,
    SCHEDULE_CLOSE,
    SCHEDULE_MAINTENANCE,
    SCHEDULE_OPEN,
)

VIENNA = ZoneInfo("Europe/Vienna")
DAILY = {
    "timezone": "Europe/Vienna",
    "hours": {
        d: "10:00-18:00"
        for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    },
}


def vienna(*args: int) -> datetime:
    return datetime(*args, tzinfo=VIENNA)


def config_for(runner: FakeRunner, schedule: dict, **overrides) -> Config:
    return build_config(
        {
            "vm_name": runner.domain,
            "heartbeat_timeout": 0.4,
            "vm_startup_heartbeat_delay": 0.1,
            "heartbeat_check_interval": 0.05,
            "schedule": schedule,
            **overrides,
        }
    )


@pytest.fixture
def make_monitor(tmp_path: Path):
    made: list[Monitor] = []

    def make(
        clock: WallClock,
        runner: FakeRunner | None = None,
        schedule: dict | None = None,
        state: Path | None = None,
        **overrides,
    ) -> tuple[Monitor, FakeRunner]:
        runner = runner or FakeRunner()
        config = config_for(runner, schedule or DAILY, **overrides)
        store = Store(str(state or tmp_path / "state.db"))
        monitor = Monitor(
            Domain(runner, runner.domain, config.snapshot_name),
            config,
            store,
            wallclock=clock,
            schedule_recheck=0.02,
        )
        runner.listener = monitor.on_lifecycle_event
        monitor.on_events_connection(True)
        monitor.start()
        assert monitor.wait_initialised(5)
        made.append(monitor)
        return monitor, runner

    yield make
    for monitor in made:
        monitor.close()


def rows(monitor: Monitor, trigger: str) -> list:
    return monitor.history(triggers=[trigger])


def test_a_controller_starting_in_opening_hours_opens_once_with_a_fresh_revert(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    (row,) = rows(monitor, SCHEDULE_OPEN)
    assert (row.action, row.outcome) == ("revert", "succeeded")
    assert runner.count("snapshot-revert") == 1  # the opening replaced the start-up revert
    assert monitor.history(triggers=["startup"]) == []
    status = monitor.status()
    assert status["recovery"]["count"] == 0 and status["recovery"]["guard"]["state"] == "ok"
    assert status["schedule"]["state"] == "open" and status["schedule"]["enforcing"] is True
    assert status["schedule"]["next_change"] == vienna(2027, 3, 2, 18, 0).isoformat()
    assert monitor.is_open() and monitor.schedule_note() is None


def test_a_restart_within_the_same_opening_does_not_open_again(make_monitor, tmp_path):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    first, runner = make_monitor(clock)
    wait_until(lambda: rows(first, SCHEDULE_OPEN), 5, message="the opening revert")
    first.close()
    clock.set(vienna(2027, 3, 2, 12, 0))
    second, _ = make_monitor(clock, runner=runner)
    wait_until(lambda: second.status()["schedule"] is not None, 5, message="a schedule look")
    assert len(rows(second, SCHEDULE_OPEN)) == 1


def test_closing_stops_the_vm_and_nothing_is_reverted_until_opening(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 17, 59))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the catch-up opening")
    clock.set(vienna(2027, 3, 2, 18, 0))
    wait_until(lambda: runner.state == "shut off", 5, message="the VM stopped at closing")
    (row,) = rows(monitor, SCHEDULE_CLOSE)
    assert (row.action, row.outcome) == ("stop", "succeeded")
    reverts = runner.count("snapshot-revert")
    stays_false(
        lambda: runner.count("snapshot-revert") > reverts or runner.count("start") > 0,
        enforcement_period(monitor_config(monitor)),
        "a stopped VM was brought back in closed hours",
    )
    assert monitor.heartbeat_status()["enabled"] is False
    assert not monitor.is_open()
    assert monitor.status()["stopped_by_staff"] is False  # a planned stop, not staff's
    clock.set(vienna(2027, 3, 3, 10, 0))
    wait_until(lambda: runner.state == "running", 5, message="the VM started at opening")
    assert runner.count("snapshot-revert") == reverts + 1
    assert len(rows(monitor, SCHEDULE_OPEN)) == 2
    wait_until(
        lambda: monitor.heartbeat_status()["enabled"], 5, message="heartbeats enforced again"
    )


def monitor_config(monitor: Monitor) -> Config:
    return build_config(
        {
            "vm_name": monitor.vm_name,
            "heartbeat_timeout": monitor.timeout,
            "vm_startup_heartbeat_delay": monitor.grace,
            "heartbeat_check_interval": monitor.fallback_poll_interval,
        }
    )


def test_a_clock_set_back_repeats_nothing_and_forward_past_an_opening_skips_it(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    clock.set(vienna(2027, 3, 2, 9, 0))  # back, before today's opening
    wait_until(lambda: monitor.status()["schedule"]["state"] == "closed", 5, message="a look")
    clock.set(vienna(2027, 3, 2, 10, 30))  # and forward into the same opening again
    wait_until(lambda: monitor.status()["schedule"]["state"] == "open", 5, message="a look")
    stays_false(
        lambda: len(rows(monitor, SCHEDULE_OPEN)) > 1 or rows(monitor, SCHEDULE_CLOSE),
        0.5,
        "a clock set back repeated a change",
    )
    assert runner.state == "running"
    clock.set(vienna(2027, 3, 4, 19, 0))  # two days on: two openings passed unseen
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing it lands in")
    assert len(rows(monitor, SCHEDULE_OPEN)) == 1 and runner.state == "shut off"


def test_a_vm_stopped_by_staff_is_not_started_at_opening(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    monitor.stop_vm()
    clock.set(vienna(2027, 3, 3, 10, 0))
    wait_until(lambda: len(rows(monitor, SCHEDULE_OPEN)) == 2, 5, message="the next opening")
    row = rows(monitor, SCHEDULE_OPEN)[0]
    assert row.outcome == "skipped" and "stopped by staff" in (row.error or "")
    assert runner.state == "shut off"


def test_staff_may_start_in_closed_hours_and_are_told_it_is_not_watched(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    assert runner.state == "shut off"
    note = monitor.schedule_note()
    assert note is not None and "closed" in note and "2027-03-03T10:00:00+01:00" in note
    monitor.start_vm()
    assert runner.state == "running"
    reverts = runner.count("snapshot-revert")
    runner.external("shut off", "Stopped", "Destroyed")  # and then it fails: closed, no revert
    stays_false(
        lambda: runner.count("snapshot-revert") > reverts,
        enforcement_period(monitor_config(monitor)),
        "a failure in closed hours was reverted",
    )


def test_keep_running_at_closing_leaves_the_vm_on_but_unwatched(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock, schedule={**DAILY, "at_closing": "keep_running"})
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    clock.set(vienna(2027, 3, 2, 18, 30))
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing")
    assert rows(monitor, SCHEDULE_CLOSE)[0].action == "unwatch"
    monitor.store.flush(5)
    reverts = runner.count("snapshot-revert")
    stays_false(
        lambda: runner.state != "running" or runner.count("snapshot-revert") > reverts,
        enforcement_period(monitor_config(monitor)),
        "a silent guest was stopped or reverted after closing",
    )


def test_at_opening_start_keeps_a_vm_that_ran_all_night(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    schedule = {**DAILY, "at_opening": "start", "at_closing": "keep_running"}
    monitor, runner = make_monitor(clock, schedule=schedule)
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    reverts = runner.count("snapshot-revert")
    clock.set(vienna(2027, 3, 3, 10, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening")
    assert rows(monitor, SCHEDULE_OPEN)[0].action == "start"
    assert runner.count("snapshot-revert") == reverts and runner.state == "running"


def test_a_maintenance_window_stops_enforcing_for_its_span_then_enforces_again(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    window = {"start": "2027-03-02 12:00", "end": "2027-03-02 13:00"}
    monitor, runner = make_monitor(clock, schedule={**DAILY, "maintenance": [window]})
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    clock.set(vienna(2027, 3, 2, 12, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_MAINTENANCE), 5, message="the window")
    assert not monitor.is_open() and monitor.status()["schedule"]["state"] == "maintenance"
    monitor.store.flush(5)
    timeouts = len(rows(monitor, "heartbeat_timeout"))
    stays_false(
        lambda: len(rows(monitor, "heartbeat_timeout")) > timeouts,
        enforcement_period(monitor_config(monitor)),
        "a silent guest was reverted in a maintenance window",
    )
    clock.set(vienna(2027, 3, 2, 13, 0))
    # Back to opening hours: no revert for the window's end, the silent guest is reverted
    # once its grace and timeout are over (as after staff end maintenance).
    wait_until(lambda: len(rows(monitor, "heartbeat_timeout")) > timeouts, 10, message="enforcing")
    assert [r.action for r in rows(monitor, SCHEDULE_OPEN)] == ["enforce", "revert"]


def test_is_open_answers_for_any_time_and_without_a_schedule_always(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    monitor, _ = make_monitor(clock)
    assert monitor.is_open(vienna(2027, 3, 3, 10, 0)) is True
    assert monitor.is_open(vienna(2027, 3, 3, 9, 59)) is False
    assert monitor.is_open() is False


def test_without_a_schedule_status_says_null_and_is_open_is_true(tmp_path):
    runner = FakeRunner()
    config = build_config({"vm_name": runner.domain, "vm_startup_heartbeat_delay": 0.1})
    monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
    monitor.start()
    try:
        assert monitor.wait_initialised(5)
        assert monitor.status()["schedule"] is None
        assert monitor.is_open() and monitor.schedule_note() is None
    finally:
        monitor.close()


def test_the_report_does_not_count_scheduled_reverts_as_recoveries(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, _ = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    monitor.store.flush(5)
    today = datetime.now().date().isoformat()
    report = monitor.report(today, today)
    assert SCHEDULE_OPEN not in report["total"]["recoveries"]


def test_a_guests_revert_request_in_closed_hours_is_refused_with_the_reason(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    monitor, _ = make_monitor(clock, schedule={**DAILY, "at_closing": "keep_running"})
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    with pytest.raises(Conflict) as refused:
        monitor.request_revert("guest_request", "frozen")
    assert "the schedule says closed" in str(refused.value)


@pytest.mark.parametrize("day", [28, 31])
def test_on_the_days_the_clocks_change_the_opening_happens_once_at_ten(make_monitor, day):
    month = 3 if day == 28 else 10
    clock = WallClock(vienna(2027, month, day, 1, 30))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    for hour, minute in ((2, 30), (3, 30), (9, 59)):  # through the hour that is skipped/repeated
        clock.set(vienna(2027, month, day, hour, minute))
        wait_until(lambda: monitor.status()["schedule"]["state"] == "closed", 5, message="a look")
    assert rows(monitor, SCHEDULE_OPEN) == []
    clock.set(vienna(2027, month, day, 10, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening")
    clock.set(vienna(2027, month, day, 11, 0))
    stays_false(lambda: len(rows(monitor, SCHEDULE_OPEN)) > 1, 0.5, "a second opening")
    assert monitor.status()["schedule"]["since"] == vienna(2027, month, day, 10, 0).isoformat()


def test_the_switch_is_pinged_in_closed_hours_and_in_opening_hours_only_while_healthy(
    make_monitor,
):
    """Closed, nothing is expected of the artwork: silence from the switch would be a false
    alarm. Open, a guest that has not heartbeated yet is not healthy: no ping."""
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    monitor, _ = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    assert monitor.ping_wanted() is True
    clock.set(vienna(2027, 3, 3, 10, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening")
    assert monitor.ping_wanted() is False


def test_a_failed_opening_revert_is_recorded_and_the_watchdog_brings_the_vm_up(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 20, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing at start-up")
    runner.fail("snapshot-revert", VirshError("internal error: qemu unexpectedly closed"))
    clock.set(vienna(2027, 3, 3, 10, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening")
    (row,) = rows(monitor, SCHEDULE_OPEN)
    assert (row.action, row.outcome) == ("revert", "failed")
    assert "qemu unexpectedly closed" in (row.error or "")
    wait_until(lambda: runner.state == "running", 10, message="the watchdog's revert")
    assert runner.count("snapshot-revert") >= 2


def test_closing_in_maintenance_leaves_the_vm_running_and_says_why(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    monitor.set_auto_revert(False)
    clock.set(vienna(2027, 3, 2, 18, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing")
    (row,) = rows(monitor, SCHEDULE_CLOSE)
    assert (row.action, row.outcome) == ("stop", "skipped")
    assert "automatic revert is disabled (maintenance)" in (row.error or "")
    assert runner.state == "running" and runner.count("destroy") == 0


def test_a_stop_at_closing_that_fails_is_recorded_and_the_vm_is_left_running(make_monitor):
    clock = WallClock(vienna(2027, 3, 2, 11, 0))
    monitor, runner = make_monitor(clock)
    wait_until(lambda: rows(monitor, SCHEDULE_OPEN), 5, message="the opening revert")
    runner.fail("destroy", VirshError("internal error: cannot acquire state change lock"))
    clock.set(vienna(2027, 3, 2, 18, 0))
    wait_until(lambda: rows(monitor, SCHEDULE_CLOSE), 5, message="the closing")
    (row,) = rows(monitor, SCHEDULE_CLOSE)
    assert (row.action, row.outcome) == ("stop", "failed")
    assert "cannot acquire state change lock" in (row.error or "")
    assert runner.state == "running"
    assert monitor.status()["schedule"]["state"] == "closed"


def test_closed_hours_tell_nothing_and_opening_tells_what_happened_in_the_night(
    make_monitor, tmp_path
):
    """A power cut at night and libvirt not answering at the controller's start: nothing is
    sent while closed; at opening the crash is told, libvirt (answering again) is not."""
    state = tmp_path / "night.db"
    store = Store(str(state))
    store.record_health(1000.0, HEALTH_START)
    store.record_health(1001.0, HEALTH_HEALTHY)  # then a power cut: no 'stop'
    runner = FakeRunner()
    runner.fail("domstate+snapshot-list", VirshError("failed to connect to the hypervisor"))
    clock = WallClock(vienna(2027, 3, 2, 3, 0))
    monitor, _ = make_monitor(clock, runner=runner, state=state)
    wait_until(lambda: runner.count("domstate+snapshot-list") >= 2, 5, message="libvirt again")
    found: list = []
    stays_false(
        lambda: bool(found.extend(monitor.take_alerts()) or found),
        ALERT_GATHER + 1.0,
        "a notification in closed hours",
    )
    clock.set(vienna(2027, 3, 2, 10, 0))
    wait_until(
        lambda: found.extend(monitor.take_alerts()) or found,
        ALERT_GATHER + 10,
        0.1,
        "the night's message at opening",
    )
    [message] = found  # no heartbeats after opening either: the guard's trip may join it
    assert message.kinds[0] == ALERT_CRASH_RESTART
    assert ALERT_LIBVIRT_UNREACHABLE not in message.kinds
    assert "03:00:00" in message.lines[0] and "museum was closed" in message.lines[0]
