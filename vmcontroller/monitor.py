"""The watchdog: heartbeat deadline and VM lifecycle turned into recovery.

One daemon thread owns every automatic decision. It sleeps on a condition
variable until the next thing that can happen (the heartbeat deadline, the
end of a grace period, a paused VM's deadline, the safety poll, a guest's
request) or until a libvirt lifecycle event says the VM's state changed, so
a timeout is acted on within milliseconds and an idle controller costs
nothing. What is due is decided by ``decide.decide``, a pure function of the
record this object keeps; this module holds the thread, the locks and the
side effects.

Recovery and staff actions share one path (``_run_exclusive``): a restart
asked for while another is under way joins it instead of reverting twice.
What staff set (maintenance, manual stop) and the guard's count live in the
state file, written by a StateWriter: nothing here waits for the disk under
the lock that heartbeats and status take, and a disk that refuses writes
costs history, never a recovery. Status is answered from what this object
already knows, so a dashboard polling every second starts no virsh process
and a hung libvirtd cannot slow it down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from . import decide as rules
from . import report as reports
from .alerts import Alerts, Message
from .config import Config
from .decide import UNKNOWN, StartupFacts, Watch, startup_plan
from .errors import Busy, Conflict, NotInitialised
from .guard import RecoveryGuard
from .loglines import RepeatLimiter
from .schedule import Moment
from .screenwatch import Look
from .statewriter import Listener, StateWriter
from .store import Event, Store
from .virsh import LifecycleEvent, VirshError, run_command
from .vm import (
    CRASHED,
    NOT_FOUND,
    PAUSED,
    RUNNING,
    SHUT_OFF,
    Domain,
    RevertNeedsStaff,
    RevertResult,
    StartResult,
)
from .vocab import (
    ALERT_CRASH_RESTART,
    ALERT_GUARD_TRIPPED,
    ALERT_LIBVIRT_UNREACHABLE,
    ALERT_RECOVERY_FAILED,
    API,
    AUTOMATIC_TRIGGERS,
    FAILED,
    GUARD_FAILED,
    HEALTH_HEALTHY,
    HEALTH_STAFF,
    HEALTH_START,
    HEALTH_STOP,
    HEALTH_UNHEALTHY,
    HEARTBEAT_TIMEOUT,
    PROGRESS_STALLED,
    RECOVERY_ACTIONS,
    REFUSED,
    SCHEDULE_CLOSE,
    SCHEDULE_CLOSED_STATE,
    SCHEDULE_MAINTENANCE,
    SCHEDULE_OPEN,
    SCHEDULE_OPEN_STATE,
    SCHEDULE_TRIGGERS,
    SCREEN,
    SKIPPED,
    STARTUP,
    SUCCEEDED,
    VM_CRASHED,
    VM_PAUSED,
    VM_STOPPED,
)

log = logging.getLogger(__name__)

#: The thread wakes at least this often, so a supervisor (or systemd's
#: watchdog) can tell a live monitor from a stuck one.
MAX_SLEEP = 5.0
#: How long a staff action waits for its record to reach the disk before it
#: answers; a disk that refuses writes is not waited for at all.
FLUSH_WAIT = 2.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: How often the thread notes that it is alive (a flag in the state file): after a crash,
#: the availability report dates the controller's end at the last of these.
ALIVE_EVERY = 60.0
#: The opening hours are looked at again at least this often, so that a wall clock that
#: jumps (NTP after a dead CMOS battery, an admin's date -s) is noticed within it.
SCHEDULE_RECHECK = 30.0


def _wallclock() -> datetime:
    return datetime.now().astimezone()


def host_boot_id() -> str | None:
    """The kernel's id of this boot: it changes when the host restarts, not the controller."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def longest_locked_operation(config: Config) -> float:
    """The longest a single operation may hold the VM's lock: a long virsh command
    (a revert or snapshot) and the quick ones around it."""
    return config.virsh_long_timeout + 2 * config.virsh_timeout


