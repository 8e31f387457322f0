"""The REST API: thin routes over the Monitor, JSON errors, request logging.

Handlers validate input, call one method and shape the JSON; everything
that can go wrong below them is turned into ``{"detail": ...}`` with the
status code the API reference promises, so no traceback reaches a user.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter
from werkzeug.wrappers import Response as ResponseBase

from .docs import LazyDocs, init_docs
from .loglines import printable
from .monitor import Busy, Conflict, Monitor, NotInitialised
from .names import InvalidName, validate_name
from .params import (
    SEVERITIES,
    ApiError,
    int_param,
    param_values,
    seconds_param,
    text_param,
    time_param,
)
from .requestlog import RequestLog
from .security import SecuritySettings, init_security
from .store import StoreError
from .virsh import SnapshotNotFound, VirshError
from .vm import SnapshotMissing
from .vocab import API_PREFIX as API
from .vocab import GUEST_REQUEST, IDLE_DURATION_MAX, IDLE_RESET, REASON_MAX, TRIGGERS

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class AnyTextConverter(BaseConverter):
    """Captures everything after the prefix, slashes and newlines included, so that a bad
    snapshot name gets the name rule's 400 instead of a puzzling 404."""

    # Not 'create' (its own route) nor 'delete/...' (the GET form), so that the
    # DELETE route does not shadow them and OPTIONS advertises only what exists.
    regex = r"(?!create$|delete/)[\s\S]+"
    part_isolating = False


def when_failing(what: str) -> Callable[[F], F]:
    """Name the action in libvirt's error, as in "Error starting VM: <virsh's message>"."""

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except SnapshotNotFound:
                raise
            except VirshError as exc:
                raise ApiError(500, f"Error {what}: {exc.message}") from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def _http_error(exc: HTTPException) -> ResponseBase:
    response = exc.get_response()
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


def _message(message: str, details: Any = None) -> Response:
    return jsonify({"message": message, "details": details})


def _error(status: int, detail: str) -> tuple[Response, int]:
    return jsonify({"detail": detail}), status


