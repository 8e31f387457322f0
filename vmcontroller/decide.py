"""The watchdog's decisions, as pure functions of what it knows and the time.

The monitor keeps the thread, the lock and the side effects; what it should
do next, and when to look again, is decided here from a plain record and a
``now`` passed in, so every rule can be tested as a table without threads,
sleeps or libvirt (the way a process supervisor tests its state machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from .vm import NOT_FOUND, RUNNING

#: The VM's state while libvirt does not answer.
UNKNOWN = "unknown"

# ------------------------------------------------------------------ what the loop can do
CHECK_STATE = "check_state"  # ask libvirt for the VM's state (event or safety poll)
RUN_PENDING = "run_pending"  # carry out a guest's queued request
PRUNE = "prune"  # trim the history
GRACE_OVER = "grace_over"  # start enforcing the heartbeat timeout
HEARTBEAT_SILENT = "heartbeat_silent"  # the heartbeat deadline has passed
PAUSED_TOO_LONG = "paused_too_long"  # the VM has been paused longer than the timeout
SCHEDULE = "schedule"  # look at the opening hours (schedule.py): a change may be due
PROGRESS_STALLED = "progress_stalled"  # the heartbeats' progress value stopped changing
SCREEN_FAILED = "screen_failed"  # a screen rule failed (the screen watcher said so)

PRUNE_EVERY = 3600.0


@dataclass
class Watch:
    """What the monitor knows; all times are on its monotonic clock."""

    timeout: float
    state_dirty: bool = True  # an event (or a restart) says: look at the VM again
    pending: bool = False  # a guest's request is queued
    busy: bool = False  # an operation of ours holds the VM (it may be paused)
    hold_until: float = 0.0  # no automatic recovery before this (guard's back-off)
    next_prune: float = 0.0
    next_poll: float = 0.0
    enabled: bool = False  # the heartbeat timeout is enforced
    armed_at: float = 0.0  # silence counts from here at the earliest
    grace_until: float | None = None  # enforcement starts then (after a start or our operation)
    last_hb: float | None = None
    timeout_reported: bool = False  # this silence was acted on (or refused) already
    paused_since: float | None = None
    paused_reported: bool = False
    schedule_due: float = float("inf")  # when to look at the opening hours (inf: none set)
    progress_timeout: float | None = None  # the progress rule (None: off)
    last_progress: float | None = None  # when the heartbeats' progress value last changed
    progress_reported: bool = False  # this stall was acted on (or refused) already
    screen_failed: bool = False  # a screen rule failed and waits to be acted on


@dataclass(frozen=True)
class Decision:
    action: str | None  # None: nothing is due
    wake: float  # when to look again if nothing is due


def heartbeat_deadline(watch: Watch) -> float:
    """When silence becomes a failure: the timeout after the last heartbeat or the arming."""
    last = watch.last_hb if watch.last_hb is not None else watch.armed_at
    return max(last, watch.armed_at) + watch.timeout


def timed_out(watch: Watch, now: float) -> bool:
    return watch.enabled and now >= heartbeat_deadline(watch)


def progress_deadline(watch: Watch) -> float:
    """When an unchanged progress value becomes a failure (inf: the rule is off). Like
    silence, it counts from the arming at the earliest: a value that stood still before
    a revert is not held against the fresh start."""
    if watch.progress_timeout is None:
        return float("inf")
    last = watch.last_progress if watch.last_progress is not None else watch.armed_at
    return max(last, watch.armed_at) + watch.progress_timeout


def progress_stalled(watch: Watch, now: float) -> bool:
    return watch.enabled and now >= progress_deadline(watch)


def decide(watch: Watch, now: float) -> Decision:
    """What is due now, or when to look again.

    While an operation of ours holds the VM, neither silence nor a pause is a
    failure: the guest may be paused by our own snapshot, and the deadline
    restarts (with the grace period) when the operation ends. The periodic
    poll comes last, so a libvirtd slow to answer every poll cannot starve the
    heartbeat deadline.
    """
    if watch.state_dirty:
        return Decision(CHECK_STATE, now)
    if now >= watch.schedule_due:
        return Decision(SCHEDULE, now)
    if watch.pending and not watch.busy and now >= watch.hold_until:
        return Decision(RUN_PENDING, now)
    if now >= watch.next_prune:
        return Decision(PRUNE, now)
    wakes = [watch.next_poll, watch.next_prune, watch.schedule_due]
    if watch.grace_until is not None:
        if now >= watch.grace_until:
            return Decision(GRACE_OVER, now)
        wakes.append(watch.grace_until)
    if not watch.busy:
        if watch.enabled and not watch.timeout_reported:
            deadline = max(heartbeat_deadline(watch), watch.hold_until)
            if now >= deadline:
                return Decision(HEARTBEAT_SILENT, now)
            wakes.append(deadline)
        if watch.enabled and watch.screen_failed:
            if now >= watch.hold_until:
                return Decision(SCREEN_FAILED, now)
            wakes.append(watch.hold_until)
        if watch.enabled and watch.progress_timeout is not None and not watch.progress_reported:
            deadline = max(progress_deadline(watch), watch.hold_until)
            if now >= deadline:
                return Decision(PROGRESS_STALLED, now)
            wakes.append(deadline)
        if watch.paused_since is not None and not watch.paused_reported:
            deadline = max(watch.paused_since + watch.timeout, watch.hold_until)
            if now >= deadline:
                return Decision(PAUSED_TOO_LONG, now)
            wakes.append(deadline)
    if now >= watch.next_poll:
        return Decision(CHECK_STATE, now)
    return Decision(None, min(wakes))


# ------------------------------------------------------------------ at start-up
STAY_STOPPED = "stay_stopped"  # staff stopped it before the controller restarted
LEAVE = "leave"  # maintenance: leave the VM as it is, watch nothing
WAIT = "wait"  # libvirt does not answer, or the VM is not defined yet
ADOPT = "adopt"  # running and healthy when last seen: keep it, wait for heartbeats
REVERT = "revert"  # clean start from the reference snapshot
BOOT = "boot"  # no snapshot and not running: boot it as it is
WATCH = "watch"  # no snapshot but running: watch it

STARTUP_PLANS = (STAY_STOPPED, LEAVE, WAIT, ADOPT, REVERT, BOOT, WATCH)


@dataclass(frozen=True)
class StartupFacts:
    vm_state: str  # libvirt's word, NOT_FOUND or UNKNOWN
    snapshot_exists: bool
    stopped_by_staff: bool
    auto_revert: bool
    healthy_when_last_seen: bool  # the previous run's last word on the guest's heartbeats
    same_boot: bool  # the host has not rebooted since the previous run
    always_clean_start: bool  # the config asks for the old behaviour


def startup_plan(facts: StartupFacts) -> str:
    """How a starting controller treats the VM it finds.

    A restart of the controller alone (an upgrade, a watchdog restart, a
    crash) must not make visitors watch the artwork reboot: a VM that runs
    and was healthy when last seen is adopted. After a host boot, or when
    the VM is not running, the exhibition starts clean from the snapshot.
    """
    if facts.vm_state in (UNKNOWN, NOT_FOUND):
        return WAIT
    if facts.stopped_by_staff:
        return STAY_STOPPED
    if not facts.auto_revert:
        return LEAVE
    running = facts.vm_state == RUNNING
    if (
        running
        and facts.healthy_when_last_seen
        and facts.same_boot
        and not facts.always_clean_start
    ):
        return ADOPT
    if facts.snapshot_exists:
        return REVERT
    return WATCH if running else BOOT
