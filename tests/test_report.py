"""The availability report from hand-made health changes: no clock, no libvirt.

Days are Vienna's (an injected time zone), so that a day of 23 or 25 hours and
an outage across midnight are checked whatever zone the machine runs in.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fake_virsh import FakeRunner
from libvirt_env import wait_until

from vmcontroller.config import build_config
from vmcontroller.monitor import Monitor
from vmcontroller.report import (
    Recovery,
    ReportRangeError,
    as_json,
    build,
    counts_as_recovery,
    date_range,
    midnight,
)
from vmcontroller.store import Store
from vmcontroller.vm import Domain
from vmcontroller.vocab import (
    HEALTH_HEALTHY,
    HEALTH_STAFF,
    HEALTH_START,
    HEALTH_STOP,
    HEALTH_UNHEALTHY,
    REPORT_MAX_DAYS,
)

VIENNA = ZoneInfo("Europe/Vienna")
HOUR = 3600.0
DAY = 86400.0


def at(day: str, hour: float = 0.0) -> float:
    """Seconds since the epoch of a Vienna wall-clock time (hours past local midnight,
    counted on the clock: 03:00 on a spring-forward day is 2 hours after midnight)."""
    whole = int(hour)
    minutes = round((hour - whole) * 60)
    return (
        datetime.fromisoformat(f"{day}T{whole:02d}:{minutes:02d}")
        .replace(tzinfo=VIENNA)
        .timestamp()
    )


def report(first: str, last: str, changes, now: float, recoveries=()):
    days, total = build(
        date.fromisoformat(first), date.fromisoformat(last), changes, recoveries, now, VIENNA
    )
    return as_json("eden", date.fromisoformat(first), date.fromisoformat(last), days, total)


def run_from(day: str) -> list[tuple[float, str]]:
    """A controller started at midnight whose guest heartbeats at once."""
    return [(at(day), HEALTH_START), (at(day), HEALTH_UNHEALTHY), (at(day), HEALTH_HEALTHY)]


def test_an_outage_across_midnight_counts_on_both_days_and_clipped_to_each():
    changes = [
        *run_from("2026-06-01"),
        (at("2026-06-01", 23.5), HEALTH_UNHEALTHY),
        (at("2026-06-02", 1), HEALTH_HEALTHY),
    ]
    answer = report("2026-06-01", "2026-06-02", changes, now=at("2026-06-03"))
    first, second = answer["days"]
    assert first["date"] == "2026-06-01" and second["date"] == "2026-06-02"
    assert first["unhealthy_seconds"] == 0.5 * HOUR
    assert first["healthy_seconds"] == 23.5 * HOUR
    assert first["longest_outage_seconds"] == 0.5 * HOUR
    assert second["unhealthy_seconds"] == HOUR
    assert second["longest_outage_seconds"] == HOUR
    assert second["healthy_share"] == round(23 / 24, 6)
    # The whole outage, across midnight, is the range's longest.
    assert answer["total"]["longest_outage_seconds"] == 1.5 * HOUR
    assert answer["total"]["unhealthy_seconds"] == 1.5 * HOUR
    assert "date" not in answer["total"]


@pytest.mark.parametrize("day, hours", [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)])
def test_a_day_lasts_from_local_midnight_to_local_midnight(day, hours):
    before = (date.fromisoformat(day) - timedelta(1)).isoformat()
    answer = report(day, day, run_from(before), now=at(day) + 2 * DAY)
    (only,) = answer["days"]
    assert only["healthy_seconds"] == hours * HOUR
    assert only["unhealthy_seconds"] == only["staff_seconds"] == only["unmonitored_seconds"] == 0
    assert only["healthy_share"] == 1.0


def test_an_outage_on_the_night_the_clocks_go_back_lasts_its_real_length():
    day = "2026-10-25"  # 02:00-03:00 happens twice: 01:00 to 04:00 on the clock is 4 hours
    changes = [
        *run_from("2026-10-24"),
        (at(day, 1), HEALTH_UNHEALTHY),
        (at(day, 4), HEALTH_HEALTHY),
    ]
    (only,) = report(day, day, changes, now=at("2026-10-26"))["days"]
    assert only["unhealthy_seconds"] == only["longest_outage_seconds"] == 4 * HOUR
    assert only["healthy_seconds"] == 21 * HOUR


def test_a_controller_that_was_off_leaves_unmonitored_time():
    day = "2026-06-01"
    changes = [
        *run_from(day),
        (at(day, 10), HEALTH_STOP),
        (at(day, 14), HEALTH_START),
        (at(day, 14), HEALTH_UNHEALTHY),
        (at(day, 14) + 30, HEALTH_HEALTHY),
    ]
    (only,) = report(day, day, changes, now=at("2026-06-02"))["days"]
    assert only["unmonitored_seconds"] == 4 * HOUR
    assert only["unhealthy_seconds"] == 30  # from the start to the first heartbeat
    assert only["healthy_seconds"] == 20 * HOUR - 30
    assert only["healthy_share"] == round((20 * HOUR - 30) / (20 * HOUR), 6)


def test_maintenance_and_a_stop_by_staff_are_staff_time_not_outages():
    day = "2026-06-01"
    changes = [
        *run_from(day),
        (at(day, 9), HEALTH_STAFF),
        (at(day, 11), HEALTH_HEALTHY),
        (at(day, 20), HEALTH_STAFF),
    ]
    (only,) = report(day, day, changes, now=at("2026-06-02"))["days"]
    assert only["staff_seconds"] == 2 * HOUR + 4 * HOUR
    assert only["healthy_seconds"] == 18 * HOUR
    assert only["unhealthy_seconds"] == only["longest_outage_seconds"] == 0
    assert only["healthy_share"] == 1.0


def test_no_data_at_all_is_unmonitored_with_no_share():
    answer = report("2026-06-01", "2026-06-03", [], now=at("2026-07-01"))
    for day in answer["days"]:
        assert day["unmonitored_seconds"] == DAY
        assert day["healthy_share"] is None
        assert day["recoveries"] == {} and day["recoveries_total"] == 0
    assert answer["total"]["unmonitored_seconds"] == 3 * DAY
    assert answer["total"]["healthy_share"] is None


def test_the_rest_of_today_and_the_future_are_unmonitored():
    changes = run_from("2026-06-01")
    answer = report("2026-06-01", "2026-06-02", changes, now=at("2026-06-01", 6))
    today, tomorrow = answer["days"]
    assert today["healthy_seconds"] == 6 * HOUR
    assert today["unmonitored_seconds"] == 18 * HOUR
    assert tomorrow["unmonitored_seconds"] == DAY


def test_the_state_in_force_before_the_range_counts_from_its_first_second():
    # Only the change before the range (as Store.health gives it) and nothing in it.
    changes = [(at("2026-05-20", 12), HEALTH_UNHEALTHY)]
    (only,) = report("2026-06-01", "2026-06-01", changes, now=at("2026-06-02"))["days"]
    assert only["unhealthy_seconds"] == only["longest_outage_seconds"] == DAY
    assert only["healthy_share"] == 0.0


def test_recoveries_by_trigger_on_the_day_they_happened():
    recoveries = [
        Recovery(at("2026-06-01", 3), "heartbeat_timeout"),
        Recovery(at("2026-06-01", 23.9), "vm_crashed"),
        Recovery(at("2026-06-02"), "heartbeat_timeout"),  # midnight belongs to the new day
        Recovery(at("2026-06-02", 8), "heartbeat_timeout"),
    ]
    answer = report(
        "2026-06-01", "2026-06-02", run_from("2026-06-01"), at("2026-06-03"), recoveries
    )
    first, second = answer["days"]
    assert first["recoveries"] == {"heartbeat_timeout": 1, "vm_crashed": 1}
    assert first["recoveries_total"] == 2
    assert second["recoveries"] == {"heartbeat_timeout": 2}
    assert answer["total"]["recoveries"] == {"heartbeat_timeout": 3, "vm_crashed": 1}
    assert answer["total"]["recoveries_total"] == 4


@pytest.mark.parametrize(
    "action, outcome, counted",
    [
        ("revert", "succeeded", True),
        ("revert", "failed", True),
        ("start", "succeeded", True),
        ("revert", "interrupted", True),
        ("revert", "refused", False),  # the guard said no: nothing was done
        ("revert", "skipped", False),  # no longer needed when its turn came
        ("stop", "succeeded", False),
        ("snapshot_create", "succeeded", False),
    ],
)
def test_which_history_rows_are_recoveries(action, outcome, counted):
    assert counts_as_recovery(action, outcome) is counted


# ------------------------------------------------------------------ the range asked for


def test_the_default_range_is_the_last_30_days_ending_today():
    now = at("2026-06-30", 0.5)  # 00:30 in Vienna, still the 29th in UTC
    first, last = date_range(None, None, now, VIENNA)
    assert last == date(2026, 6, 30) and first == date(2026, 6, 1)
    assert date_range("2026-06-10", None, now, VIENNA) == (date(2026, 6, 10), date(2026, 6, 30))
    assert date_range(None, "2026-02-10", now, VIENNA) == (date(2026, 1, 12), date(2026, 2, 10))


@pytest.mark.parametrize(
    "since, until, words",
    [
        ("2026-13-01", None, "since must be a date written YYYY-MM-DD (got '2026-13-01')"),
        ("yesterday", None, "since must be a date"),
        (None, "2026-06-31", "until must be a date"),
        ("2026-6-1", None, "since must be a date"),
        ("", None, "since must be a date"),
        ("２０２６-06-01", None, "since must be a date"),
        ("0001-01-01", None, "since must be a day from 1971-01-01 to 9998-12-31"),
        (None, "9999-12-31", "until must be a day from 1971-01-01 to 9998-12-31"),
        ("2026-06-02", "2026-06-01", "since (2026-06-02) must not be after until (2026-06-01)"),
        ("2025-01-01", "2026-01-02", f"at most {REPORT_MAX_DAYS} days (asked for 367)"),
    ],
)
def test_a_bad_range_is_refused_with_a_sentence(since, until, words):
    with pytest.raises(ReportRangeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        date_range(since, until, at("2026-06-30"), VIENNA)


def test_a_leap_year_fits_in_the_longest_range():
    assert date_range("2024-01-01", "2024-12-31", at("2026-06-30"), VIENNA)[0] == date(2024, 1, 1)


def test_midnight_in_the_local_zone_when_none_is_given():
    # No zone: the PC's own (a naive datetime's timestamp is local time).
    day = date(2026, 6, 1)
    assert midnight(day) == datetime(2026, 6, 1).timestamp()


# ------------------------------------------------------------------ the state file


def test_the_store_gives_the_change_in_force_and_those_in_the_range(tmp_path):
    store = Store(tmp_path / "state.db", max_age_days=10)
    for when, state in [(100.0, HEALTH_START), (100.0, HEALTH_HEALTHY), (500.0, "unhealthy")]:
        store.record_health(when, state)
    store.record_health(900.0, HEALTH_HEALTHY)
    assert store.health(200.0, 900.0) == [(100.0, HEALTH_HEALTHY), (500.0, "unhealthy")]
    assert store.health(0.0, 50.0) == []
    assert store.last_health() == (900.0, HEALTH_HEALTHY)
    store.close()


def test_pruning_keeps_the_last_change_before_the_cut(tmp_path):
    store = Store(tmp_path / "state.db", max_age_days=1)
    now = 10 * DAY
    for when, state in [(DAY, HEALTH_START), (2 * DAY, HEALTH_HEALTHY), (9.5 * DAY, "staff")]:
        store.record_health(when, state)
    store.prune(now=now)
    assert store.health(0.0, now) == [(2 * DAY, HEALTH_HEALTHY), (9.5 * DAY, "staff")]
    store.close()


def test_recoveries_come_from_the_history_in_the_range(tmp_path):
    store = Store(tmp_path / "state.db")
    store.record("eden", "heartbeat_timeout", "revert", "x", "succeeded", when=100.0)
    store.record("eden", "api", "stop", "x", "succeeded", when=150.0)
    store.record("eden", "vm_crashed", "revert", "x", "refused", when=200.0)
    store.record("eden", "api", "start", "x", "succeeded", when=400.0)
    found = store.actions_between(100.0, 400.0, ("revert", "start"))
    assert found == [
        (100.0, "heartbeat_timeout", "revert", "succeeded"),
        (200.0, "vm_crashed", "revert", "refused"),
    ]
    store.close()


# ------------------------------------------------------------------ what the monitor records
# Through the in-memory FakeRunner; tests/test_report_real.py does it on a real guest.

TIMEOUT = 0.4


@pytest.fixture
def make_monitor():
    made: list[Monitor] = []

    def make(
        store: Store | None = None, runner: FakeRunner | None = None, timeout: float = 60
    ) -> Monitor:
        """A monitor whose guest cannot time out unless the test asks for it."""
        runner = runner or FakeRunner()
        config = build_config(
            {
                "vm_name": runner.domain,
                "heartbeat_timeout": timeout,
                "vm_startup_heartbeat_delay": 0.1,
                "heartbeat_check_interval": 0.05,
            }
        )
        monitor = Monitor(
            Domain(runner, runner.domain, config.snapshot_name), config, store or Store(":memory:")
        )
        runner.listener = monitor.on_lifecycle_event
        monitor.on_events_connection(True)
        monitor.start()
        assert monitor.wait_initialised(5)
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.stop()


def states(monitor: Monitor) -> list[str]:
    return [state for _, state in changes(monitor)]


def changes(monitor: Monitor) -> list[tuple[float, str]]:
    return monitor.store.health(0.0, time.time() + 3600, wait=5)


def test_the_monitor_records_changes_of_health_not_heartbeats(make_monitor):
    monitor = make_monitor()
    assert states(monitor) == [HEALTH_START, HEALTH_UNHEALTHY]
    for _ in range(50):
        monitor.heartbeat()
    assert states(monitor) == [HEALTH_START, HEALTH_UNHEALTHY, HEALTH_HEALTHY]
    monitor.set_auto_revert(False)
    monitor.heartbeat()
    monitor.set_auto_revert(True)
    assert states(monitor)[3:] == [HEALTH_STAFF, HEALTH_HEALTHY]
    monitor.stop_vm()
    assert states(monitor)[5:] == [HEALTH_STAFF]
    monitor.start_vm()  # unhealthy until the restored guest heartbeats
    monitor.heartbeat()
    assert states(monitor)[6:] == [HEALTH_UNHEALTHY, HEALTH_HEALTHY]
    monitor.stop()
    assert states(monitor)[-1] == HEALTH_STOP
    monitor.heartbeat()  # a straggler during shutdown changes nothing
    assert states(monitor)[-1] == HEALTH_STOP
    times = [when for when, _ in changes(monitor)]
    assert times == sorted(times)


def test_a_heartbeat_timeout_is_dated_when_the_heartbeat_became_late(make_monitor):
    monitor = make_monitor(timeout=TIMEOUT)
    monitor.heartbeat()
    wait_until(lambda: monitor.heartbeat_status()["enabled"], 5, message="the grace to end")
    before = time.time()
    monitor.heartbeat()
    after = time.time()
    wait_until(
        lambda: states(monitor)[-1] == HEALTH_UNHEALTHY, 5, 0.01, "the timeout to be recorded"
    )
    when, _ = changes(monitor)[-1]
    # Whenever the monitor noticed, the outage began at the deadline (a small allowance
    # for reading two clocks one after the other).
    assert before + TIMEOUT - 0.01 <= when <= after + TIMEOUT + 0.01


def test_a_destroyed_vm_is_unhealthy_until_it_heartbeats_again(make_monitor):
    runner = FakeRunner()
    monitor = make_monitor(runner=runner)
    monitor.heartbeat()
    runner.external("shut off", "Stopped", "Destroyed")
    wait_until(lambda: runner.count("snapshot-revert") == 2, 5, 0.01, "the revert")
    monitor.heartbeat()
    assert states(monitor) == [
        HEALTH_START,
        HEALTH_UNHEALTHY,
        HEALTH_HEALTHY,
        HEALTH_UNHEALTHY,
        HEALTH_HEALTHY,
    ]


def test_a_start_after_a_crash_closes_the_run_at_its_last_sign_of_life(make_monitor, tmp_path):
    path = tmp_path / "state.db"
    began = time.time() - HOUR
    crashed = Store(path)
    crashed.record_health(began, HEALTH_START)
    crashed.record_health(began, HEALTH_HEALTHY)
    crashed.put("alive_at", began + 300)
    crashed.close()
    monitor = make_monitor(Store(path))
    found = changes(monitor)
    assert found[:3] == [(began, HEALTH_START), (began, HEALTH_HEALTHY), (began + 300, HEALTH_STOP)]
    assert [state for _, state in found[3:]] == [HEALTH_START, HEALTH_UNHEALTHY]
    assert monitor.store.get("alive_at") > began + 300, "this run notes that it is alive"


def test_a_clean_stop_is_not_closed_again_at_the_next_start(make_monitor, tmp_path):
    path = tmp_path / "state.db"
    first = make_monitor(Store(path))
    first.close()
    second = make_monitor(Store(path))
    assert states(second) == [
        HEALTH_START,
        HEALTH_UNHEALTHY,
        HEALTH_STOP,
        HEALTH_START,
        HEALTH_UNHEALTHY,
    ]


def test_the_monitor_answers_the_report_of_today(make_monitor):
    monitor = make_monitor()
    monitor.heartbeat()
    answer = monitor.report(None, None)
    assert len(answer["days"]) == 30 and answer["until"] == date.today().isoformat()
    today = answer["days"][-1]
    assert today["healthy_seconds"] + today["unhealthy_seconds"] > 0
    assert answer["vm"] == monitor.vm_name
    with pytest.raises(ReportRangeError):
        monitor.report("2026-01-02", "2026-01-01")


# ------------------------------------------------------------------ the share of opening time


def test_with_opening_hours_each_day_has_its_open_time_and_the_healthy_share_of_it():
    """Open 10:00-18:00; an outage from 17:00 to 19:00 costs one of the 8 open hours, the
    hour after closing none; today counts only up to now; without a schedule: null."""
    changes = [
        *run_from("2026-06-01"),
        (at("2026-06-01", 17), HEALTH_UNHEALTHY),
        (at("2026-06-01", 19), HEALTH_HEALTHY),
    ]
    spans = [(at(d, 10), at(d, 18)) for d in ("2026-06-01", "2026-06-02")]
    now = at("2026-06-02", 12)
    days, total = build(
        date(2026, 6, 1), date(2026, 6, 2), changes, (), now, VIENNA, open_spans=spans
    )
    first, second = (day.as_json() for day in days)
    assert first["open_seconds"] == 8 * HOUR
    assert first["healthy_open_share"] == round(7 / 8, 6)
    assert second["open_seconds"] == 2 * HOUR and second["healthy_open_share"] == 1.0
    assert total.as_json()["open_seconds"] == 10 * HOUR
    assert total.as_json()["healthy_open_share"] == round(9 / 10, 6)
    plain = report("2026-06-01", "2026-06-01", changes, now)["days"][0]
    assert plain["open_seconds"] is None and plain["healthy_open_share"] is None


def test_changes_after_the_range_leave_its_days_as_they_were():
    """build() may be given a longer history than the range: what came after its last
    day neither shortens nor recolours it."""
    day = "2026-06-01"
    changes = [
        *run_from(day),
        (at("2026-06-03", 9), HEALTH_UNHEALTHY),
        (at("2026-06-03", 10), HEALTH_HEALTHY),
    ]
    (only,) = report(day, day, changes, now=at("2026-06-05"))["days"]
    assert only["healthy_seconds"] == DAY
    assert only["unhealthy_seconds"] == only["longest_outage_seconds"] == 0
    assert only["unmonitored_seconds"] == 0