def create_app(monitor: Monitor, version: str, security: SecuritySettings | None = None) -> Flask:
    """Build the Flask app around an already constructed Monitor."""
    app = Flask(__name__, static_folder=None)
    assert isinstance(app.json, DefaultJSONProvider)
    app.json.sort_keys = False  # keep the field order of the API reference
    app.url_map.converters["anytext"] = AnyTextConverter
    domain = monitor.domain

    # ------------------------------------------------------------ errors

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return _error(exc.status, exc.detail)

    @app.errorhandler(InvalidName)
    def _invalid_name(exc: InvalidName):
        return _error(400, str(exc))

    @app.errorhandler(SnapshotNotFound)
    def _snapshot_not_found(exc: SnapshotNotFound):
        name = request.view_args.get("snapshot_name") if request.view_args else None
        return _error(
            404,
            f"Snapshot '{name}' not found for VM '{domain.name}'"
            if name
            else f"Snapshot not found: {exc.message}",
        )

    @app.errorhandler(SnapshotMissing)
    @app.errorhandler(Conflict)
    def _conflict(exc: Exception):
        return _error(409, str(exc))

    @app.errorhandler(NotInitialised)
    def _not_initialised(exc: NotInitialised):
        return _error(503, str(exc))

    @app.errorhandler(Busy)
    def _busy(exc: Busy):
        response, status = _error(503, str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, status

    @app.errorhandler(StoreError)
    def _store_error(exc: StoreError):
        return _error(503, str(exc))

    _answer_in_json(app)

    # ------------------------------------------------------------ routes

    @app.get("/")
    def root():
        return jsonify(
            {
                "message": "Exhibition VM Controller API",
                "details": {
                    "version": version,
                    "documentation": "/docs",
                    "status": f"{API}/status",
                },
            }
        )

    @app.get(f"{API}/status")
    @when_failing("retrieving status")
    def status():
        return jsonify(monitor.status())

    @app.route(f"{API}/heartbeat", methods=["GET", "POST"])
    def heartbeat():
        return _message("Heartbeat received", monitor.heartbeat())

    @app.get(f"{API}/heartbeat/status")
    def heartbeat_status():
        return jsonify(monitor.heartbeat_status())

    @app.route(f"{API}/vm/start", methods=["GET", "POST"])
    @when_failing("starting VM")
    def vm_start():
        result = monitor.start_vm()
        note = (
            ""
            if result.reverted
            else f" (snapshot '{domain.snapshot_name}' not found: booted without a revert)"
        )
        return _message(f"VM '{domain.name}' started successfully{note}")

    @app.route(f"{API}/vm/stop", methods=["GET", "POST"])
    @when_failing("stopping VM")
    def vm_stop():
        was_running = monitor.stop_vm()
        note = "" if was_running else " (it was not running)"
        return _message(f"VM '{domain.name}' stopped successfully{note}")

    @app.route(f"{API}/vm/restart", methods=["GET", "POST"])
    @when_failing("restarting VM")
    def vm_restart():
        monitor.restart_vm()
        return _message(f"VM '{domain.name}' restarted successfully")

    @app.get(f"{API}/snapshots")
    @when_failing("listing snapshots")
    def snapshots():
        return jsonify({"vm_name": domain.name, "snapshots": monitor.list_snapshots()})

    @app.route(f"{API}/snapshot/create", methods=["GET", "POST"])
    @when_failing("creating snapshot")
    def snapshot_create():
        # Every value given must be valid; the query string's wins (as documented).
        given = [validate_name(value) for value in param_values("snapshot_name")]
        name = given[0] if given else domain.snapshot_name
        replaced = monitor.create_snapshot(name)
        verb = "replaced" if replaced else "created"
        return _message(f"Snapshot '{name}' {verb} successfully for VM '{domain.name}'")

    def _delete(snapshot_name: str):
        name = validate_name(snapshot_name)
        monitor.delete_snapshot(name)
        return _message(f"Snapshot '{name}' deleted successfully")

    @app.delete(f"{API}/snapshot/<anytext:snapshot_name>")
    @when_failing("deleting snapshot")
    def snapshot_delete(snapshot_name: str):
        return _delete(snapshot_name)

    @app.get(f"{API}/snapshot/delete/<anytext:snapshot_name>")
    @when_failing("deleting snapshot")
    def snapshot_delete_get(snapshot_name: str):
        return _delete(snapshot_name)

    @app.route(f"{API}/revert/enable", methods=["GET", "POST"])
    def revert_enable():
        monitor.set_auto_revert(True)
        return _message("Automatic revert enabled")

    @app.route(f"{API}/revert/disable", methods=["GET", "POST"])
    def revert_disable():
        monitor.set_auto_revert(False)
        return _message("Automatic revert disabled - manual intervention required on failures")

    # ------------------------------------------------------------ guest requests

    @app.route(f"{API}/revert/request", methods=["GET", "POST"])
    def revert_request():
        reason = text_param("reason", required=True, limit=REASON_MAX)
        severity = text_param("severity", required=False, limit=32) or "normal"
        if severity not in SEVERITIES:
            raise ApiError(
                400,
                f"Invalid parameter: severity must be one of "
                f"{', '.join(SEVERITIES)} (got {severity!r})",
            )
        details = monitor.request_revert(GUEST_REQUEST, f"{reason} (severity {severity})")
        return _accepted(details)

    @app.route(f"{API}/idle/reset", methods=["GET", "POST"])
    def idle_reset():
        seconds = seconds_param("idle_duration", IDLE_DURATION_MAX)
        reason = "the guest reports no visitor interaction"
        if seconds is not None:
            reason += f" for {seconds:g} s"
        return _accepted(monitor.request_revert(IDLE_RESET, reason))

    # ------------------------------------------------------------ history

    @app.get(f"{API}/events")
    def events():
        limit = int_param("limit", 100, 1, 1000)
        since = time_param("since")
        triggers = [t for value in request.args.getlist("trigger") for t in value.split(",")]
        unknown = sorted(set(triggers) - set(TRIGGERS))
        if unknown:
            raise ApiError(
                400,
                f"Invalid parameter: trigger must be among {', '.join(TRIGGERS)} "
                f"(got {unknown[0]!r})",
            )
        found = monitor.history(limit=limit, since=since, triggers=triggers)
        return jsonify({"vm_name": domain.name, "events": [e.as_json() for e in found]})

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


def _accepted(details: dict[str, Any]) -> tuple[Response, int]:
    message = "Revert queued" if details.get("queued") else "Revert not queued again"
    return jsonify({"message": message, "details": details}), 202
