"""The rules of what is told and when (alerts.py), and the outbox's back-off and bound
(outbox.py), with a made-up clock: no thread, no network, no sleeping."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from libvirt_env import wait_until

from vmcontroller.alerts import Alerts, Message
from vmcontroller.outbox import Courier, Outbox, retry_delay
from vmcontroller.senders import DeliveryError
from vmcontroller.statewriter import StateWriter
from vmcontroller.store import Store
from vmcontroller.vocab import (
    ALERT_CRASH_RESTART,
    ALERT_GUARD_TRIPPED,
    ALERT_LIBVIRT_UNREACHABLE,
    ALERT_RECOVERY_FAILED,
    ALERT_RESOLVED,
    ALERT_UNHEALTHY,
)

WALL = datetime(2026, 11, 26, 14, 0, tzinfo=timezone.utc)


def rules(**kw) -> Alerts:
    return Alerts(
        vm="artwork", min_interval=kw.pop("min_interval", 60.0), unhealthy_after=600.0, **kw
    )


def test_a_storm_is_one_message_sent_after_the_gathering_wait():
    alerts = rules(gather=5.0)
    alerts.problem(ALERT_RECOVERY_FAILED, "first", 100.0, WALL)
    alerts.problem(ALERT_RECOVERY_FAILED, "second", 101.0, WALL)  # the same kind: not again
    alerts.problem(ALERT_GUARD_TRIPPED, "gave up", 102.0, WALL)
    assert alerts.due(104.9, WALL) is None
    message = alerts.due(105.0, WALL)
    assert message is not None
    assert message.kinds == (ALERT_RECOVERY_FAILED, ALERT_GUARD_TRIPPED)
    assert len(message.lines) == 2 and "first" in message.lines[0]
    assert message.subject.startswith("[artwork] 2 problems")
    assert alerts.due(200.0, WALL) is None  # nothing left


def test_after_a_message_the_next_waits_the_minimum_interval():
    alerts = rules(gather=0.0, min_interval=60.0)
    alerts.problem(ALERT_RECOVERY_FAILED, "x", 0.0, WALL)
    assert alerts.due(0.0, WALL) is not None
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "y", 10.0, WALL)
    assert alerts.due(59.0, WALL) is None
    assert alerts.next_due() == 60.0
    later = alerts.due(60.0, WALL)
    assert later is not None and later.kinds == (ALERT_LIBVIRT_UNREACHABLE,)


def test_resolved_follows_a_told_problem_once_and_only_then():
    alerts = rules(gather=0.0, min_interval=0.0)
    alerts.observe(0.0, True, True, WALL)
    assert alerts.due(0.0, WALL) is None  # healthy with nothing told: silence
    alerts.problem(ALERT_GUARD_TRIPPED, "gave up", 1.0, WALL)
    assert alerts.due(1.0, WALL) is not None
    alerts.observe(2.0, True, True, WALL)
    resolved = alerts.due(2.0, WALL)
    assert resolved is not None and resolved.kinds == (ALERT_RESOLVED,)
    alerts.observe(3.0, True, True, WALL)
    assert alerts.due(3.0, WALL) is None
    # a new incident may tell the same kind again
    alerts.problem(ALERT_GUARD_TRIPPED, "again", 4.0, WALL)
    assert alerts.due(4.0, WALL) is not None


def test_a_problem_resolved_before_it_was_sent_goes_out_with_its_resolution():
    alerts = rules(gather=5.0)
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "timeout", 0.0, WALL)
    alerts.observe(1.0, True, True, WALL)
    message = alerts.due(5.0, WALL)
    assert message is not None
    assert message.kinds == (ALERT_LIBVIRT_UNREACHABLE, ALERT_RESOLVED)
    assert message.subject.endswith("since resolved")


def test_unhealthy_counts_only_opening_time_and_not_staff_time():
    alerts = rules(gather=0.0)
    alerts.observe(0.0, False, True, WALL)
    alerts.observe(300.0, False, True, WALL)  # 300 s open and unhealthy
    alerts.observe(5000.0, False, False, WALL)  # closed: not counted
    alerts.observe(6000.0, None, True, WALL)  # staff's time: not counted
    assert alerts.due(6000.0, WALL) is None
    alerts.observe(6299.0, False, True, WALL)  # 299 s more: 599 s
    assert alerts.due(6299.0, WALL) is None
    alerts.observe(6300.0, False, True, WALL)
    message = alerts.due(6300.0, WALL)
    assert message is not None and message.kinds == (ALERT_UNHEALTHY,)
    assert "10 minute(s)" in message.lines[0]


def test_health_in_between_restarts_the_unhealthy_count():
    alerts = rules(gather=0.0)
    alerts.observe(0.0, False, True, WALL)
    alerts.observe(500.0, False, True, WALL)
    alerts.observe(501.0, True, True, WALL)
    alerts.observe(502.0, False, True, WALL)
    alerts.observe(1000.0, False, True, WALL)
    assert alerts.due(1000.0, WALL) is None


def test_problems_while_not_watched_wait_for_opening_and_only_those_still_true_are_told():
    """Closed hours (or a maintenance window) tell nothing: a start after a crash is told
    at opening, libvirt not answering only if it still does not answer then."""
    night = datetime(2027, 3, 2, 3, 0, tzinfo=timezone.utc)
    alerts = rules(gather=0.0, min_interval=0.0)
    alerts.problem(ALERT_CRASH_RESTART, "power cut", 0.0, night, watched=False)
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "no socket", 1.0, night, watched=False)
    alerts.observe(2.0, False, False, night, watched=False)
    assert alerts.due(3600.0, night) is None
    alerts.ended(ALERT_LIBVIRT_UNREACHABLE)  # libvirt answers again before opening
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "again", 3700.0, night, watched=False)
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "and again", 3800.0, night, watched=False)
    alerts.observe(3900.0, False, False, night, watched=False)
    assert alerts.due(3900.0, night) is None
    alerts.observe(25199.0, False, False, night, watched=False)
    alerts.observe(25200.0, False, True, WALL)  # opening, still not answering
    message = alerts.due(25200.0, WALL)
    assert message is not None
    assert message.kinds == (ALERT_CRASH_RESTART, ALERT_LIBVIRT_UNREACHABLE)
    assert message.lines[0].startswith("2027-03-02 03:00:00") and "power cut" in message.lines[0]
    assert "again" in message.lines[1] and "and again" not in message.lines[1]
    assert all("museum was closed" in line for line in message.lines)
    alerts.observe(25201.0, False, True, WALL)
    assert alerts.due(25201.0, WALL) is None  # told once


def test_a_condition_over_before_opening_is_not_told_and_the_watch_when_closed_tells_at_once():
    alerts = rules(gather=0.0, min_interval=0.0)
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "no socket", 0.0, WALL, watched=False)
    alerts.ended(ALERT_LIBVIRT_UNREACHABLE)
    alerts.observe(10.0, False, True, WALL)
    assert alerts.due(10.0, WALL) is None
    alerts.problem(ALERT_LIBVIRT_UNREACHABLE, "watched at night", 20.0, WALL, watched=True)
    message = alerts.due(20.0, WALL)
    assert message is not None and message.kinds == (ALERT_LIBVIRT_UNREACHABLE,)
    alerts.ended(ALERT_LIBVIRT_UNREACHABLE)  # a told problem waits for health, as before
    alerts.observe(30.0, True, True, WALL)
    resolved = alerts.due(30.0, WALL)
    assert resolved is not None and resolved.kinds == (ALERT_RESOLVED,)


def test_a_message_survives_json():
    alerts = rules(gather=0.0)
    alerts.problem(ALERT_GUARD_TRIPPED, "line one", 0.0, WALL)
    message = alerts.due(0.0, WALL)
    assert message is not None
    assert Message.from_json(message.as_json()) == message


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (8, 600.0), (40, 600.0)]
)
def test_retries_double_up_to_the_cap(attempts, delay):
    assert retry_delay(attempts, 5.0, 600.0) == delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_message(n: int) -> Message:
    return Message(f"id-{n}", "artwork", (ALERT_GUARD_TRIPPED,), f"subject {n}", ("x",), "t")


def started_writer(tmp_path) -> StateWriter:
    writer = StateWriter(Store(tmp_path / "state.db"))
    writer.start()
    return writer


def test_a_failing_channel_backs_off_without_holding_up_another(tmp_path):
    clock = Clock()
    got: list[str] = []

    def down(message: Message) -> None:
        raise DeliveryError("connection refused")

    writer = started_writer(tmp_path)
    outbox = Outbox(writer, {"webhook": down, "email": lambda m: got.append(m.id)}, clock=clock)
    outbox.add(make_message(1))
    outbox.add(make_message(2))
    assert outbox.deliver_due() == clock.now + 5.0
    assert got == ["id-1", "id-2"] and len(outbox) == 2  # both wait for the webhook only
    assert outbox.status()["channels"]["webhook"]["last_error"] == "connection refused"
    clock.now += 4.9
    outbox.deliver_due()
    assert outbox.failures() == {"webhook": 1, "email": 0}  # not tried before its time
    clock.now += 0.1
    assert outbox.deliver_due() == clock.now + 10.0  # one attempt per round: doubled
    writer.close()


def test_what_waits_outlives_a_restart_and_is_removed_once_delivered(tmp_path):
    writer = started_writer(tmp_path)
    outbox = Outbox(writer, {"webhook": lambda m: None}, clock=Clock())
    outbox.writer.flush(2, outbox.add(make_message(1)))
    writer.close()

    writer = started_writer(tmp_path)
    got: list[str] = []
    again = Outbox(writer, {"webhook": lambda m: got.append(m.id)}, clock=Clock())
    assert len(again) == 1
    again.deliver_due()
    assert got == ["id-1"]
    writer.close()
    assert Store(tmp_path / "state.db").outbox() == []


def test_the_outbox_is_bounded_and_drops_the_oldest_with_a_log_line(tmp_path, caplog):
    writer = started_writer(tmp_path)
    outbox = Outbox(writer, {"webhook": lambda m: None}, max_kept=3, clock=Clock())
    for n in range(5):
        outbox.add(make_message(n))
    assert len(outbox) == 3
    assert "the oldest ('subject 1') is dropped" in caplog.text
    writer.flush(2)
    assert [row[0] for row in writer.store.outbox()] == [f"id-{n}/webhook" for n in (2, 3, 4)]
    writer.close()


def test_a_channel_no_longer_configured_drops_its_waiting_messages(tmp_path, caplog):
    writer = started_writer(tmp_path)
    writer.flush(2, Outbox(writer, {"email": lambda m: None}).add(make_message(1)))
    assert len(Outbox(writer, {"webhook": lambda m: None})) == 0
    assert "no longer configured" in caplog.text
    writer.close()


def test_a_sender_with_a_bug_counts_as_a_failure_and_does_not_stop_the_others(tmp_path, caplog):
    clock = Clock()
    got: list[str] = []

    def buggy(message: Message) -> None:
        raise KeyError("subject")

    writer = started_writer(tmp_path)
    outbox = Outbox(writer, {"webhook": buggy, "email": lambda m: got.append(m.id)}, clock=clock)
    outbox.add(make_message(1))
    outbox.add(make_message(2))
    assert outbox.deliver_due() == clock.now + 5.0  # backs off like any failure
    assert got == ["id-1", "id-2"]
    assert outbox.failures() == {"webhook": 1, "email": 0}  # tried once this round, not twice
    assert outbox.status()["channels"]["webhook"]["last_error"] == "KeyError: 'subject'"
    assert "sending notification id-1/webhook failed unexpectedly" in caplog.text
    assert len(outbox) == 2  # both still wait for the webhook
    writer.close()


def test_the_courier_outlives_a_surprise_and_delivers_what_comes_next(tmp_path, caplog):
    got: list[str] = []
    asked: list[int] = []

    def take_alerts() -> list[Message]:
        asked.append(1)
        if len(asked) == 1:
            raise RuntimeError("surprise")
        return [make_message(1)] if len(asked) == 2 else []

    writer = started_writer(tmp_path)
    outbox = Outbox(writer, {"webhook": lambda m: got.append(m.id)})
    courier = Courier(outbox, take_alerts)
    courier.start()
    try:
        wait_until(lambda: got == ["id-1"], timeout=20, message="delivery after the surprise")
    finally:
        courier.stop()
        writer.close()
    assert "notification round failed; continuing" in caplog.text
    assert "RuntimeError: surprise" in caplog.text


def test_the_monitor_tells_a_start_after_a_crash_and_libvirt_not_answering_in_one_message(
    tmp_path,
):
    """The monitor's part, on the fake virsh: a state file whose last run did not end
    (its health record stops at 'healthy') and a libvirt that does not answer at start."""
    from fake_virsh import FakeRunner
    from libvirt_env import wait_until

    from vmcontroller.config import build_config
    from vmcontroller.monitor import Monitor
    from vmcontroller.virsh import VirshError
    from vmcontroller.vm import Domain
    from vmcontroller.vocab import ALERT_CRASH_RESTART, HEALTH_HEALTHY, HEALTH_START

    store = Store(tmp_path / "state.db")
    store.record_health(1000.0, HEALTH_START)
    store.record_health(1001.0, HEALTH_HEALTHY)  # then a power cut: no 'stop'
    runner = FakeRunner()
    runner.fail("domstate+snapshot-list", VirshError("failed to connect to the hypervisor"))
    config = build_config({"vm_name": runner.domain, "heartbeat_check_interval": 0.05})
    monitor = Monitor(Domain(runner, runner.domain, "ready"), config, store)
    monitor.start()
    try:
        assert monitor.wait_initialised(5)
        found: list[Message] = []
        wait_until(lambda: found.extend(monitor.take_alerts()) or found, 15, 0.1, "a message")
        [message] = found
        assert message.kinds == (ALERT_CRASH_RESTART, ALERT_LIBVIRT_UNREACHABLE)
        assert "failed to connect to the hypervisor" in message.lines[1]
        assert monitor.take_alerts() == []
    finally:
        monitor.close()
