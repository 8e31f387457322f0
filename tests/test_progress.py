"""The progress rule: heartbeats that carry a progress value which stops changing are a
failure like silence (trigger progress_stalled), decided by decide.py and acted on by
the monitor; the fake virsh and short timeouts, every wait a condition with a deadline.
The same rule drives a real VM in test_screen_real.py."""

from __future__ import annotations

import itertools

from libvirt_env import wait_until
from test_monitor import beating, make_monitor  # noqa: F401 (the fixture)
from waits import stays_false

from vmcontroller import decide as rules
from vmcontroller.vocab import PROGRESS_STALLED


def test_the_progress_deadline_counts_from_the_last_change_or_the_arming():
    far = {"state_dirty": False, "next_poll": 1e9, "next_prune": 1e9}
    watch = rules.Watch(timeout=10.0, enabled=True, armed_at=100.0, progress_timeout=30.0, **far)
    watch.last_hb = 125.0  # heartbeats arrive: silence is not the question
    assert rules.progress_deadline(watch) == 130.0
    assert rules.decide(watch, 129.0).action is None
    assert rules.decide(watch, 129.0).wake <= 130.0
    watch.last_hb = 130.0
    assert rules.decide(watch, 130.0).action == rules.PROGRESS_STALLED
    watch.last_progress = 90.0  # changed before the arming: the arming counts
    assert rules.progress_deadline(watch) == 130.0
    watch.last_progress = 120.0
    assert rules.progress_deadline(watch) == 150.0
    watch.progress_reported = True
    watch.last_hb = 160.0
    assert rules.decide(watch, 160.0).action is None
    off = rules.Watch(timeout=10.0, enabled=True, armed_at=0.0, last_hb=1e9, **far)
    assert rules.progress_deadline(off) == float("inf")
    assert rules.decide(off, 1e9 - 1).action is None


def test_a_stalled_progress_value_is_reverted_and_a_moving_one_is_not(make_monitor):  # noqa: F811
    monitor, runner = make_monitor(heartbeat_timeout=5.0, heartbeat_progress_timeout=1.0)
    counter = itertools.count()
    moving = {"on": True, "value": "0"}

    def beat() -> None:
        if moving["on"]:
            moving["value"] = str(next(counter))
        monitor.heartbeat(progress=moving["value"])

    reverts = runner.count("snapshot-revert")
    with beating(monitor, beat=beat):
        stays_false(
            lambda: runner.count("snapshot-revert") > reverts,
            2.5,
            "a revert while the progress value changes",
        )
        status = monitor.heartbeat_status()["progress"]
        assert status["timeout"] == 1.0 and status["value"] == moving["value"]
        moving["on"] = False  # the artwork froze; its heartbeat script does not
        wait_until(
            lambda: monitor.history(triggers=[PROGRESS_STALLED]), 5, message="a progress revert"
        )
    (row,) = monitor.history(triggers=[PROGRESS_STALLED])
    assert row.action == "revert" and "unchanged for" in row.reason
    assert f"progress {moving['value']!r}" in row.reason


def test_heartbeats_without_progress_are_a_stall_when_the_rule_is_on(make_monitor):  # noqa: F811
    monitor, _ = make_monitor(heartbeat_timeout=5.0, heartbeat_progress_timeout=1.0)
    with beating(monitor):
        wait_until(
            lambda: monitor.history(triggers=[PROGRESS_STALLED]), 5, message="a progress revert"
        )
    (row,) = monitor.history(triggers=[PROGRESS_STALLED], limit=1)
    assert "no progress value yet" in row.reason


def test_without_the_rule_progress_is_only_shown(make_monitor):  # noqa: F811
    monitor, _ = make_monitor()
    assert monitor.heartbeat_status()["progress"] is None
    monitor.heartbeat(progress="frame 12")
    shown = monitor.heartbeat_status()["progress"]
    assert shown["value"] == "frame 12" and shown["timeout"] is None
