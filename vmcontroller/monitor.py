"""The watchdog: heartbeat deadline and VM lifecycle turned into recovery.

One daemon thread owns every automatic decision. It sleeps on a condition
variable until the next thing that can happen (the heartbeat deadline, the
end of a grace period, a paused VM's deadline, the safety poll) or until a
libvirt lifecycle event says the VM's state changed, so a timeout is acted on
within milliseconds and an idle controller costs nothing.

Recovery and staff actions share one path (``_run_exclusive``): a restart
asked for while another is under way joins it instead of reverting twice.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Callable

from .config import Config
from .virsh import LifecycleEvent, VirshError
from .vm import CRASHED, NOT_FOUND, PAUSED, RUNNING, Domain, StartResult

log = logging.getLogger(__name__)

# Why a recovery or action happened; recorded in logs (and, later, history).
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
VM_STOPPED = "vm_stopped"
VM_CRASHED = "vm_crashed"
VM_PAUSED = "vm_paused"
STARTUP = "startup"
API = "api"


class NotInitialised(Exception):
    """The controller has not finished starting; the API answers 503."""


def _wallclock() -> datetime:
    return datetime.now().astimezone()


class Monitor:
    """Heartbeats, VM state and every action on the VM, for one domain."""

    def __init__(self, domain: Domain, config: Config,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], datetime] = _wallclock):
        self.domain = domain
        self.timeout = config.heartbeat_timeout
        self.grace = config.vm_startup_heartbeat_delay
        self.poll_interval = config.state_poll_interval
        self.fallback_poll_interval = config.heartbeat_check_interval
        self._clock = clock
        self._wallclock = wallclock
        self._cond = threading.Condition()
        # Everything below is guarded by _cond.
        self._auto_revert = config.auto_revert_enabled
        self._manual_stop = False
        self._enabled = False           # heartbeat timeout enforced now
        self._armed_at = 0.0            # when enforcement (re)started
        self._grace_until: float | None = None
        self._started_at = clock()      # last (re)start: is_healthy needs a heartbeat after it
        self._last_hb: float | None = None
        self._last_hb_wall: datetime | None = None
        self._timeout_reported = False
        self._failure_reported: str | None = None
        self._state_dirty = True
        self._next_poll = 0.0
        self._vm_state: str | None = None
        self._paused_since: float | None = None
        self._paused_reported = False
        self._hold_until = 0.0          # no automatic recovery before this (after a failure)
        self._last_event: LifecycleEvent | None = None
        self._events_connected = False
        self._stopping = False
        # Join semantics for restarts: the job under way, if any.
        self._job_mutex = threading.Lock()
        self._job: Future[bool] | None = None
        self._initialised = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{domain.name}", daemon=True)

    # ================================================================ life

    def start(self) -> None:
        """Start the monitor thread; it first brings the VM to a clean start."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def initialised(self) -> bool:
        return self._initialised.is_set()

    def wait_initialised(self, timeout: float | None = None) -> bool:
        return self._initialised.wait(timeout)

    def require_initialised(self) -> None:
        if not self._initialised.is_set():
            raise NotInitialised("VM manager not initialized")

    # ================================================================ inputs

    def heartbeat(self) -> dict[str, Any]:
        """Record a heartbeat from the guest.

        Deliberately does not wake the monitor thread: a later heartbeat only
        moves the deadline later, and the thread re-reads it when it wakes, so
        waking it on every heartbeat would cost a context switch for nothing.
        """
        self.require_initialised()
        now = self._clock()
        with self._cond:
            first = self._last_hb is None or self._last_hb < self._started_at
            if first:
                log.info("first heartbeat from VM %r, %.1f s after its (re)start",
                         self.domain.name, now - self._started_at)
            elif self._timeout_reported:
                log.info("heartbeats from VM %r resumed after %.1f s of silence",
                         self.domain.name, now - self._last_hb)
            else:
                log.debug("heartbeat from VM %r", self.domain.name)
            self._last_hb = now
            self._last_hb_wall = self._wallclock()
            self._timeout_reported = False
            return self._heartbeat_status_locked(now)

    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        """Called from the event stream's thread: note it, let the monitor look."""
        log.debug("lifecycle event for VM %r: %s %s", event.domain, event.event, event.detail)
        with self._cond:
            self._last_event = event
            self._state_dirty = True
            self._cond.notify_all()

    def on_events_connection(self, connected: bool) -> None:
        """While the event stream is down, poll faster; when it comes back, re-read the state."""
        log.info("lifecycle event stream %s", "connected" if connected else "disconnected")
        with self._cond:
            self._events_connected = connected
            self._state_dirty = True
            self._cond.notify_all()

    # ================================================================ reads

    def heartbeat_status(self) -> dict[str, Any]:
        self.require_initialised()
        with self._cond:
            return self._heartbeat_status_locked(self._clock())

    def _heartbeat_status_locked(self, now: float) -> dict[str, Any]:
        since = None if self._last_hb is None else round(max(0.0, now - self._last_hb), 3)
        healthy = (self._last_hb is not None and self._last_hb >= self._started_at
                   and now - self._last_hb <= self.timeout)
        return {
            "enabled": self._enabled,
            "last_heartbeat": self._last_hb_wall.isoformat() if self._last_hb_wall else None,
            "seconds_since_last": since,
            "is_healthy": healthy,
            "timeout": self.timeout,
        }

    def status(self) -> dict[str, Any]:
        """The whole picture; asks libvirt for the VM's state and snapshot."""
        self.require_initialised()
        state = self.domain.state()
        exists = state != NOT_FOUND and self.domain.snapshot_exists()
        with self._cond:
            return {
                "vm_name": self.domain.name,
                "vm_state": state,
                "vm_is_running": state == RUNNING,
                "snapshot_name": self.domain.snapshot_name,
                "snapshot_exists": exists,
                "heartbeat": self._heartbeat_status_locked(self._clock()),
                "auto_revert_enabled": self._auto_revert,
            }

    @property
    def auto_revert_enabled(self) -> bool:
        with self._cond:
            return self._auto_revert

    # ================================================================ staff actions

    def set_auto_revert(self, enabled: bool) -> None:
        self.require_initialised()
        with self._cond:
            changed = enabled != self._auto_revert
            self._auto_revert = enabled
            if enabled and changed:
                # A guest that went quiet during maintenance gets one full
                # timeout before it is reverted, rather than being reverted
                # the instant staff press "enable".
                self._armed_at = self._clock()
                self._timeout_reported = False
                self._failure_reported = None
                self._state_dirty = True
            self._cond.notify_all()
        if changed:
            log.info("automatic revert %s", "enabled" if enabled else
                     "disabled (maintenance): failures will be logged, not acted on")

    def start_vm(self) -> StartResult:
        """Start through the API: clean start, and the 'stay stopped' flag is cleared."""
        self.require_initialised()
        result: list[StartResult] = []

        def action() -> None:
            result.append(self.domain.start())

        performed = self._run_exclusive(API, "start requested through the API", action)
        return result[0] if performed and result else StartResult(reverted=True, was_running=True)

    def restart_vm(self) -> None:
        """Restart through the API; returns once the VM runs again (grace goes on after)."""
        self.require_initialised()
        self._run_exclusive(API, "restart requested through the API", self.domain.revert_and_start)

    def stop_vm(self) -> bool:
        """Stop through the API; the VM then stays stopped until started again."""
        self.require_initialised()
        with self.domain.locked():
            with self._cond:
                self._manual_stop = True
                self._enabled = False
                self._grace_until = None
                self._cond.notify_all()
            log.info("VM %r stopped through the API: it stays stopped until started again",
                     self.domain.name)
            return self.domain.stop()

    # ================================================================ the one path for restarts

    def _run_exclusive(self, trigger: str, reason: str, action: Callable[[], Any],
                       still_needed: Callable[[], bool] | None = None) -> bool:
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
            assert job is not None
            if not owner:
                log.info("%s (%s) joins the restart already under way", reason, trigger)
                performed = job.result()
                if performed or still_needed is not None:
                    return performed
                continue  # we joined a recovery that turned out unnecessary; do our own
            try:
                performed = self._perform(trigger, reason, action, still_needed)
            except BaseException as exc:
                job.set_exception(exc)
                raise
            else:
                job.set_result(performed)
                return performed
            finally:
                with self._job_mutex:
                    self._job = None

    def _perform(self, trigger: str, reason: str, action: Callable[[], Any],
                 still_needed: Callable[[], bool] | None) -> bool:
        with self.domain.locked():
            if still_needed is not None and not still_needed():
                log.info("recovery (%s) no longer needed: %s", trigger, reason)
                return False
            with self._cond:
                self._enabled = False
                self._grace_until = None
            log.info("restoring VM %r (%s): %s", self.domain.name, trigger, reason)
            started = self._clock()
            try:
                action()
            except BaseException as exc:
                with self._cond:
                    # Try again after a full timeout, never in a tight loop.
                    now = self._clock()
                    self._arm_locked(now)
                    self._hold_until = now + self.timeout
                    self._next_poll = min(self._next_poll, self._hold_until)
                    self._cond.notify_all()
                log.error("restoring VM %r (%s) failed after %.2f s: %s", self.domain.name,
                          trigger, self._clock() - started, exc)
                raise
            now = self._clock()
            with self._cond:
                self._manual_stop = False
                self._started_at = now
                self._vm_state = RUNNING
                self._paused_since = None
                self._paused_reported = False
                self._timeout_reported = False
                self._failure_reported = None
                self._hold_until = 0.0
                self._grace_until = now + self.grace
                self._cond.notify_all()
            log.info("VM %r running again after %.2f s (%s); heartbeats enforced in %g s",
                     self.domain.name, now - started, trigger, self.grace)
            return True

    def _arm_locked(self, now: float) -> None:
        self._enabled = True
        self._armed_at = now
        self._grace_until = None

    # ================================================================ the thread

    def _run(self) -> None:
        try:
            self._initialise()
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
        """Bring the exhibition up clean: revert to the snapshot if there is one."""
        name = self.domain.name
        try:
            state = self.domain.state()
            if state == NOT_FOUND:
                log.error("VM %r is not defined in libvirt; waiting for it to appear", name)
            elif not self.auto_revert_enabled:
                log.warning("automatic revert is disabled (maintenance): VM %r left as it is (%s)",
                            name, state)
            elif self.domain.snapshot_exists():
                self._perform(STARTUP, "controller started: clean start from the snapshot",
                              self.domain.revert_and_start, None)
                return
            else:
                log.warning("snapshot %r of VM %r does not exist: automatic recovery is impossible "
                            "until it is created", self.domain.snapshot_name, name)
                if state != RUNNING:
                    self._perform(STARTUP, "controller started: booting the VM", self.domain.start,
                                  None)
                    return
        except VirshError as exc:
            log.error("could not prepare VM %r at start: %s", name, exc)
        with self._cond:
            self._started_at = self._clock()
            self._arm_locked(self._clock())

    def _step(self) -> bool:
        """Wait for the next thing to do, do it. Returns False when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return False
                now = self._clock()
                action, wake = self._next_action_locked(now)
                if action is not None:
                    break
                self._cond.wait(None if wake is None else max(0.0, wake - now))
        action()
        return True

    def _next_action_locked(self, now: float) -> tuple[Callable[[], None] | None, float | None]:
        """Decide what is due now, or when to look again."""
        if self._state_dirty or now >= self._next_poll:
            self._state_dirty = False
            interval = self.poll_interval if self._events_connected else self.fallback_poll_interval
            self._next_poll = now + interval
            return self._check_vm_state, None
        wakes = [self._next_poll]
        if self._grace_until is not None:
            if now >= self._grace_until:
                self._arm_locked(self._grace_until)
                log.info("grace period over: heartbeat timeout of %g s enforced for VM %r",
                         self.timeout, self.domain.name)
            else:
                wakes.append(self._grace_until)
        if self._enabled and not self._timeout_reported:
            deadline = max(self._deadline_locked(), self._hold_until)
            if now >= deadline:
                return self._on_heartbeat_timeout, None
            wakes.append(deadline)
        if self._paused_since is not None and not self._paused_reported:
            deadline = max(self._paused_since + self.timeout, self._hold_until)
            if now >= deadline:
                return self._on_paused_too_long, None
            wakes.append(deadline)
        return None, min(wakes)

    def _deadline_locked(self) -> float:
        last = self._last_hb if self._last_hb is not None else self._armed_at
        return max(last, self._armed_at) + self.timeout

    def _timed_out_locked(self) -> bool:
        return self._enabled and self._clock() >= self._deadline_locked()

    def _may_recover_locked(self) -> bool:
        return self._auto_revert and not self._manual_stop and not self._stopping

    # ---------------------------------------------------------------- actions

    def _on_heartbeat_timeout(self) -> None:
        with self._cond:
            silent = self._clock() - (self._last_hb if self._last_hb is not None else self._armed_at)
            may_recover = self._may_recover_locked()
            if not may_recover:
                self._timeout_reported = True
        if not may_recover:
            log.warning("no heartbeat from VM %r for %.1f s (timeout %g s); automatic revert is "
                        "disabled (maintenance): no action", self.domain.name, silent, self.timeout)
            return
        log.warning("no heartbeat from VM %r for %.1f s (timeout %g s): reverting to snapshot %r",
                    self.domain.name, silent, self.timeout, self.domain.snapshot_name)

        def still_needed() -> bool:
            with self._cond:
                return self._timed_out_locked() and self._may_recover_locked()

        self._recover(HEARTBEAT_TIMEOUT, f"no heartbeat for {silent:.1f} s", still_needed)

    def _on_paused_too_long(self) -> None:
        def still_needed() -> bool:
            with self._cond:
                if self._paused_since is None or not self._may_recover_locked():
                    return False
            return self.domain.state() == PAUSED
        self._act_on_failure(VM_PAUSED, f"VM paused for more than {self.timeout:g} s",
                             still_needed)

    def _check_vm_state(self) -> None:
        """Re-read the VM's state (after an event or on the safety poll) and act on it."""
        with self.domain.locked():
            state = self.domain.state()
        now = self._clock()
        with self._cond:
            previous, self._vm_state = self._vm_state, state
            if state == PAUSED:
                if self._paused_since is None:
                    self._paused_since = now
            else:
                self._paused_since = None
                self._paused_reported = False
            if state == RUNNING:
                self._failure_reported = None
            last_event = self._last_event
            manual = self._manual_stop
        if previous != state:
            log.info("VM %r is %s%s", self.domain.name, state,
                     f" (was {previous})" if previous else "")
        if state in (RUNNING, PAUSED) or manual:
            return
        if state == NOT_FOUND:
            self._report_once(NOT_FOUND, "VM %r is not defined in libvirt: nothing to recover",
                              self.domain.name)
            return
        crashed = state == CRASHED or (last_event is not None and last_event.event == "Crashed")
        trigger = VM_CRASHED if crashed else VM_STOPPED

        def still_needed() -> bool:
            with self._cond:
                if not self._may_recover_locked():
                    return False
            return self.domain.state() not in (RUNNING, PAUSED, NOT_FOUND)

        self._act_on_failure(trigger, f"VM found {state} without a stop through the API",
                             still_needed)

    def _act_on_failure(self, trigger: str, reason: str, still_needed: Callable[[], bool]) -> None:
        with self._cond:
            may_recover = self._may_recover_locked()
            manual = self._manual_stop
            held = self._clock() < self._hold_until
            if trigger == VM_PAUSED and not may_recover:
                self._paused_reported = True
        if manual or held:
            return  # a failed recovery holds off the next; the poll comes back at _hold_until
        if not may_recover:
            self._report_once(trigger, "VM %r: %s; automatic revert is disabled (maintenance): "
                              "no action", self.domain.name, reason)
            return
        log.warning("VM %r: %s: reverting to snapshot %r", self.domain.name, reason,
                    self.domain.snapshot_name)
        self._recover(trigger, reason, still_needed)

    def _recover(self, trigger: str, reason: str, still_needed: Callable[[], bool]) -> None:
        try:
            self._run_exclusive(trigger, reason, self.domain.revert_and_start, still_needed)
        except Exception:
            # Already logged by _perform; the monitor re-armed and will try again.
            pass

    def _report_once(self, key: str, message: str, *args: Any) -> None:
        with self._cond:
            if self._failure_reported == key:
                return
            self._failure_reported = key
        log.warning(message, *args)
