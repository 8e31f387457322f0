"""One log line per request, written by WSGI middleware outside the security gate.

Outside, so that refusals are logged like answers. Routine heartbeats go to
DEBUG: at a few per second for months they would be most of the journal and
say nothing; a failed one is INFO like every other request.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from .loglines import printable
from .vocab import API_PREFIX
from .wsgi import Environ, StartResponse, WsgiApp, request_method, request_path

log = logging.getLogger("vmcontroller.requests")

HEARTBEAT_PATHS = frozenset({f"{API_PREFIX}/heartbeat", f"{API_PREFIX}/heartbeat/status"})


class RequestLog:
    def __init__(self, app: WsgiApp):
        self._app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not log.isEnabledFor(logging.INFO):   # nothing would ever be written
            return self._app(environ, start_response)
        started = time.monotonic()
        answered: list[int] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        body = self._app(environ, start)
        code = answered[-1] if answered else 0
        path = request_path(environ)
        level = logging.DEBUG if path in HEARTBEAT_PATHS and code < 400 else logging.INFO
        if log.isEnabledFor(level):
            # The path is the client's text, decoded: a %0A in it would start a forged line.
            log.log(level, "%s %s %s -> %d in %.1f ms", environ.get("REMOTE_ADDR"),
                    printable(request_method(environ)), printable(path), code,
                    (time.monotonic() - started) * 1000)
        return body
