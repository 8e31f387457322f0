"""One log line per request, written by WSGI middleware outside the security gate.

Outside, so that refusals are logged like answers. Routine requests go to
DEBUG: heartbeats, and reads (status, history, snapshots) that succeed; a
guest heartbeating a few times a second and a monitoring system polling
status for months would otherwise be most of the journal and say nothing.
A failed one is INFO like every request that changes something.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from .loglines import printable
from .vocab import HEARTBEAT_PATH, READ_ONLY_PATHS
from .wsgi import Environ, StartResponse, WsgiApp, request_method, request_path

log = logging.getLogger("vmcontroller.requests")

#: Logged at DEBUG when they succeed.
ROUTINE_PATHS = READ_ONLY_PATHS | {HEARTBEAT_PATH}


class RequestLog:
    def __init__(self, app: WsgiApp):
        self._app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not log.isEnabledFor(logging.INFO):  # nothing would ever be written
            return self._app(environ, start_response)
        started = time.monotonic()
        answered: list[int] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        body = self._app(environ, start)
        code = answered[-1] if answered else 0
        path = request_path(environ)
        method = request_method(environ)
        routine = (
            path in ROUTINE_PATHS
            and code < 400
            and (method in ("GET", "HEAD") or path == HEARTBEAT_PATH)
        )
        level = logging.DEBUG if routine else logging.INFO
        if log.isEnabledFor(level):
            # The path is the client's text, decoded: a %0A in it would start a forged line.
            log.log(
                level,
                "%s %s %s -> %d in %.1f ms",
                environ.get("REMOTE_ADDR"),
                printable(method),
                printable(path),
                code,
                (time.monotonic() - started) * 1000,
            )
        return body
