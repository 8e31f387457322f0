"""The watchdog's decisions as tables: set the record's fields, call decide, assert.

No thread, no sleep, no libvirt: ``now`` is a number. The behaviours these
rules produce are proven end to end on real libvirt elsewhere
(test_watchdog_faults.py, test_integration.py, test_recovery.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmcontroller import decide as d
from vmcontroller.decide import StartupFacts, Watch, decide, startup_plan

T = 10.0  # heartbeat timeout
# Enforcing, last heartbeat at 100, nothing else due before 1000.
BASE = Watch(
    timeout=T,
    state_dirty=False,
    next_poll=1000.0,
    next_prune=1000.0,
    enabled=True,
    armed_at=50.0,
    last_hb=100.0,
)


@pytest.mark.parametrize(
    "changes, now, action, wake",
    [
        # quiet: sleep until the heartbeat deadline
        ({}, 105.0, None, 110.0),
        ({}, 110.0, d.HEARTBEAT_SILENT, 110.0),
        # a heartbeat older than the arming counts from the arming (after maintenance)
        ({"armed_at": 104.0}, 110.0, None, 114.0),
        # never a heartbeat: the timer runs from the arming
        ({"last_hb": None}, 60.0, d.HEARTBEAT_SILENT, 60.0),
        # reported once per silence
        ({"timeout_reported": True}, 200.0, None, 1000.0),
        # not enforced (staff stop, maintenance start): no deadline
        ({"enabled": False}, 500.0, None, 1000.0),
        # the guard's back-off holds the next attempt
        ({"hold_until": 130.0}, 120.0, None, 130.0),
        ({"hold_until": 130.0}, 130.0, d.HEARTBEAT_SILENT, 130.0),
        # an event comes first, whatever else is due
        ({"state_dirty": True}, 500.0, d.CHECK_STATE, 500.0),
        # the safety poll comes last: a slow libvirtd cannot starve the deadline
        ({"next_poll": 100.0}, 110.0, d.HEARTBEAT_SILENT, 110.0),
        ({"next_poll": 100.0}, 105.0, d.CHECK_STATE, 105.0),
        ({"next_prune": 100.0}, 105.0, d.PRUNE, 105.0),
        # grace period: ends at its time, then enforcement starts
        ({"enabled": False, "grace_until": 120.0}, 115.0, None, 120.0),
        ({"enabled": False, "grace_until": 120.0}, 120.0, d.GRACE_OVER, 120.0),
        # a paused VM fails after the timeout too
        ({"paused_since": 104.0, "last_hb": 103.0, "timeout_reported": True}, 110.0, None, 114.0),
        (
            {"paused_since": 104.0, "last_hb": 103.0, "timeout_reported": True},
            114.0,
            d.PAUSED_TOO_LONG,
            114.0,
        ),
        (
            {"paused_since": 104.0, "paused_reported": True, "timeout_reported": True},
            500.0,
            None,
            1000.0,
        ),
        # a guest's request, unless held by the guard's back-off
        ({"pending": True}, 105.0, d.RUN_PENDING, 105.0),
        ({"pending": True, "hold_until": 130.0}, 105.0, None, 130.0),
        # while an operation of ours holds the VM (it may pause it), silence and pause are ours:
        ({"busy": True}, 500.0, None, 1000.0),
        ({"busy": True, "paused_since": 104.0}, 500.0, None, 1000.0),
        ({"busy": True, "pending": True}, 105.0, None, 1000.0),
        # ... but events and the grace period are still looked at
        ({"busy": True, "state_dirty": True}, 500.0, d.CHECK_STATE, 500.0),
        ({"busy": True, "enabled": False, "grace_until": 120.0}, 121.0, d.GRACE_OVER, 121.0),
    ],
)
def test_decide(changes, now, action, wake):
    decision = decide(replace(BASE, **changes), now)
    assert (decision.action, decision.wake) == (action, wake)


def test_timed_out_needs_enforcement_and_the_deadline():
    assert d.timed_out(BASE, 110.0) and not d.timed_out(BASE, 109.9)
    assert not d.timed_out(replace(BASE, enabled=False), 500.0)


RUNNING_HEALTHY = StartupFacts(
    vm_state="running",
    snapshot_exists=True,
    stopped_by_staff=False,
    auto_revert=True,
    healthy_when_last_seen=True,
    same_boot=True,
    always_clean_start=False,
)


@pytest.mark.parametrize(
    "changes, plan",
    [
        ({}, d.ADOPT),
        ({"same_boot": False}, d.REVERT),  # the host booted: clean start
        ({"healthy_when_last_seen": False}, d.REVERT),
        ({"always_clean_start": True}, d.REVERT),
        ({"vm_state": "paused"}, d.REVERT),
        ({"vm_state": "shut off"}, d.REVERT),
        ({"vm_state": "shut off", "snapshot_exists": False}, d.BOOT),
        ({"healthy_when_last_seen": False, "snapshot_exists": False}, d.WATCH),
        ({"snapshot_exists": False}, d.ADOPT),
        ({"stopped_by_staff": True}, d.STAY_STOPPED),
        ({"auto_revert": False}, d.LEAVE),
        ({"auto_revert": False, "same_boot": False}, d.LEAVE),
        ({"vm_state": "unknown"}, d.WAIT),
        ({"vm_state": "not found", "stopped_by_staff": True}, d.WAIT),
    ],
)
def test_startup_plan(changes, plan):
    assert startup_plan(replace(RUNNING_HEALTHY, **changes)) == plan
