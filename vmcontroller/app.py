"""The Flask app: the API's routes, its JSON errors, and the WSGI layers in front.

Every failure a route may meet is answered here, in one table
(``_register_errors``), with the status code the API reference promises, so
no traceback reaches a user. In front of Flask: the request log, the security
gate, and the docs, an app of their own built on the first request for them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CollectorRegistry
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as ResponseBase

from .controls import Controls
from .dashboard import dashboard_blueprint
from .docs import LazyDocs, init_docs
from .errors import (
    Busy,
    Conflict,
    NotInitialised,
    SnapshotMissing,
    SnapshotUnknown,
    StateFileError,
)
from .loglines import printable
from .names import InvalidName
from .params import ApiError
from .requestlog import RequestLog
from .routes import (
    AnyTextConverter,
    HotPath,
    Screens,
    api_blueprint,
    hot_answers,
    metrics_blueprint,
    screen_blueprint,
    stream_blueprint,
)
from .security import SecuritySettings, init_security
from .stream import Hub

log = logging.getLogger(__name__)

#: The status each failure answers with, its message as the detail. Order matters
#: only where one type is a kind of another (checked first).
STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (InvalidName, 400),
    (SnapshotMissing, 409),
    (Conflict, 409),
    (NotInitialised, 503),
    (StateFileError, 503),
)


def _http_error(exc: HTTPException) -> ResponseBase:
    response = exc.get_response()
    # Werkzeug always answers with its WSGI Response; before 3.0 (Debian 12 has 2.2)
    # its annotation names the sans-I/O base class, which has no ``data``.
    assert isinstance(response, ResponseBase)
    response.data = current_app.json.dumps(
        {"detail": exc.description if exc.code not in (404, 405) else exc.name}
    )
    response.content_type = "application/json"
    return response


def _unexpected(exc: Exception) -> tuple[Response, int]:
    log.exception("unexpected error in %s %s", request.method, printable(request.path))
    return _error(500, f"Internal error: {type(exc).__name__}: {exc}")


def _answer_in_json(app: Flask) -> None:
    """What Flask itself answers (404, 405, ...) and any bug, in the API's error shape."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _error(status: int, detail: str) -> tuple[Response, int]:
    return jsonify({"detail": detail}), status


def _answer_with(status: int) -> Callable[[Exception], tuple[Response, int]]:
    """An error handler answering ``status`` with the exception's message as the detail."""

    def answer(exc: Exception) -> tuple[Response, int]:
        return _error(status, str(exc))

    return answer


def _register_errors(app: Flask, controls: Controls) -> None:
    """Every failure a route may meet, answered in the API's error shape."""
    for kind, status in STATUS_OF:
        app.register_error_handler(kind, _answer_with(status))

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return _error(exc.status, exc.detail)

    @app.errorhandler(SnapshotUnknown)
    def _snapshot_unknown(exc: SnapshotUnknown) -> tuple[Response, int]:
        name = request.view_args.get("snapshot_name") if request.view_args else None
        return _error(
            404,
            f"Snapshot '{name}' not found for VM '{controls.vm_name}'"
            if name
            else f"Snapshot not found: {exc.message}",
        )

    @app.errorhandler(Busy)
    def _busy(exc: Busy) -> tuple[Response, int]:
        response, status = _error(503, str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, status

    _answer_in_json(app)


def create_app(
    controls: Controls,
    version: str,
    security: SecuritySettings | None = None,
    metrics: CollectorRegistry | None = None,
    stream: Hub | None = None,
    screens: Screens | None = None,
) -> Flask:
    """Build the Flask app around the controller (the Monitor, or a stub in tests);
    with a registry of metrics (metrics.py), it serves /metrics too, and with an
    event hub (stream.py), the event stream; with the screen watcher's shelf
    (screenwatch.py), the VM's screen."""
    app = Flask(__name__, static_folder=None)
    assert isinstance(app.json, DefaultJSONProvider)
    app.json.sort_keys = False  # keep the field order of the API reference
    app.url_map.converters["anytext"] = AnyTextConverter
    _register_errors(app, controls)
    app.register_blueprint(api_blueprint(controls, version))
    app.register_blueprint(dashboard_blueprint())
    if metrics is not None:
        app.register_blueprint(metrics_blueprint(metrics))
    if stream is not None:
        app.register_blueprint(stream_blueprint(stream))
    app.register_blueprint(screen_blueprint(screens))
    app.wsgi_app = HotPath(app, hot_answers(controls))  # type: ignore[method-assign]

    def docs_app() -> Flask:
        from .apispec import build_openapi

        docs = Flask(__name__, static_folder=None)
        _answer_in_json(docs)
        init_docs(docs, build_openapi(version))
        return docs

    app.wsgi_app = LazyDocs(app.wsgi_app, docs_app)  # type: ignore[method-assign]
    # In front of Flask, outermost first: the log sees refusals too.
    init_security(app, security or SecuritySettings())
    app.wsgi_app = RequestLog(app.wsgi_app)  # type: ignore[method-assign]
    return app