class Monitor:
    """Heartbeats, VM state and every action on the VM, for one domain."""

    def __init__(
        self,
        domain: Domain,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = _wallclock,
        boot_id: Callable[[], str | None] = host_boot_id,
        schedule_recheck: float = SCHEDULE_RECHECK,
    ):
        self.domain = domain
        self.store = StateWriter(store)
        self.timeout = config.heartbeat_timeout
        self.grace = config.vm_startup_heartbeat_delay
        self.poll_interval = config.state_poll_interval
        self.fallback_poll_interval = config.heartbeat_check_interval
        self.busy_timeout = config.api_busy_timeout
        self.longest_operation = longest_locked_operation(config)
        self.always_clean_start = config.always_clean_start
        self.post_revert_command = config.post_revert_command
        self.post_revert_timeout = config.post_revert_timeout
        self._clock = clock
        self._wallclock = wallclock
        self._boot_id = boot_id
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        saved = self.store.get("auto_revert_enabled")
        if saved is None:
            saved = config.auto_revert_enabled  # the config only seeds the very first start
            self.store.put("auto_revert_enabled", saved)
        self._auto_revert: bool = bool(saved)
        self._manual_stop: bool = bool(self.store.get("manual_stop", False))
        self._healthy_saved: bool = bool(self.store.get("vm_healthy", False))
        # The artwork's health as the report counts it: not healthy until a heartbeat of
        # this run; _health is the last change queued for the health table (None before
        # start(), when nothing is recorded), _health_at its wall-clock time.
        self._healthy_now = False
        self._health: str | None = None
        self._health_at = 0.0
        self._next_alive = 0.0
        self.guard = RecoveryGuard(
            self.store,
            config.max_recoveries,
            config.recovery_window,
            config.recovery_backoff_initial,
            config.recovery_backoff_max,
            clock=clock,
            wallclock=lambda: wallclock().timestamp(),
        )
        self._refusal_log = RepeatLimiter(clock=clock)
        # What to tell people (alerts.py); the courier (outbox.py) takes its messages.
        self._alerts = Alerts(
            vm=domain.name,
            min_interval=config.notify_min_interval,
            unhealthy_after=config.notify_unhealthy_minutes * 60,
        )
        self._notification_status: Callable[[], dict[str, Any] | None] = lambda: None
        self._screen_status: Callable[[], dict[str, Any] | None] = lambda: None
        self._w = Watch(
            timeout=self.timeout,
            armed_at=clock(),
            progress_timeout=config.heartbeat_progress_timeout or None,
        )
        # The heartbeats' progress value (its last change is _w.last_progress), and the
        # screen rule's failure waiting to be acted on: its words and the screenshot.
        self._progress: str | None = None
        self._progress_wall: datetime | None = None
        self._screen_failure: tuple[str, bytes] | None = None
        #: Where the screenshot that caused a recovery goes, with the history row's id.
        self.keep_evidence: Callable[[int, bytes], None] = lambda event_id, png: None
        self._started_at = clock()  # last (re)start: is_healthy needs a heartbeat after it
        self._last_hb_wall: datetime | None = None
        self._failure_reported: str | None = None
        self._vm_state = UNKNOWN
        self._state_detail: str | None = "not checked yet"
        self._snapshot_exists: bool | None = None
        self._last_event: LifecycleEvent | None = None
        self._events_connected = False
        self._pending: tuple[str, str] | None = None  # a guest's request, queued
        self._needs_staff = False  # libvirt refuses the revert until staff act
        self._reference_note: str | None = None  # what start-up found of the reference
        self._busy = 0  # operations of ours holding the VM's lock
        #: Heartbeats received since this object was made; read without the lock (metrics).
        self.heartbeats_received = 0
        self._stopping = False
        self._recovery = self._load_recovery_summary()
        self.last_progress = clock()
        # Join semantics for restarts: the job under way, if any.
        self._job_mutex = threading.Lock()
        self._job: Future[bool] | None = None
        self._job_trigger: str | None = None  # who started the job under way
        self._initialised = threading.Event()
        self._thread: threading.Thread | None = None
        # Opening hours (schedule.py). _enforcing: heartbeats are enforced and failures
        # recovered (always, without a schedule); _moment: the schedule's last answer;
        # _applied: the (state, since) whose action was carried out last, kept in the state
        # file so that a restart, or a clock set back, does not repeat an opening.
        self.schedule = config.schedule
        self._schedule_recheck = schedule_recheck
        self._enforcing = True
        self._moment: Moment | None = None
        applied = self.store.get("schedule_applied")
        self._applied: tuple[str, float] | None = (
            (str(applied[0]), float(applied[1]))
            if isinstance(applied, list) and len(applied) == 2
            else None
        )
        if self.schedule is not None:
            self._w.schedule_due = 0.0
            if self._applied is not None:
                self._enforcing = self.schedule.enforcing(self._applied[0])

    def _load_recovery_summary(self) -> dict[str, Any]:
        try:
            last = self.store.events(limit=1, triggers=AUTOMATIC_TRIGGERS, wait=0)
        except Exception as exc:  # an unreadable history must not keep the watchdog down
            log.error("cannot read the history at start: %s", exc)
            last = []
        return {
            "count": self.store.get("recovery_count", 0),
            "last_time": last[0].as_json()["time"] if last else None,
            "last_trigger": last[0].trigger if last else None,
            "last_outcome": last[0].outcome if last else None,
        }

    # ================================================================ life

    def start(self) -> None:
        """Start the state writer and the monitor thread; it first looks at the VM."""
        self.store.start()
        self._open_health_record()
        self._thread = threading.Thread(
            target=self._run, args=(True,), name=f"monitor-{self.domain.name}", daemon=True
        )
        self._thread.start()

    def ensure_thread(self) -> bool:
        """Restart the monitor thread (or the state writer) if it died. False if it had to."""
        self.store.start()
        thread = self._thread
        if thread is None or thread.is_alive() or self._stopping:
            return True
        log.error("the monitor thread of VM %r died; starting a new one", self.domain.name)
        self._thread = threading.Thread(
            target=self._run, args=(False,), name=f"monitor-{self.domain.name}", daemon=True
        )
        self._thread.start()
        return False

    @property
    def thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            if self._health not in (None, HEALTH_STOP):
                self._health = HEALTH_STOP
                self.store.record_health(HEALTH_STOP, self._wall_of_locked(None))
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout)
        self.store.flush(min(timeout, FLUSH_WAIT))

    def close(self, timeout: float = 5.0) -> None:
        """Stop, write what is queued, close the state file."""
        self.stop(timeout)
        self.store.close(timeout)

    @property
    def vm_name(self) -> str:
        return self.domain.name

    @property
    def snapshot_name(self) -> str:
        return self.domain.snapshot_name

    @property
    def initialised(self) -> bool:
        return self._initialised.is_set()

    def wait_initialised(self, timeout: float | None = None) -> bool:
        return self._initialised.wait(timeout)

    def require_initialised(self) -> None:
        if not self._initialised.is_set():
            raise NotInitialised("VM manager not initialized")

    # ================================================================ inputs

    def heartbeat(self, progress: str | None = None) -> dict[str, Any]:
        """Record a heartbeat from the guest, with the artwork's progress value if the
        guest script can see one (a frame counter, a window title).

        Deliberately does not wake the monitor thread: a later heartbeat only
        moves the deadline later, and the thread re-reads it when it wakes, so
        waking it on every heartbeat would cost a context switch for nothing.
        """
        self.require_initialised()
        now = self._clock()
        with self._cond:
            w = self._w
            if w.last_hb is None or w.last_hb < self._started_at:
                log.info(
                    "first heartbeat from VM %r, %.1f s after its (re)start",
                    self.domain.name,
                    now - self._started_at,
                )
            elif w.timeout_reported:
                log.info(
                    "heartbeats from VM %r resumed after %.1f s of silence",
                    self.domain.name,
                    now - w.last_hb,
                )
            w.last_hb = now
            if progress is not None and progress != self._progress:
                self._progress = progress
                self._progress_wall = self._wallclock()
                w.last_progress = now
                w.progress_reported = False
            self.heartbeats_received += 1
            self._last_hb_wall = self._wallclock()
            w.timeout_reported = False
            self._set_healthy_locked(True)
            return self._heartbeat_status_locked(now)

    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        """Called from the event stream's thread: note it, let the monitor look."""
        log.debug("lifecycle event for VM %r: %s %s", event.domain, event.event, event.detail)
        with self._cond:
            self._last_event = event
            if event.event in ("Stopped", "Crashed") and self._vm_state == RUNNING:
                self._vm_state = CRASHED if _is_crash(event) else SHUT_OFF
            self._w.state_dirty = True
            self._cond.notify_all()

    def on_events_connection(self, connected: bool) -> None:
        """While the event stream is down, poll faster; when it comes back, re-read the state."""
        log.info("lifecycle event stream %s", "connected" if connected else "disconnected")
        with self._cond:
            self._events_connected = connected
            self._w.state_dirty = True
            self._cond.notify_all()

    def add_history_listener(self, listener: Listener) -> None:
        """Hear of every change to the history (StateWriter.add_listener): metrics, streams."""
        self.store.add_listener(listener)

    # ================================================================ reads (no virsh)

    def heartbeat_status(self) -> dict[str, Any]:
        self.require_initialised()
        with self._cond:
            return self._heartbeat_status_locked(self._clock())

    def _heartbeat_status_locked(self, now: float) -> dict[str, Any]:
        last = self._w.last_hb
        since = None if last is None else round(max(0.0, now - last), 3)
        healthy = last is not None and last >= self._started_at and now - last <= self.timeout
        return {
            "enabled": self._w.enabled,
            "last_heartbeat": self._last_hb_wall.isoformat() if self._last_hb_wall else None,
            "seconds_since_last": since,
            "is_healthy": healthy,
            "timeout": self.timeout,
            "progress": self._progress_json_locked(now),
        }

    def _progress_json_locked(self, now: float) -> dict[str, Any] | None:
        w = self._w
        if w.progress_timeout is None and self._progress is None:
            return None
        changed = self._progress_wall.isoformat() if self._progress_wall else None
        still = None if w.last_progress is None else round(max(0.0, now - w.last_progress), 3)
        return {
            "value": self._progress,
            "changed_at": changed,
            "seconds_unchanged": still,
            "timeout": w.progress_timeout,
        }

    def status(self) -> dict[str, Any]:
        """The whole picture, from what the monitor already knows."""
        self.require_initialised()
        problem = self.store.problem
        notifications = self._notification_status()  # the courier's lock, not ours
        screen = self._screen_status()  # the screen watcher's
        with self._cond:
            return {
                "vm_name": self.domain.name,
                "vm_state": self._vm_state,
                "vm_is_running": self._vm_state == RUNNING,
                "snapshot_name": self.domain.snapshot_name,
                "snapshot_exists": bool(self._snapshot_exists),
                "heartbeat": self._heartbeat_status_locked(self._clock()),
                "auto_revert_enabled": self._auto_revert,
                # Additive fields, beyond the API reference:
                "vm_state_detail": self._state_detail,
                "stopped_by_staff": self._manual_stop,
                "recovery": {**self._recovery, "guard": self.guard.as_json()},
                "state_file": {"saving": problem is None, "detail": problem},
                "snapshot_detail": self._reference_note,
                "schedule": self._schedule_json_locked(),
                "notifications": notifications,
                "screen": screen,
            }

    def _schedule_json_locked(self) -> dict[str, Any] | None:
        if self.schedule is None or self._moment is None:
            return None
        return {
            **self._moment.as_json(),
            "enforcing": self._enforcing,
            "at_opening": self.schedule.at_opening,
            "at_closing": self.schedule.at_closing,
        }

    def is_open(self, now: datetime | None = None) -> bool:
        """Whether the museum is open at ``now`` (default: the monitor's wall clock): True
        without a schedule, False in closed hours and maintenance windows. For whoever must
        count opening time or keep quiet while the museum is closed (alerts)."""
        if self.schedule is None:
            return True
        moment = self.schedule.at(now if now is not None else self._wallclock())
        return moment.state == SCHEDULE_OPEN_STATE

    def schedule_note(self) -> str | None:
        """What a staff action's answer should add while the schedule does not enforce
        (closed hours, a maintenance window): the action is carried out, not watched."""
        with self._cond:
            moment, enforcing = self._moment, self._enforcing
        if self.schedule is None or moment is None or enforcing:
            return None
        nxt = (
            f"; next change: {moment.next_state} at {moment.next_change.isoformat()}"
            if moment.next_change
            else ""
        )
        return (
            f"the museum is {moment.state} ({moment.why}): the VM is not watched and "
            f"nothing is reverted until opening{nxt}"
        )

    # ---------------------------------------------------------------- notifications

    def take_alerts(self) -> list[Message]:
        """The notification due now, if any (alerts.Alerts): called by the courier every
        second, it also tells the rules the artwork's health and whether the museum is open."""
        wall = self._wallclock()
        is_open, watched = self.is_open(wall), self._watched(wall)
        with self._cond:
            now = self._clock()
            healthy: bool | None = self._healthy_now
            if self._manual_stop or not self._auto_revert or self._health is None:
                healthy = None  # staff's time, or not started: neither an outage nor health
            self._alerts.observe(now, healthy, is_open, wall, watched)
            message = self._alerts.due(now, wall)
        return [] if message is None else [message]

    def ping_wanted(self) -> bool:
        """Whether the dead man's switch should ping: the artwork is healthy, or the museum
        is closed (nothing is expected of it then); silence means someone should look."""
        wall = self._wallclock()
        if not self.is_open(wall):
            return True
        with self._cond:
            return self._healthy_now and not self._stopping

    def set_screen_status(self, status: Callable[[], dict[str, Any] | None]) -> None:
        """Where status finds what the screen watcher sees (screenwatch.py)."""
        self._screen_status = status

    def set_notification_status(self, status: Callable[[], dict[str, Any] | None]) -> None:
        """Where status finds the notifications' state (the courier's)."""
        self._notification_status = status

    def _alert_locked(self, kind: str, detail: str) -> None:
        wall = self._wallclock()
        self._alerts.problem(kind, detail, self._clock(), wall, self._watched(wall))

    def _watched(self, wall: datetime) -> bool:
        """Whether problems are told now or held until opening: closed hours and
        maintenance windows tell nothing, unless the schedule watches when closed."""
        return self.schedule is None or self.schedule.enforcing(self.schedule.at(wall).state)

    def history(
        self, limit: int = 100, since: float | None = None, triggers: Iterable[str] = ()
    ) -> list[Event]:
        """The recorded actions, newest first (raises StoreError if the file is unreadable)."""
        self.require_initialised()
        return self.store.events(limit=limit, since=since, triggers=triggers)

    def report(
        self, since: str | None, until: str | None, tz: tzinfo | None = None
    ) -> dict[str, Any]:
        """The availability report (report.py) of the days from ``since`` to ``until``
        (YYYY-MM-DD, local days); raises report.ReportRangeError for a bad range."""
        self.require_initialised()
        now = self._wallclock().timestamp()
        first, last = reports.date_range(since, until, now, tz)
        begin, end = reports.bounds(first, last, tz)
        transitions = self.store.health(begin, end)
        recoveries = [
            reports.Recovery(when, trigger)
            for when, trigger, action, outcome in self.store.actions_between(
                begin, end, RECOVERY_ACTIONS
            )
            if reports.counts_as_recovery(action, outcome) and trigger not in SCHEDULE_TRIGGERS
        ]
        open_spans = None
        if self.schedule is not None:
            open_spans = [
                (a.timestamp(), b.timestamp())
                for a, b in self.schedule.open_spans(
                    datetime.fromtimestamp(begin).astimezone(),
                    datetime.fromtimestamp(end).astimezone(),
                )
            ]
        days, total = reports.build(first, last, transitions, recoveries, now, tz, open_spans)
        return reports.as_json(self.domain.name, first, last, days, total)

    # ================================================================ staff actions

    def set_auto_revert(self, enabled: bool) -> None:
        self.require_initialised()
        with self._cond:
            changed = enabled != self._auto_revert
            self._auto_revert = enabled
            self.store.put("auto_revert_enabled", enabled)
            self._note_health_locked()
            if enabled and changed:
                # A guest that went quiet during maintenance gets one full
                # timeout before it is reverted, rather than being reverted
                # the instant staff press "enable".
                self._enforce_afresh_locked(self._clock())
            self._cond.notify_all()
        if changed:
            action = "enable_auto_revert" if enabled else "disable_auto_revert"
            self.store.record(
                self.domain.name,
                API,
                action,
                "auto-revert enabled" if enabled else "maintenance mode",
                SUCCEEDED,
                0.0,
            )
            log.info(
                "automatic revert %s",
                "enabled"
                if enabled
                else "disabled (maintenance): failures will be logged, not acted on",
            )
        self.store.flush(FLUSH_WAIT)

    def start_vm(self) -> StartResult:
        """Start through the API: clean start; clears 'stay stopped' and the guard."""
        self.require_initialised()
        result: list[StartResult] = []

        def action() -> StartResult:
            result.append(self.domain.start())
            return result[-1]

        performed = self._run_exclusive(API, "start", "start requested through the API", action)
        self.store.flush(FLUSH_WAIT)
        return result[0] if performed and result else StartResult(reverted=True, was_running=True)

    def restart_vm(self) -> None:
        """Restart through the API; returns once the VM runs again (grace goes on after)."""
        self.require_initialised()
        self._run_exclusive(
            API, "revert", "restart requested through the API", self.domain.revert_and_start
        )
        self.store.flush(FLUSH_WAIT)

    def stop_vm(self) -> bool:
        """Stop through the API; the VM then stays stopped until started again."""
        self.require_initialised()
        with self._operation(API, "stop", "stop requested through the API"):
            with self._cond:
                self._manual_stop = True
                self.store.put("manual_stop", True)
                self._set_healthy_locked(False)
                self._note_health_locked()
                self._w.enabled = False
                self._w.grace_until = None
                self._set_pending_locked(None)
                self._cond.notify_all()
            log.info(
                "VM %r stopped through the API: it stays stopped until started again",
                self.domain.name,
            )
            was_running = self.domain.stop()
            with self._cond:
                self._vm_state = SHUT_OFF
                self._state_detail = None
        self.store.flush(FLUSH_WAIT)
        return was_running

    def create_snapshot(self, name: str) -> bool:
        self.require_initialised()
        with self._operation(API, "snapshot_create", f"snapshot {name!r}", disturbs=True):
            replaced = self.domain.create_snapshot(name)
        if name == self.domain.snapshot_name:
            with self._cond:
                self._snapshot_exists = True
                self._reference_note = None
                if self._needs_staff and self.guard.reset():
                    self._needs_staff = False
                    log.info("a new reference snapshot was taken: automatic recovery resumes")
        return replaced

    def delete_snapshot(self, name: str) -> None:
        self.require_initialised()
        with self._operation(API, "snapshot_delete", f"snapshot {name!r}", disturbs=True):
            self.domain.delete_snapshot(name)
        if name == self.domain.snapshot_name:
            with self._cond:
                self._snapshot_exists = False
            log.warning(
                "the reference snapshot %r was deleted: automatic recovery is impossible "
                "until it is created again",
                name,
            )

    def list_snapshots(self) -> list[str]:
        self.require_initialised()
        names = self.domain.snapshots()
        with self._cond:
            self._snapshot_exists = self.domain.snapshot_name in names
        return names

    # ================================================================ guest requests

    def request_revert(self, trigger: str, reason: str) -> dict[str, Any]:
        """A guest asks for a revert: answered at once, carried out by the monitor thread."""
        self.require_initialised()
        now = self._clock()
        with self._cond:
            refusal = None
            if self._manual_stop:
                refusal = "the VM was stopped by staff; it stays stopped until started again"
            elif not self._auto_revert:
                refusal = "automatic revert is disabled (maintenance)"
            elif not self._enforcing:
                refusal = self._not_enforcing_locked()
            elif self.guard.state == GUARD_FAILED:
                refusal = "the recovery guard tripped; staff must start or restart the VM"
            if refusal is None:
                details = {"action": "revert", "trigger": trigger, "reason": reason}
                busy = self._job is not None or self._pending is not None
                grace_until = self._w.grace_until
                if busy:
                    return {
                        **details,
                        "queued": False,
                        "note": "a revert is already under way or queued",
                    }
                if grace_until is not None and now < grace_until:
                    return {
                        **details,
                        "queued": False,
                        "note": f"the VM was restored {now - self._started_at:.1f} s ago and "
                        f"is in its start-up grace period",
                    }
                self._set_pending_locked((trigger, reason))
                self._cond.notify_all()
                return {**details, "queued": True}
        # A guest script may repeat a refused request every second for hours: one history
        # row per cause and interval (with a count), one log line per cause and interval.
        self.store.record_coalesced(
            self.domain.name, trigger, "revert", reason, REFUSED, error=refusal
        )
        due, suppressed = self._refusal_log.due((trigger, refusal))
        if due:
            log.info(
                "guest request refused (%s): %s: %s%s",
                trigger,
                reason,
                refusal,
                f" ({suppressed} more like it not logged)" if suppressed else "",
            )
        raise Conflict(f"Revert not queued: {refusal}")

    # ================================================================ the one path for changes

    @contextmanager
    def _locked(self, trigger: str) -> Iterator[None]:
        """The VM's lock, waited for a bounded time.

        Staff wait at most ``api_busy_timeout`` and get Busy (503); automatic
        recovery waits as long as one operation may hold the lock. While it is
        held, the guest's silence or pause is ours, not a failure (decide.py).
        """
        lock = self.domain.locked()
        wait = self.busy_timeout if trigger == API else self.longest_operation
        if not lock.acquire(timeout=wait):
            raise Busy(
                f"another operation on VM {self.domain.name!r} has been under way for "
                f"more than {wait:g} s; try again later",
                retry_after=max(1.0, min(wait, 30.0)),
            )
        with self._cond:
            self._busy += 1
            self._w.busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._w.busy = self._busy > 0
                self._cond.notify_all()
            lock.release()

    @contextmanager
    def _operation(
        self, trigger: str, action: str, reason: str, disturbs: bool = False
    ) -> Iterator[list[str]]:
        """Hold the VM's lock and record the action with its outcome and duration.

        The caller may add notes (a forced revert: libvirt's refusal and what
        was done about it); they go into the record's ``error`` field.
        ``disturbs``: the operation may pause the guest (a snapshot): its
        heartbeat deadline restarts, with the grace period, when it ends.
        """
        with self._locked(trigger):
            event_id = self.store.begin(self.domain.name, trigger, action, reason)
            if trigger == SCREEN:
                self._keep_screen_evidence(event_id)
            started = self._clock()
            notes: list[str] = []
            try:
                yield notes
            except BaseException as exc:
                self.store.finish(event_id, FAILED, self._clock() - started, str(exc))
                raise
            else:
                self.store.finish(
                    event_id, SUCCEEDED, self._clock() - started, "; ".join(notes) or None
                )
            finally:
                if disturbs:
                    self._restart_deadline()

    def _keep_screen_evidence(self, event_id: int) -> None:
        """The screenshot that caused this recovery, kept under its history row's id (the
        row points to it); a full disk costs the picture, never the recovery."""
        with self._cond:
            failure, self._screen_failure = self._screen_failure, None
        if failure is None:
            return
        try:
            self.keep_evidence(event_id, failure[1])
        except Exception as exc:
            log.error("cannot keep the screenshot of recovery %d: %s", event_id, exc)

    def _restart_deadline(self) -> None:
        """Our operation may have paused the guest: count its silence from now, after the grace
        period, and look at the VM's state afresh."""
        now = self._clock()
        with self._cond:
            w = self._w
            if w.enabled or w.grace_until is not None:
                w.enabled = False
                w.grace_until = now + self.grace
            w.timeout_reported = False
            w.paused_since = None
            w.paused_reported = False
            w.state_dirty = True
            self._cond.notify_all()

    def _run_exclusive(
        self,
        trigger: str,
        action_name: str,
        reason: str,
        action: Callable[[], Any],
        still_needed: Callable[[], bool] | None = None,
    ) -> bool:
        """Run a start/revert, or join the one already under way.

        Returns True if a restart was performed (by us or the job we joined).
        ``still_needed`` is checked under the domain lock so that an automatic
        recovery decided a moment ago does not undo what staff did since.
        """
        while True:
            with self._job_mutex:
                job = self._job
                owner = job is None
                if owner:
                    job = self._job = Future()
                    self._job_trigger = trigger
                joined = self._job_trigger
            assert job is not None
            if not owner:
                log.info("%s (%s) joins the restart already under way", reason, trigger)
                wait = self.busy_timeout if trigger == API else self.longest_operation
                try:
                    performed = job.result(timeout=wait)
                except FutureTimeout:
                    raise Busy(
                        f"a restart of VM {self.domain.name!r} has been under way for "
                        f"more than {wait:g} s; try again later",
                        retry_after=max(1.0, min(wait, 30.0)),
                    ) from None
                except Exception as exc:
                    # Staff asked for their own action: an automatic recovery's failure
                    # (a missing snapshot, a refused revert) is not its answer. Staff
                    # joining staff share the outcome, so a burst makes one attempt.
                    if trigger == API and joined in AUTOMATIC_TRIGGERS:
                        log.info(
                            "the recovery (%s) that %s joined failed (%s): doing its own %s",
                            joined,
                            reason,
                            exc,
                            action_name,
                        )
                        continue
                    raise
                if performed or still_needed is not None:
                    return performed
                continue  # we joined a recovery that turned out unnecessary; do our own
            try:
                performed = self._perform(trigger, action_name, reason, action, still_needed)
            except BaseException as exc:
                job.set_exception(exc)
                raise
            else:
                job.set_result(performed)
                return performed
            finally:
                with self._job_mutex:
                    self._job = None

    def _perform(
        self,
        trigger: str,
        action_name: str,
        reason: str,
        action: Callable[[], Any],
        still_needed: Callable[[], bool] | None,
    ) -> bool:
        automatic = trigger in AUTOMATIC_TRIGGERS
        with self._locked(trigger):  # re-entrant: _operation takes it again, with the record
            if still_needed is not None and not still_needed():
                log.info("recovery (%s) no longer needed: %s", trigger, reason)
                return False
            with self._cond:
                self._w.enabled = False
                self._w.grace_until = None
                self._set_pending_locked(None)
                self._set_healthy_locked(False)
                if automatic:
                    self.guard.started()
            log.info("restoring VM %r (%s): %s", self.domain.name, trigger, reason)
            started = self._clock()
            try:
                with self._operation(trigger, action_name, reason) as notes:
                    note = _note_of(action())
                    if note:
                        notes.append(note)
                        log.info("VM %r (%s): %s", self.domain.name, trigger, note)
            except BaseException as exc:
                self._after_failure(trigger, automatic, started, exc)
                raise
            self._after_success(trigger, action_name, automatic, started)
        if action_name == "revert" or trigger == STARTUP:
            self._run_post_revert_command()
        return True

    def _after_success(
        self, trigger: str, action_name: str, automatic: bool, started: float
    ) -> None:
        now = self._clock()
        with self._cond:
            if trigger == API and self.guard.reset():
                log.info("recovery guard cleared by staff")
                self._needs_staff = False
            elif automatic:
                self.guard.succeeded()
            if self._manual_stop:
                self.store.put("manual_stop", False)
            self._manual_stop = False
            self._note_health_locked()
            self._started_at = now
            self._vm_state = RUNNING
            self._state_detail = None
            if action_name == "revert":
                self._snapshot_exists = True
            w = self._w
            w.paused_since = None
            w.paused_reported = False
            w.timeout_reported = False
            self._failure_reported = None
            self._hold_until_locked(0.0)
            w.grace_until = now + self.grace
            if automatic:
                self._note_recovery_locked(trigger, SUCCEEDED)
            self._cond.notify_all()
        log.info(
            "VM %r running again after %.2f s (%s); heartbeats enforced in %g s",
            self.domain.name,
            now - started,
            trigger,
            self.grace,
        )

    def _after_failure(
        self, trigger: str, automatic: bool, started: float, exc: BaseException
    ) -> None:
        now = self._clock()
        needs_staff = automatic and isinstance(exc, RevertNeedsStaff)
        with self._cond:
            self._arm_locked(now)  # the deadline restarts; the guard's backoff spaces retries
            delay = self.guard.failed() if automatic else 0.0
            if needs_staff:
                # Retrying cannot help: stop until staff act, and say what they must do.
                self.guard.give_up(str(exc))
                self._needs_staff = True
                self._w.timeout_reported = True
            self._hold_until_locked(now + delay)
            if automatic:
                self._note_recovery_locked(trigger, FAILED)
                self._alert_locked(ALERT_RECOVERY_FAILED, f"{trigger}: {exc}")
            if needs_staff:
                self._alert_locked(
                    ALERT_GUARD_TRIPPED,
                    f"{exc}; staff must start or restart the VM or take the reference "
                    f"snapshot again",
                )
            if not needs_staff:
                self._w.timeout_reported = False  # time out again once the backoff is over
            self._w.progress_reported = needs_staff
            self._w.screen_failed = False  # the watcher tells again if it still fails
            self._w.state_dirty = not automatic
            self._cond.notify_all()
        retry = f"; next attempt in {delay:g} s at the earliest" if automatic else ""
        if needs_staff:
            retry = (
                "; automatic recovery stops until staff start or restart the VM or "
                "take the reference snapshot again"
            )
        log.error(
            "restoring VM %r (%s) failed after %.2f s: %s%s",
            self.domain.name,
            trigger,
            now - started,
            exc,
            retry,
        )

    def _note_recovery_locked(self, trigger: str, outcome: str, attempted: bool = True) -> None:
        count = self._recovery["count"] + (1 if attempted else 0)
        if attempted:
            self.store.put("recovery_count", count)
        self._recovery = {
            "count": count,
            "last_time": self._wallclock().isoformat(),
            "last_trigger": trigger,
            "last_outcome": outcome,
        }

    def _hold_until_locked(self, until: float) -> None:
        w = self._w
        w.hold_until = until
        if until:
            w.next_poll = min(w.next_poll, until)

    def _set_pending_locked(self, request: tuple[str, str] | None) -> None:
        """Queue a guest's request or drop it. The request and the flag decide.py reads
        change together: a flag left set with no request would have the thread decide
        to run it at every step, a busy loop."""
        self._pending = request
        self._w.pending = request is not None

    def _enforce_afresh_locked(self, now: float) -> None:
        """Heartbeats count again after a time they did not (maintenance, a maintenance
        window): silence and pauses from before are forgotten, and the VM is looked at anew."""
        w = self._w
        w.armed_at = now
        w.timeout_reported = False
        w.paused_since = None
        w.paused_reported = False
        w.state_dirty = True
        self._failure_reported = None

    def _arm_locked(self, now: float) -> None:
        self._w.enabled = True
        self._w.armed_at = now
        self._w.grace_until = None
        self._w.progress_reported = False
        self._w.screen_failed = False  # the screen is judged afresh from the arming on
        self._screen_failure = None

    def _set_healthy_locked(self, healthy: bool, at: float | None = None) -> None:
        """Remember, across restarts of the controller, whether the guest was healthy when
        last seen (decide.startup_plan adopts a healthy running VM), and record a change
        of health for the report, dated ``at`` (the monotonic clock; None: now). Queued,
        not written; a heartbeat while healthy changes nothing here."""
        if healthy != self._healthy_now:
            self._healthy_now = healthy
            self._note_health_locked(at)
        if healthy != self._healthy_saved:
            self._healthy_saved = healthy
            self.store.put("vm_healthy", healthy)

    def _note_health_locked(self, at: float | None = None) -> None:
        """Queue a row of the health table if the health as the report counts it changed:
        staff's flags first (planned, not an outage), then the heartbeats' verdict."""
        if self._health is None or self._stopping:
            return  # not started, or stopped: the table's last word is start or stop
        if self._manual_stop or not self._auto_revert or not self._enforcing:
            state = HEALTH_STAFF  # closed hours are planned too
        else:
            state = HEALTH_HEALTHY if self._healthy_now else HEALTH_UNHEALTHY
        if state != self._health:
            self._health = state
            self.store.record_health(state, self._wall_of_locked(at))

    def _wall_of_locked(self, at: float | None) -> float:
        """A monotonic time as wall-clock seconds, never before the last recorded change
        (the table's order is the order of the changes)."""
        wall = self._wallclock().timestamp()
        if at is not None:
            wall -= max(0.0, self._clock() - at)
        wall = max(wall, self._health_at)
        self._health_at = wall
        return wall

    def _open_health_record(self) -> None:
        """At start: close the previous run's record (a crash left it open: its end is dated
        at its last sign of life) and open this run's, unhealthy until a heartbeat."""
        try:
            last = self.store.store.last_health()
            alive = self.store.get("alive_at")
        except Exception as exc:  # an unreadable file must not keep the watchdog down
            log.error("cannot read the health record at start: %s", exc)
            last, alive = None, None
        with self._cond:
            self._health_at = 0.0
            if last is not None and last[1] != HEALTH_STOP:
                ended = max(last[0], float(alive) if isinstance(alive, (int, float)) else 0.0)
                self.store.record_health(HEALTH_STOP, ended)
                self._health_at = ended
                when = datetime.fromtimestamp(ended).astimezone().isoformat(timespec="seconds")
                self._alert_locked(
                    ALERT_CRASH_RESTART,
                    f"the previous run ended without shutting down (last sign of life {when})",
                )
            self._health = HEALTH_START
            self.store.record_health(HEALTH_START, self._wall_of_locked(None))
            self._note_health_locked()

    def _note_alive_locked(self, now: float) -> None:
        if now >= self._next_alive:
            self._next_alive = now + ALIVE_EVERY
            self.store.put("alive_at", self._wallclock().timestamp())

    def _run_post_revert_command(self) -> None:
        """The site's own command after a revert (e.g. flush conntrack), off the hot path."""
        if not self.post_revert_command:
            return
        names = {"vm_name": self.domain.name, "snapshot_name": self.domain.snapshot_name}
        argv = [
            arg.replace("{vm_name}", names["vm_name"]).replace(
                "{snapshot_name}", names["snapshot_name"]
            )
            for arg in self.post_revert_command
        ]

        def run() -> None:
            began = self._clock()
            result = run_command(
                argv,
                self.post_revert_timeout,
                env={
                    "VMCTL_VM_NAME": names["vm_name"],
                    "VMCTL_SNAPSHOT_NAME": names["snapshot_name"],
                },
            )
            took = self._clock() - began
            if result.returncode == 0:
                log.info(
                    "post_revert_command %s succeeded in %.2f s%s",
                    argv,
                    took,
                    f": {result.output}" if result.output else "",
                )
            elif result.returncode is None:
                log.error(
                    "post_revert_command %s killed after %g s: %s",
                    argv,
                    self.post_revert_timeout,
                    result.output,
                )
            else:
                log.error(
                    "post_revert_command %s exited with status %d in %.2f s: %s",
                    argv,
                    result.returncode,
                    took,
                    result.output,
                )

        threading.Thread(target=run, name="post-revert-command", daemon=True).start()

    # ================================================================ the thread

    def _run(self, initialise: bool) -> None:
        if initialise:
            try:
                self._initialise()
            except Exception:
                log.exception("could not prepare VM %r at start", self.domain.name)
                with self._cond:
                    self._arm_locked(self._clock())
            finally:
                self._initialised.set()
        while True:
            try:
                if not self._step():
                    return
            except Exception:
                # The watchdog must outlive any surprise; wait a little so a
                # persistent failure cannot spin.
                log.exception("monitor step failed; continuing")
                with self._cond:
                    self._cond.wait(self.fallback_poll_interval)

    def _initialise(self) -> None:
        """Look at the VM once and decide how to take it over (decide.startup_plan)."""
        name = self.domain.name
        self.store.mark_interrupted()
        state = self._refresh_state()
        boot = self._boot_id()
        saved_boot = self.store.get("boot_id")
        with self._cond:
            facts = StartupFacts(
                vm_state=state,
                snapshot_exists=bool(self._snapshot_exists),
                stopped_by_staff=self._manual_stop,
                auto_revert=self._auto_revert,
                healthy_when_last_seen=self._healthy_saved,
                same_boot=boot is not None and boot == saved_boot,
                always_clean_start=self.always_clean_start,
            )
        self.store.put("boot_id", boot)
        plan = startup_plan(facts)
        if self.schedule is not None and plan != rules.WAIT:
            # A PC that was off at opening time catches up now; one that restarts within
            # the same opening period does not open again (the state file says it did).
            moment, new = self._look_at_schedule()
            if new:
                self._apply_schedule(moment)
                if moment.state == SCHEDULE_OPEN_STATE and moment.opening:
                    return  # the opening action was this start (or staff's flags won)
            with self._cond:
                enforcing = self._enforcing
            if not enforcing:
                log.info(
                    "the schedule says %s: VM %r left as it is (%s), not watched",
                    moment.state,
                    name,
                    state,
                )
                with self._cond:
                    self._w.enabled = False
                return
        if plan == rules.WAIT:
            if state == UNKNOWN:
                log.error(
                    "libvirt did not answer at start (%s); will keep trying", self._state_detail
                )
            else:
                log.error("VM %r is not defined in libvirt; waiting for it to appear", name)
        elif plan == rules.STAY_STOPPED:
            log.warning(
                "VM %r was stopped by staff before the controller restarted: it stays "
                "%s until started again",
                name,
                state,
            )
            with self._cond:
                self._w.enabled = False
            return
        elif plan == rules.LEAVE:
            log.warning(
                "automatic revert is disabled (maintenance): VM %r left as it is (%s)", name, state
            )
        elif plan == rules.ADOPT:
            self._adopt()
            return
        elif plan == rules.REVERT:
            self._repair_reference()
            try:
                self._perform(
                    STARTUP,
                    "revert",
                    f"controller started: clean start from the "
                    f"snapshot ({_clean_start_reason(facts)})",
                    self.domain.revert_and_start,
                    None,
                )
                return
            except Exception:
                pass  # logged and recorded by _perform; the monitor retries like any failure
        else:
            log.warning(
                "snapshot %r of VM %r does not exist: automatic recovery is impossible "
                "until it is created",
                self.domain.snapshot_name,
                name,
            )
            if plan == rules.BOOT:
                try:
                    self._perform(
                        STARTUP,
                        "start",
                        "controller started: booting the VM",
                        self.domain.start,
                        None,
                    )
                    return
                except Exception:
                    pass
        with self._cond:
            self._started_at = self._clock()
            self._arm_locked(self._clock())

    # ================================================================ opening hours

    def _look_at_schedule(self) -> tuple[Moment, bool]:
        """The schedule's answer now (noted for status), and whether it is a change not
        carried out yet: one that began later than the last one applied. A clock set back
        into an earlier period therefore repeats nothing, and a clock that jumps forward
        carries out only the change it lands in (an opening it skipped is over)."""
        assert self.schedule is not None
        wall = self._wallclock()
        moment = self.schedule.at(wall)
        now = self._clock()
        with self._cond:
            self._moment = moment
            wait = self._schedule_recheck
            if moment.next_change is not None:
                wait = min(wait, max(0.0, (moment.next_change - wall).total_seconds()))
            self._w.schedule_due = now + wait
            applied = self._applied
        return moment, applied is None or moment.since.timestamp() > applied[1]

    def _check_schedule(self) -> None:
        moment, new = self._look_at_schedule()
        if new:
            self._apply_schedule(moment)

    def _apply_schedule(self, moment: Moment) -> None:
        """Carry out a change of the schedule. It is noted as done before the action, so a
        crash in the middle does not repeat it at the next start (the history shows the
        action interrupted, and the watchdog brings the VM back as after any failure)."""
        assert self.schedule is not None
        enforcing = self.schedule.enforcing(moment.state)
        since = moment.since.timestamp()
        with self._cond:
            self._applied = (moment.state, since)
            self.store.put("schedule_applied", [moment.state, since])
            was_enforcing = self._enforcing
            self._enforcing = enforcing
            if not enforcing:
                self._w.enabled = False
                self._w.grace_until = None
                self._set_pending_locked(None)
            self._note_health_locked()
            self._cond.notify_all()
        log.info(
            "schedule: %s since %s (%s); heartbeats %s",
            moment.state,
            moment.since.isoformat(),
            moment.why,
            "enforced" if enforcing else "not enforced",
        )
        if moment.state == SCHEDULE_OPEN_STATE:
            if moment.opening:
                self._at_opening(moment)
            elif not was_enforcing:
                self._resume_enforcing(moment)
        elif moment.state == SCHEDULE_CLOSED_STATE:
            self._at_closing(moment)
        else:
            self.store.record(
                self.domain.name,
                SCHEDULE_MAINTENANCE,
                "maintenance_window",
                f"{moment.why}: the VM is left as it is and not watched",
                SUCCEEDED,
                0.0,
            )

    def _at_opening(self, moment: Moment) -> None:
        """A fresh start for the day through the recovery path (the VM's lock, the history),
        not counted by the restart-loop guard. Staff's stop and maintenance win."""
        assert self.schedule is not None
        revert = self.schedule.at_opening == "revert"
        action_name = "revert" if revert else "start"
        reason = f"opening time: {moment.why}"
        with self._cond:
            manual, auto = self._manual_stop, self._auto_revert
        if manual or not auto:
            why = (
                "the VM was stopped by staff: it stays stopped until started through the API"
                if manual
                else "automatic revert is disabled (maintenance): the VM is left as it is"
            )
            log.warning("VM %r: %s; not done: %s", self.domain.name, reason, why)
            self.store.record(
                self.domain.name, SCHEDULE_OPEN, action_name, reason, SKIPPED, error=why
            )
            return
        action = self.domain.revert_and_start if revert else self.domain.keep_running
        try:
            self._run_exclusive(SCHEDULE_OPEN, action_name, reason, action)
        except Exception as exc:
            # Recorded by _perform; the VM is now watched, so the watchdog takes over.
            log.error("VM %r: %s: %s failed: %s", self.domain.name, reason, action_name, exc)
            with self._cond:
                self._w.state_dirty = True
                self._cond.notify_all()

    def _resume_enforcing(self, moment: Moment) -> None:
        """A maintenance window ended within opening hours: the guest gets the grace period,
        then its heartbeats count again (as when staff end maintenance)."""
        now = self._clock()
        with self._cond:
            self._w.enabled = False
            self._w.grace_until = now + self.grace
            self._enforce_afresh_locked(now)
            self._cond.notify_all()
        self.store.record(
            self.domain.name,
            SCHEDULE_OPEN,
            "enforce",
            f"{moment.why}: heartbeats enforced again in {self.grace:g} s",
            SUCCEEDED,
            0.0,
        )

    def _at_closing(self, moment: Moment) -> None:
        """Stop the VM, or leave it running unwatched (``at_closing``)."""
        assert self.schedule is not None
        reason = f"closing time: {moment.why}"
        if self.schedule.at_closing == "keep_running":
            self.store.record(
                self.domain.name,
                SCHEDULE_CLOSE,
                "unwatch",
                f"{reason}: the VM keeps running, not watched",
                SUCCEEDED,
                0.0,
            )
            return
        with self._cond:
            auto = self._auto_revert
        if not auto:
            why = "automatic revert is disabled (maintenance): the VM is left as it is"
            log.warning("VM %r: %s; not stopped: %s", self.domain.name, reason, why)
            self.store.record(self.domain.name, SCHEDULE_CLOSE, "stop", reason, SKIPPED, error=why)
            return
        try:
            with self._operation(SCHEDULE_CLOSE, "stop", reason):
                self.domain.stop()
                with self._cond:
                    self._vm_state = SHUT_OFF
                    self._state_detail = None
                    self._set_healthy_locked(False)
        except Exception as exc:  # recorded by _operation; the next closing tries again
            log.error("VM %r: %s: stop failed: %s", self.domain.name, reason, exc)
            return
        log.info("VM %r stopped at closing time; it starts again at opening", self.domain.name)

    def _repair_reference(self) -> None:
        """Before the clean start: finish a replacement of the reference snapshot that a crash
        or kill -9 cut off (vm.Domain.repair_reference), and say what was found."""
        try:
            repair = self.domain.repair_reference()
        except VirshError as exc:
            log.error(
                "could not check the reference snapshot %r for a cut-off replacement: %s",
                self.domain.snapshot_name,
                exc.message,
            )
            return
        if repair is None:
            return
        with self._cond:
            self._reference_note = repair.message
        self.store.record(
            self.domain.name, STARTUP, "snapshot_repair", repair.message, SUCCEEDED, 0.0
        )

    def _adopt(self) -> None:
        """Keep the running artwork as it is and wait for its heartbeats (the grace period)."""
        now = self._clock()
        with self._cond:
            self._started_at = now
            self._w.enabled = False
            self._w.grace_until = now + self.grace
            self._cond.notify_all()
        self.store.record(
            self.domain.name,
            STARTUP,
            "adopt",
            "controller started: the VM was running and healthy when last seen, "
            "on this boot of the host; not reverted",
            SUCCEEDED,
            0.0,
        )
        log.info(
            "VM %r is running and was healthy when the controller last saw it: adopted "
            "without a revert; heartbeats enforced in %g s",
            self.domain.name,
            self.grace,
        )

    def _refresh_state(self) -> str:
        """Ask libvirt for the VM's state and snapshots; the one virsh call of a poll."""
        try:
            state, snapshots = self.domain.state_and_snapshots()
            detail, exists = None, self.domain.snapshot_name in snapshots
        except VirshError as exc:
            state, detail, exists = UNKNOWN, f"libvirt did not answer: {exc.message}", None
        with self._cond:
            self._vm_state, self._state_detail = state, detail
            if state == UNKNOWN and detail is not None:
                self._alert_locked(ALERT_LIBVIRT_UNREACHABLE, detail)
            elif detail is None:
                self._alerts.ended(ALERT_LIBVIRT_UNREACHABLE)
            if exists is not None:
                self._snapshot_exists = exists
        return state

    def _step(self) -> bool:
        """Wait for the next thing to do, do it. Returns False when stopping."""
        with self._cond:
            while True:
                now = self._clock()
                self.last_progress = now
                if self._stopping:
                    return False
                self._note_alive_locked(now)
                decision = rules.decide(self._w, now)
                if decision.action is not None:
                    break
                self._cond.wait(min(MAX_SLEEP, max(0.0, decision.wake - now)))
            action = self._begin_locked(decision.action, now)
        if action is not None:
            action()
        return True

    def _begin_locked(self, what: str, now: float) -> Callable[[], None] | None:
        """Note under the lock that ``what`` is being taken care of; return the work to do
        outside it (None when noting was all there was to do)."""
        w = self._w
        if what == rules.CHECK_STATE:
            w.state_dirty = False
            return self._check_vm_state
        if what == rules.RUN_PENDING:
            pending = self._pending
            assert pending is not None, "_set_pending_locked keeps the two together"
            return lambda: self._run_pending(pending)
        if what == rules.PRUNE:
            w.next_prune = now + rules.PRUNE_EVERY
            self.store.prune()
            return None
        if what == rules.SCHEDULE:
            w.schedule_due = float("inf")  # set again by the check
            return self._check_schedule
        if what == rules.GRACE_OVER:
            if not self._enforcing:
                w.grace_until = None  # started in closed hours: nothing to enforce
                return None
            self._arm_locked(w.grace_until if w.grace_until is not None else now)
            log.info(
                "grace period over: heartbeat timeout of %g s enforced for VM %r",
                self.timeout,
                self.domain.name,
            )
            return None
        if what == rules.HEARTBEAT_SILENT:
            return self._on_heartbeat_timeout
        if what == rules.PAUSED_TOO_LONG:
            return self._on_paused_too_long
        if what == rules.PROGRESS_STALLED:
            return self._on_progress_stalled
        if what == rules.SCREEN_FAILED:
            return self._on_screen_failed
        # Reached only if decide.py gains an action this dispatcher lacks: kept so that
        # such a bug fails loudly (the loop logs it) instead of idling the watchdog.
        raise AssertionError(f"unknown decision {what!r}")  # pragma: no cover: a bug guard

    def _timed_out_locked(self) -> bool:
        return rules.timed_out(self._w, self._clock())

    def _may_recover_locked(self) -> bool:
        return (
            self._auto_revert and self._enforcing and not self._manual_stop and not self._stopping
        )

    def _not_enforcing_locked(self) -> str:
        """Why failures are not acted on, in words for logs and answers."""
        if not self._auto_revert:
            return "automatic revert is disabled (maintenance)"
        moment = self._moment
        what = f"{moment.state} ({moment.why})" if moment else "closed"
        return f"the schedule says {what}: nothing is reverted until opening"

    # ---------------------------------------------------------------- actions

    def _run_pending(self, pending: tuple[str, str]) -> None:
        # The request stays visible as pending until the restart job exists, so
        # that a second request in between is not queued again.
        trigger, reason = pending

        def still_needed() -> bool:
            with self._cond:
                return self._may_recover_locked()

        try:
            self._act_on_failure(trigger, reason, still_needed)
        finally:
            with self._cond:
                if self._pending is pending:
                    self._set_pending_locked(None)

    def _on_heartbeat_timeout(self) -> None:
        with self._cond:
            w = self._w
            silent = self._clock() - (w.last_hb if w.last_hb is not None else w.armed_at)
            may_recover = self._may_recover_locked()
            # It became late at the deadline, not when this thread woke to see it.
            self._set_healthy_locked(False, at=rules.heartbeat_deadline(w))
        if not may_recover:
            # Reported once per silence; the next heartbeat clears it.
            self._mark_timeout_reported()
            with self._cond:
                why = self._not_enforcing_locked()
            log.warning(
                "no heartbeat from VM %r for %.1f s (timeout %g s); %s: no action",
                self.domain.name,
                silent,
                self.timeout,
                why,
            )
            return

        def still_needed() -> bool:
            with self._cond:
                return self._timed_out_locked() and self._may_recover_locked()

        self._act_on_failure(
            HEARTBEAT_TIMEOUT,
            f"no heartbeat for {silent:.1f} s (timeout {self.timeout:g} s)",
            still_needed,
            on_refused=self._mark_timeout_reported,
        )

    def _mark_timeout_reported(self) -> None:
        with self._cond:
            self._w.timeout_reported = True

    def _on_progress_stalled(self) -> None:
        with self._cond:
            w = self._w
            since = w.last_progress if w.last_progress is not None else w.armed_at
            still = self._clock() - max(since, w.armed_at)
            value = self._progress

        def still_needed() -> bool:
            with self._cond:
                return rules.progress_stalled(self._w, self._clock()) and (
                    self._may_recover_locked()
                )

        def refused() -> None:
            with self._cond:
                self._w.progress_reported = True

        shown = "no progress value yet" if value is None else f"progress {value!r}"
        self._act_on_failure(
            PROGRESS_STALLED,
            f"{shown} unchanged for {still:.1f} s (limit {self._w.progress_timeout:g} s)",
            still_needed,
            on_refused=refused,
        )

    # ---------------------------------------------------------------- the screen

    def screen_watch(self) -> Look:
        """What the screen watcher needs: whether the VM runs (there is a screen to take),
        whether it is judged now (failures are acted on), and since when (the rules
        count from that arming, so a fresh start is never held to the last one's screen)."""
        with self._cond:
            w = self._w
            running = self._vm_state == RUNNING and not self._stopping
            judged = running and w.enabled and not w.busy and self._may_recover_locked()
            return Look(running, judged, w.armed_at)

    def screen_failed(self, reason: str, png: bytes) -> bool:
        """A screen rule failed: act on it like a heartbeat timeout (same grace period,
        maintenance, schedule and guard). Returns whether it was taken (False: one is
        already waiting, or the screen is not judged now)."""
        with self._cond:
            w = self._w
            if w.screen_failed or not w.enabled or w.busy or not self._may_recover_locked():
                return False
            w.screen_failed = True
            self._screen_failure = (reason, png)
            self._cond.notify_all()
            return True

    def _on_screen_failed(self) -> None:
        with self._cond:
            failure = self._screen_failure
        reason = failure[0] if failure else "a screen rule failed"

        def still_needed() -> bool:
            with self._cond:
                return self._w.screen_failed and self._may_recover_locked()

        def refused() -> None:
            with self._cond:
                self._w.screen_failed = False
                self._screen_failure = None

        self._act_on_failure(SCREEN, reason, still_needed, on_refused=refused)

    def _on_paused_too_long(self) -> None:
        def still_needed() -> bool:
            with self._cond:
                # A pause is never decided on while an operation of ours holds the VM
                # (decide.py), so staff change this only in the microseconds between the
                # decision and the lock; kept so that they win even then.
                watched = self._w.paused_since is not None
                if not watched or not self._may_recover_locked():  # pragma: no cover: race
                    return False
            return self.domain.state() == PAUSED

        def refused() -> None:
            with self._cond:
                self._w.paused_reported = True

        self._act_on_failure(
            VM_PAUSED,
            f"VM paused for more than {self.timeout:g} s",
            still_needed,
            on_refused=refused,
        )

    def _check_vm_state(self) -> None:
        """Re-read the VM's state (after an event or on the safety poll) and act on it.

        It takes no lock on the VM: what it decides is checked again under the
        lock before anything is done, and a hung virsh here must not block
        staff's requests.
        """
        with self._cond:
            previous = self._vm_state
        state = self._refresh_state()
        now = self._clock()
        with self._cond:
            # The next poll counts from the end of this one: a check that took
            # virsh_timeout must not be followed by another at once.
            w = self._w
            interval = self.poll_interval if self._events_connected else self.fallback_poll_interval
            w.next_poll = now + interval
            if state == PAUSED:
                if w.paused_since is None:
                    w.paused_since = now
            else:
                w.paused_since = None
                w.paused_reported = False
            if state == RUNNING:
                self._failure_reported = None
            elif state not in (PAUSED, UNKNOWN):
                self._set_healthy_locked(False)
            last_event = self._last_event
            manual = self._manual_stop
        if previous != state:
            level = logging.WARNING if state == UNKNOWN else logging.INFO
            log.log(
                level,
                "VM %r is %s%s%s",
                self.domain.name,
                state,
                f" (was {previous})" if previous != UNKNOWN else "",
                f": {self._state_detail}" if state == UNKNOWN else "",
            )
        if state in (RUNNING, PAUSED, UNKNOWN) or manual:
            return
        if state == NOT_FOUND:
            self._report_once(
                NOT_FOUND, "VM %r is not defined in libvirt: nothing to recover", self.domain.name
            )
            return
        crashed = state == CRASHED or (last_event is not None and _is_crash(last_event))
        trigger = VM_CRASHED if crashed else VM_STOPPED

        def still_needed() -> bool:
            with self._cond:
                if not self._may_recover_locked():
                    return False
            return self.domain.state() not in (RUNNING, PAUSED, NOT_FOUND)

        self._act_on_failure(
            trigger, f"VM found {state} without a stop through the API", still_needed
        )

    def _act_on_failure(
        self,
        trigger: str,
        reason: str,
        still_needed: Callable[[], bool],
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        with self._cond:
            may_recover = self._may_recover_locked()
            manual = self._manual_stop
            held = self._clock() < self._w.hold_until
        if manual or not may_recover:
            # Noted as dealt with, or the thread would decide on the same failure again at
            # every step (a pause does not end because nobody acts on it).
            if on_refused:
                on_refused()
            if manual:
                return  # staff stopped the VM: whatever it does now is theirs
            with self._cond:
                why = self._not_enforcing_locked()
            self._report_once(trigger, "VM %r: %s; %s: no action", self.domain.name, reason, why)
            return
        if held:
            return  # a failed recovery holds off the next; the poll comes back at hold_until
        with self._cond:
            verdict = self.guard.check()
            if not verdict.allowed and self.guard.state != GUARD_FAILED:
                self._hold_until_locked(self._clock() + (self.guard.retry_in() or 0.0))
        if not verdict.allowed:
            if self.guard.state == GUARD_FAILED and on_refused:
                on_refused()
            if verdict.newly_failed:
                log.error(
                    "VM %r: %s; recovery guard tripped: %s",
                    self.domain.name,
                    reason,
                    verdict.reason,
                )
                self.store.record(
                    self.domain.name, trigger, "revert", reason, REFUSED, error=verdict.reason
                )
                with self._cond:
                    self._note_recovery_locked(trigger, "guard_tripped", attempted=False)
                    self._alert_locked(
                        ALERT_GUARD_TRIPPED,
                        f"{reason}; {verdict.reason}; staff must start or restart the VM",
                    )
            return
        log.warning(
            "VM %r: %s: reverting to snapshot %r",
            self.domain.name,
            reason,
            self.domain.snapshot_name,
        )
        try:
            performed = self._run_exclusive(
                trigger, "revert", reason, self.domain.revert_and_start, still_needed
            )
        except Busy as exc:
            log.error("VM %r: %s: %s", self.domain.name, reason, exc)
            return  # the deadline is still passed: the next step tries again
        except Exception:
            return  # logged and recorded by _perform; the guard spaces the next attempt
        if not performed:
            self.store.record(
                self.domain.name,
                trigger,
                "revert",
                reason,
                SKIPPED,
                error="no longer needed when its turn came",
            )

    def _report_once(self, key: str, message: str, *args: Any) -> None:
        with self._cond:
            if self._failure_reported == key:
                return
            self._failure_reported = key
        log.warning(message, *args)


def _is_crash(event: LifecycleEvent) -> bool:
    """A guest crash, whatever the domain's <on_crash> made of it: "Crashed" when libvirt
    keeps the crashed VM (preserve), "Stopped Crashed" when it destroys it (the default),
    which follows "Crashed" so closely that the monitor's next look sees only that one."""
    return event.event == "Crashed" or (event.event == "Stopped" and event.detail == "Crashed")


def _clean_start_reason(facts: StartupFacts) -> str:
    """Why a starting controller did not adopt the VM, in words for the history."""
    if facts.always_clean_start:
        return "always_clean_start is set"
    if facts.vm_state != RUNNING:
        return f"the VM was {facts.vm_state}"
    if not facts.same_boot:
        return "the host has booted since the controller last ran"
    return "the VM was not healthy when the controller last saw it"


def _note_of(result: object) -> str | None:
    """What a start or revert wants said in its history record (a forced revert)."""
    if isinstance(result, StartResult):
        result = result.revert
    return result.note if isinstance(result, RevertResult) else None
