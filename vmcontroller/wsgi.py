"""The few facts about a WSGI request that the layers in front of Flask need.

The security gate and the request log run as WSGI middleware, on the environ
itself: a heartbeat then costs no Flask hooks, no request-context proxies and
no header objects for them. What they read must mean exactly what Flask
(werkzeug) will read from the same environ, or the gate would judge another
path than the one routed; so the decoding rules live here, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Headers = Sequence[tuple[str, str]]


#: Where request_path keeps its answer: the log, the docs dispatcher and the gate each
#: ask for every request, and the answer cannot change within one.
_PATH_KEY = "vmcontroller.path"


def request_path(environ: Environ) -> str:
    """The path as Flask routes it: PATH_INFO's bytes read as UTF-8, one leading slash
    (werkzeug strips repeated ones, so ``//api/v1/vm/stop`` is ``/api/v1/vm/stop``)."""
    path = environ.get(_PATH_KEY)
    if path is None:
        raw = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        path = environ[_PATH_KEY] = "/" + raw.lstrip("/")
    return path


def request_method(environ: Environ) -> str:
    return environ.get("REQUEST_METHOD", "GET").upper()


def content_length(environ: Environ) -> int | None:
    """The declared body length, as werkzeug reads it (none for a chunked body)."""
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return None
    text = environ.get("CONTENT_LENGTH", "").strip()
    return max(0, int(text)) if text.isdecimal() and text.isascii() else None


def json_answer(
    environ: Environ,
    start_response: StartResponse,
    status: int,
    payload: dict[str, Any],
    headers: Headers = (),
) -> list[bytes]:
    """Answer with a JSON body the way Flask's jsonify would (a HEAD gets the headers only)."""
    body = (json.dumps(payload) + "\n").encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [] if request_method(environ) == "HEAD" else [body]
