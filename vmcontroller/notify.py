"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), without a dependency.

A service under systemd gets ``$NOTIFY_SOCKET``: a unix datagram socket (a
path, or an abstract name written ``@name``). Each message is one datagram
of ``KEY=value`` lines. The controller sends

- ``READY=1`` once it serves: the HTTP server runs and the monitor has
  brought the VM to its clean start (the API answers 200, not 503);
- ``WATCHDOG=1`` every ``$WATCHDOG_USEC / 2`` while the monitor thread is
  alive and making progress, and only then: a stuck monitor means nobody
  reverts a frozen artwork, and systemd's watchdog restarts the service;
- ``STOPPING=1`` when it shuts down; ``STATUS=...`` lines for
  ``systemctl status``.

When is the controller stuck? The monitor thread comes back to its wait
loop (and sets ``last_progress``) at least every ``MAX_SLEEP`` seconds, but
between two visits it may wait for the VM's lock held by a staff action and
then run a whole recovery, each bounded by the longest operation that may
hold the lock (``virsh_long_timeout`` plus two ``virsh_timeout``s).
``stale_limit`` allows ``MAX_SLEEP`` plus twice that (365 s with the
defaults): a slow revert of a large VM is never mistaken for a hang, and a
deadlocked thread is caught within that limit plus ``WatchdogSec``. The same
limit applies to the HTTP server, probed from outside (liveness.py): a dead
loop thread or workers that are all stuck let no heartbeat in, so they
withhold the pings too.

``$WATCHDOG_PID`` (when set) must be this process's id, or the watchdog is
meant for someone else. The variables are removed from the environment once
read, so that virsh and ``post_revert_command`` do not inherit them. Without
``$NOTIFY_SOCKET`` (not under systemd) everything here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

#: How many of the longest locked operations one pass of the monitor loop may
#: take: waiting for a staff action's, then its own (see above).
OPERATIONS_PER_STEP = 2


class Watched(Protocol):
    """What the watchdog needs from the Monitor."""

    @property
    def thread_alive(self) -> bool: ...

    last_progress: float

    def wait_initialised(self, timeout: float | None = None) -> bool: ...


def stale_limit(longest_operation: float, max_sleep: float) -> float:
    """Seconds without progress after which the monitor thread counts as stuck."""
    return max_sleep + OPERATIONS_PER_STEP * longest_operation


def socket_address(value: str | None) -> str | None:
    """The address to send to for a $NOTIFY_SOCKET value, or None if unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:..., which this module does not speak


def send(message: str, address: str | None) -> bool:
    """Send one datagram; never raises (a lost notification must not stop the controller)."""
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        return True
    except OSError as exc:
        log.warning("could not notify systemd (%r): %s", message.split("\n", 1)[0], exc)
        return False


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None if no watchdog is ours."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Tells systemd when the controller is ready, alive and stopping."""

    def __init__(
        self,
        address: str | None,
        interval: float | None,
        monitor: Watched,
        stale_after: float,
        clock: Callable[[], float] = time.monotonic,
        checks: Sequence[Callable[[float], str | None]] = (),
    ):
        self.address = address
        self.interval = interval
        self.monitor = monitor
        self.stale_after = stale_after
        #: More reasons to withhold pings, each given the stale limit (the HTTP probe).
        self.checks = list(checks)
        self._clock = clock
        self._stop = threading.Event()
        self._stopping_sent = False
        self._ready_at: float | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_environ(
        cls, monitor: Watched, stale_after: float, environ: MutableMapping[str, str] | None = None
    ) -> Notifier:
        """Read (and remove) NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID."""
        environ = os.environ if environ is None else environ
        raw = environ.get("NOTIFY_SOCKET")
        address = socket_address(raw)
        if raw and address is None:
            log.warning(
                "NOTIFY_SOCKET=%r is not a unix socket path or @abstract name: "
                "systemd will not hear from the controller",
                raw,
            )
        interval = watchdog_interval(environ, os.getpid()) if address else None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)
        return cls(address, interval, monitor, stale_after)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def start(self, status: str) -> None:
        """Send READY=1 (with STATUS) once the monitor is initialised, then keep pinging."""
        if not self.enabled:
            return
        if self.interval is not None:
            log.info(
                "systemd watchdog: a ping every %.3g s while the monitor thread makes "
                "progress (stuck after %g s without)",
                self.interval,
                self.stale_after,
            )
        self._thread = threading.Thread(
            target=self._run, args=(status,), name="systemd-notify", daemon=True
        )
        self._thread.start()

    def stopping(self) -> None:
        """Send STOPPING=1 (once) and stop pinging."""
        self._stop.set()
        if self.enabled and not self._stopping_sent:
            self._stopping_sent = True
            send("STOPPING=1\nSTATUS=shutting down", self.address)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def check(self) -> str | None:
        """None if the monitor (and whatever ``checks`` watch) makes progress, else why not."""
        if not self.monitor.thread_alive:
            return "the monitor thread is not running"
        last = self.monitor.last_progress
        if self._ready_at is not None:
            last = max(last, self._ready_at)
        idle = self._clock() - last
        if idle > self.stale_after:
            return (
                f"the monitor thread has made no progress for {idle:.0f} s "
                f"(limit {self.stale_after:g} s)"
            )
        for check in self.checks:
            problem = check(self.stale_after)
            if problem is not None:
                return problem
        return None

    def _run(self, status: str) -> None:
        while not self.monitor.wait_initialised(0.5):
            if self._stop.is_set():
                return
        if self._stop.is_set():
            return
        self._ready_at = self._clock()
        send(f"READY=1\nSTATUS={status}", self.address)
        if self.interval is None:
            return
        problem: str | None = None
        while True:
            now_problem = self.check()
            if now_problem is None:
                send(
                    "WATCHDOG=1" if problem is None else f"WATCHDOG=1\nSTATUS={status}",
                    self.address,
                )
                if problem is not None:
                    log.warning("controller making progress again: systemd watchdog pings resume")
            elif problem is None:
                log.error(
                    "withholding systemd watchdog pings: %s; systemd will restart the "
                    "controller if this lasts",
                    now_problem,
                )
                send(f"STATUS={now_problem}", self.address)
            problem = now_problem
            if self._stop.wait(self.interval):
                return
