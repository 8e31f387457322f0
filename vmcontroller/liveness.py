"""Is the HTTP server still serving? Asked from outside it, the way a guest would.

The monitor thread can be alive while waitress's loop thread has died or all
of its workers are stuck: then no heartbeat gets in, and the watchdog would
revert a healthy guest for silence the controller itself caused. systemd's
watchdog should restart the controller instead, so Notifier withholds its
pings when this probe has had no answer for too long.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def probe_host(api_host: str) -> str:
    """Where to reach a server listening on ``api_host`` from this machine."""
    try:
        address = ipaddress.ip_address(api_host)
    except ValueError:
        return api_host  # a name: it resolves to where we listen
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return api_host


class HttpProbe:
    """GET / every ``interval`` seconds in a thread of its own; remembers the last answer."""

    def __init__(
        self,
        host: str,
        port: Callable[[], int],
        interval: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.host = host
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._last_ok = clock()
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._last_ok = self._clock()
        self._thread = threading.Thread(target=self._run, name="http-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def probe_once(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port(), timeout=self.timeout)
        try:
            connection.request("GET", "/")
            status = connection.getresponse().status
            if status == 200:
                self._last_ok = self._clock()
                self._last_error = None
                return True
            self._last_error = f"GET / answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            self._last_error = f"GET / failed: {exc or type(exc).__name__}"
        finally:
            connection.close()
        return False

    def problem(self, stale_after: float) -> str | None:
        """None while the server answered within ``stale_after`` seconds, else why not."""
        silent = self._clock() - self._last_ok
        if silent <= stale_after:
            return None
        return (
            f"the HTTP server has not answered for {silent:.0f} s (limit {stale_after:g} s; "
            f"{self._last_error or 'no answer yet'})"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe_once()
