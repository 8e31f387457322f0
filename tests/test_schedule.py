"""The opening hours as a pure function of the time (schedule.py), with an injected zone.

Europe/Vienna changes its clocks on the last Sundays of March and October; in 2027
those are March 28 and October 31, both Sundays on which the example museum opens.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: an autouse fixture)

from vmcontroller.config import ConfigError, build_config, load_config
from vmcontroller.schedule import Schedule, parse_schedule

VIENNA = ZoneInfo("Europe/Vienna")
MUSEUM = {
    "timezone": "Europe/Vienna",
    "hours": {
        day: "10:00-18:00"
        for day in ("tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    },
    "closed_dates": ["2027-01-01", "2027-12-25"],
    "extra_days": {"2027-04-05": "12:00-17:00"},  # Easter Monday
    "maintenance": [{"start": "2027-03-03 09:00", "end": "2027-03-03 11:00"}],
}


def museum(**changes) -> Schedule:
    schedule = parse_schedule({**MUSEUM, **changes})
    assert schedule is not None
    return schedule


def vienna(*args: int) -> datetime:
    return datetime(*args, tzinfo=VIENNA)


def test_open_within_hours_closed_outside_with_the_next_change():
    s = museum()
    at = s.at(vienna(2027, 3, 2, 12, 0))  # a Tuesday
    assert (at.state, at.since, at.opening) == ("open", vienna(2027, 3, 2, 10, 0), True)
    assert (at.next_state, at.next_change) == ("closed", vienna(2027, 3, 2, 18, 0))
    evening = s.at(vienna(2027, 3, 2, 18, 0))
    assert evening.state == "closed" and evening.next_change == vienna(2027, 3, 3, 9, 0)


def test_monday_is_closed_from_sunday_evening_to_tuesday_morning():
    at = museum().at(vienna(2027, 3, 8, 12, 0))  # a Monday
    assert at.state == "closed" and at.why == "outside opening hours"
    assert at.since == vienna(2027, 3, 7, 18, 0)
    assert at.next_change == vienna(2027, 3, 9, 10, 0)


def test_a_closed_date_is_closed_all_day_and_says_why():
    at = museum().at(vienna(2027, 12, 25, 12, 0))  # a Saturday
    assert at.state == "closed" and "2027-12-25" in at.why
    assert at.next_change == vienna(2027, 12, 26, 10, 0)


def test_an_extra_day_opens_with_its_own_hours():
    s = museum()
    assert s.at(vienna(2027, 4, 5, 11, 0)).state == "closed"
    at = s.at(vienna(2027, 4, 5, 12, 30))
    assert at.state == "open" and at.opening and "extra opening day" in at.why
    assert at.next_change == vienna(2027, 4, 5, 17, 0)


def test_a_maintenance_window_overrides_and_its_end_is_no_opening():
    s = museum()
    before = s.at(vienna(2027, 3, 3, 8, 0))
    assert before.next_state == "maintenance" and before.next_change == vienna(2027, 3, 3, 9, 0)
    during = s.at(vienna(2027, 3, 3, 10, 30))
    assert during.state == "maintenance" and during.next_change == vienna(2027, 3, 3, 11, 0)
    after = s.at(vienna(2027, 3, 3, 11, 0))
    assert after.state == "open" and after.since == vienna(2027, 3, 3, 11, 0)
    assert not after.opening  # the day's opening (10:00) fell into the window


@pytest.mark.parametrize("day", [28, 31])
def test_on_the_days_the_clocks_change_opening_is_once_at_ten_local(day):
    """Last Sunday of March (02:00 -> 03:00) and of October (03:00 -> 02:00), 2027."""
    month = 3 if day == 28 else 10
    s = museum()
    start = datetime(2027, month, day - 1, 20, 0, tzinfo=VIENNA).astimezone(timezone.utc)
    changes = s.changes(start, start + timedelta(hours=24))
    assert [(t.astimezone(VIENNA).strftime("%H:%M"), state) for t, state, _ in changes] == [
        ("10:00", "open"),
        ("18:00", "closed"),
    ]
    opening = changes[0][0]
    assert opening.astimezone(VIENNA).utcoffset() == timedelta(hours=2 if month == 3 else 1)
    # The night hour that repeats in October is closed both times.
    night = datetime(2027, 10, 31, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST, then 02:30 CET
    assert s.at(night).state == s.at(night + timedelta(hours=1)).state == "closed"


def test_a_week_of_changes_lists_openings_and_closings_in_order():
    changes = museum().changes(vienna(2027, 3, 1, 0, 0), vienna(2027, 3, 8, 0, 0))
    states = [state for _, state, _ in changes]
    assert states.count("open") == 6  # Tue..Sun; Wednesday opens when its window ends
    assert states.count("maintenance") == 1
    times = [t for t, _, _ in changes]
    assert times == sorted(times)


def test_without_a_zone_the_pcs_local_zone_is_used():
    s = museum(timezone=None)
    local = datetime(2027, 3, 2, 12, 0).astimezone()
    assert s.at(local).state == "open"
    assert s.at(local).since == datetime(2027, 3, 2, 10, 0).astimezone()


def test_enforcing_follows_state_and_watch_when_closed():
    s = museum()
    assert s.enforcing("open") and not s.enforcing("closed") and not s.enforcing("maintenance")
    watched = museum(watch_when_closed=True, at_closing="keep_running")
    assert watched.enforcing("closed") and not watched.enforcing("maintenance")


def test_the_config_round_trips_and_defaults():
    config = build_config({"vm_name": "art", "schedule": MUSEUM})
    assert config.schedule is not None
    assert (config.schedule.at_opening, config.schedule.at_closing) == ("revert", "stop")
    again = parse_schedule(config.schedule.as_config())
    assert again is not None and again.at(vienna(2027, 4, 5, 13, 0)).state == "open"
    assert build_config({"vm_name": "art"}).schedule is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"hours": {"tuesday": "10-18"}}, "schedule.hours.tuesday='10-18' is invalid: expected"),
        ({"hours": {"tuesday": "18:00-10:00"}}, "schedule.hours.tuesday="),
        ({"hours": {"tuesday": ["10:00-13:00", "12:00-18:00"]}}, "do not overlap"),
        ({"hours": {"tusday": "10:00-18:00"}}, "schedule.hours.tusday="),
        ({"hours": {}}, "schedule.hours={} is invalid"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone='Mars/Olympus' is invalid"),
        ({"closed_dates": ["2027-13-01"]}, "schedule.closed_dates='2027-13-01' is invalid"),
        ({"extra_days": {"2027-12-25": "10:00-12:00"}}, "not also in closed_dates"),
        (
            {"maintenance": [{"start": "2027-03-03 11:00", "end": "2027-03-03 09:00"}]},
            "schedule.maintenance[0].end=",
        ),
        ({"maintenance": [{"start": "tomorrow", "end": "2027-03-03"}]}, "maintenance[0].start"),
        ({"at_opening": "reboot"}, "schedule.at_opening='reboot' is invalid: expected one of"),
        ({"at_closing": "sleep"}, "schedule.at_closing='sleep'"),
        ({"watch_when_closed": "yes"}, "schedule.watch_when_closed='yes'"),
        ({"watch_when_closed": True}, "false while at_closing is stop"),
        ({"opening": "10:00"}, "schedule.opening='10:00' is invalid: expected one of the keys"),
        ({"hours": {"tuesday": "10:00-24:00"}}, "schedule.hours.tuesday='10:00-24:00' is invalid"),
        (
            {"closed_dates": "2027-12-25"},
            "schedule.closed_dates='2027-12-25' is invalid: expected a list",
        ),
        ({"extra_days": ["2027-04-05"]}, "schedule.extra_days=['2027-04-05'] is invalid"),
        ({"maintenance": {"start": "2027-03-03 09:00"}}, "schedule.maintenance={'start'"),
        ({"maintenance": [{"start": "2027-03-03 09:00"}]}, "schedule.maintenance[0]={'start'"),
        (
            {"maintenance": [{"start": "2027-02-30 09:00", "end": "2027-03-01 09:00"}]},
            "schedule.maintenance[0].start='2027-02-30 09:00' is invalid",
        ),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_key_and_value(change, named):
    with pytest.raises(ConfigError) as caught:
        build_config({"vm_name": "art", "schedule": {**MUSEUM, **change}})
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_a_schedule_that_is_not_a_mapping_is_named_without_a_stray_dot():
    with pytest.raises(ConfigError) as caught:
        build_config({"vm_name": "art", "schedule": "9-5"})
    assert str(caught.value).startswith("schedule='9-5' is invalid: expected a mapping")


def test_no_schedule_is_none_and_always_open():
    assert parse_schedule(None) is None


def test_a_start_written_with_an_offset_is_taken_as_written():
    s = museum()
    assert s.local_instant("2027-03-02T10:00+00:00") == datetime(
        2027, 3, 2, 10, 0, tzinfo=timezone.utc
    )
    assert s.local_instant("2027-03-02") == vienna(2027, 3, 2, 0, 0)


def test_yaml_dates_and_timestamps_are_accepted_as_written():
    import yaml

    raw = yaml.safe_load(
        "hours: {tuesday: '10:00-18:00'}\n"
        "closed_dates: [2027-03-02]\n"
        "maintenance: [{start: 2027-03-09 08:00:00, end: '2027-03-09 12:00'}]\n"
    )
    s = parse_schedule({**raw, "timezone": "Europe/Vienna"})
    assert s is not None
    assert s.at(vienna(2027, 3, 2, 12, 0)).state == "closed"
    assert s.at(vienna(2027, 3, 9, 11, 0)).state == "maintenance"


# ------------------------------------------------------------------ the example and the CLI

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "examples" / "museum-schedule.yaml"


def test_the_example_museum_is_open_tuesday_to_sunday_and_closed_on_holidays():
    config, _ = load_config(EXAMPLE, env={})
    s = config.schedule
    assert s is not None and s.timezone == "Europe/Vienna"
    assert s.weekly[0] == () and all(len(day) == 1 for day in s.weekly[1:])
    assert len(s.closed_dates) == 13  # Austria's public holidays of 2027
    assert s.at(vienna(2027, 12, 8, 12, 0)).state == "closed"  # a Wednesday, a holiday
    assert s.at(vienna(2027, 12, 9, 12, 0)).state == "open"
    text = EXAMPLE.read_text()
    assert "per year" in text


def test_the_schedule_command_lists_the_week_from_the_config_alone(tmp_path):
    result = invoke("schedule", "--config", str(EXAMPLE), "--from", "2027-03-27")
    assert result.exit_code == 0, shown(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("time zone: Europe/Vienna; at opening: revert; at closing: stop")
    assert lines[1].startswith("Sat 2027-03-27 00:00  closed")
    # Easter Sunday is the night the clocks change; Easter Monday is a holiday (and a Monday).
    assert "Sun 2027-03-28 10:00  open         opening hours 10:00-18:00 (sunday)" in lines
    assert "Sun 2027-03-28 18:00  closed       outside opening hours" in lines
    after_sunday = lines.index("Sun 2027-03-28 18:00  closed       outside opening hours") + 1
    assert lines[after_sunday].startswith("Tue 2027-03-30 10:00  open")
    assert len([line for line in lines if " open " in line]) == 6  # Sat, Sun, Tue..Fri


def test_the_schedule_command_without_a_schedule_and_with_a_bad_start(tmp_path):
    plain = tmp_path / "c.yaml"
    plain.write_text("vm_name: art\n")
    result = invoke("schedule", "--config", str(plain))
    assert result.exit_code == 0 and "always open" in result.stdout
    result = invoke("schedule", "--config", str(EXAMPLE), "--from", "next tuesday")
    assert result.exit_code == 2 and "--from 'next tuesday' is invalid" in result.stderr


def test_status_shows_the_schedule_and_actions_show_their_note():
    from vmcontroller.cli import _message, _render_status

    text = _render_status(
        {
            "vm_name": "art",
            "vm_state": "shut off",
            "schedule": {
                "state": "closed",
                "why": "outside opening hours",
                "enforcing": False,
                "next_state": "open",
                "next_change": "2027-03-30T10:00:00+02:00",
            },
        }
    )
    assert (
        "Schedule     closed (outside opening hours): not watched; "
        "open at 2027-03-30T10:00:00+02:00"
    ) in text
    answer = {"message": "VM 'art' started successfully", "details": {"note": "closed"}}
    assert _message(answer) == "VM 'art' started successfully\nnote: closed"


def test_open_spans_leave_out_closed_days_and_maintenance_windows():
    s = museum()
    spans = s.open_spans(vienna(2027, 3, 1, 0, 0), vienna(2027, 3, 4, 0, 0))
    local = [(a.astimezone(VIENNA), b.astimezone(VIENNA)) for a, b in spans]
    assert local == [
        (vienna(2027, 3, 2, 10, 0), vienna(2027, 3, 2, 18, 0)),  # Monday closed, Tuesday
        (vienna(2027, 3, 3, 11, 0), vienna(2027, 3, 3, 18, 0)),  # after the window
    ]
    clipped = s.open_spans(vienna(2027, 3, 2, 12, 0), vienna(2027, 3, 2, 13, 0))
    assert [(b - a) for a, b in clipped] == [timedelta(hours=1)]
