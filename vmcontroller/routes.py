"""The REST routes, as a Blueprint over the Controls protocol.

Each handler validates its input, calls one method and shapes the JSON of the
API reference; what can go wrong below is an exception of ``errors.py`` that
app.py answers. libvirt's failures of a VM action are named after the action
here ("Error starting VM: <virsh's message>"), as the API reference shows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from flask import Blueprint, Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.routing import BaseConverter

from .controls import Controls
from .errors import LibvirtFailure, SnapshotUnknown
from .names import validate_name
from .params import (
    SEVERITIES,
    ApiError,
    int_param,
    param,
    param_values,
    parse_whole,
    progress_in_query,
    progress_value,
    seconds_param,
    text_param,
    time_param,
)
from .report import ReportRangeError
from .stream import Hub, StreamFull
from .vocab import API_PREFIX as API
from .vocab import (
    EVENTS_STREAM_PATH,
    GUEST_REQUEST,
    HEARTBEAT_PATH,
    IDLE_DURATION_MAX,
    IDLE_RESET,
    METRICS_PATH,
    REASON_MAX,
    STATUS_PATH,
    TRIGGERS,
    UNSENT_KEY,
)
from .wsgi import Environ, StartResponse

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
            except SnapshotUnknown:
                raise
            except LibvirtFailure as exc:
                raise ApiError(500, f"Error {what}: {exc.message}") from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def _message(message: str, details: Any = None) -> Response:
    return jsonify({"message": message, "details": details})


def _closed(controls: Controls) -> dict[str, str] | None:
    """Staff may act outside opening hours; the answer says the VM is not watched then."""
    note = controls.schedule_note()
    return {"note": note} if note else None


#: The answers asked for most (the guest's heartbeat, a few a second for months; status,
#: which monitoring polls): (methods, what to answer). The Blueprint serves them like
#: every route, and HotPath serves the same answers without Flask's request machinery.
#: The answer gets the raw query string (the heartbeat's progress value may be in it).
HotAnswers = dict[str, tuple[frozenset[str], Callable[[str], dict[str, Any]]]]


def hot_answers(controls: Controls) -> HotAnswers:
    return {
        HEARTBEAT_PATH: (
            frozenset({"GET", "POST"}),
            lambda query: {
                "message": "Heartbeat received",
                "details": controls.heartbeat(progress_in_query(query)),
            },
        ),
        STATUS_PATH: (frozenset({"GET"}), lambda query: controls.status()),
    }


class HotPath:
    """WSGI: answers the hot routes' successful requests itself, byte for byte as Flask
    would (its JSON provider, compact, a final newline), in a fraction of Flask's time;
    anything else (another method, a body, a failure, a query it does not expect) goes to Flask,
    which answers it as for every route. It sits behind the security gate and the log."""

    def __init__(self, app: Flask, answers: HotAnswers):
        self._flask = app.wsgi_app
        self._answers = answers
        self._dumps = app.json.dumps

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        hot = self._answers.get(environ.get("PATH_INFO", ""))
        if (
            hot is None
            or environ.get("REQUEST_METHOD") not in hot[0]
            or environ.get("CONTENT_LENGTH", "0") not in ("", "0")  # a body: Flask reads it
        ):
            return self._flask(environ, start_response)
        try:
            answer = hot[1](environ.get("QUERY_STRING", ""))
        except Exception:  # every failure is answered by Flask's error handlers
            return self._flask(environ, start_response)
        body = (self._dumps(answer, separators=(",", ":")) + "\n").encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]


def api_blueprint(controls: Controls, version: str) -> Blueprint:
    """The API's routes (the app registers the ``anytext`` converter they use)."""
    bp = Blueprint("api", __name__)

    @bp.get("/")
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

    hot = hot_answers(controls)

    @bp.get(f"{API}/status")
    @when_failing("retrieving status")
    def status():
        return jsonify(hot[STATUS_PATH][1](""))

    @bp.route(HEARTBEAT_PATH, methods=["GET", "POST"])
    def heartbeat():
        progress = progress_value(param("progress"))  # query, form field or JSON
        return jsonify({"message": "Heartbeat received", "details": controls.heartbeat(progress)})

    @bp.get(f"{API}/heartbeat/status")
    def heartbeat_status():
        return jsonify(controls.heartbeat_status())

    @bp.route(f"{API}/vm/start", methods=["GET", "POST"])
    @when_failing("starting VM")
    def vm_start():
        result = controls.start_vm()
        note = (
            ""
            if result.reverted
            else f" (snapshot '{controls.snapshot_name}' not found: booted without a revert)"
        )
        return _message(f"VM '{controls.vm_name}' started successfully{note}", _closed(controls))

    @bp.route(f"{API}/vm/stop", methods=["GET", "POST"])
    @when_failing("stopping VM")
    def vm_stop():
        was_running = controls.stop_vm()
        note = "" if was_running else " (it was not running)"
        return _message(f"VM '{controls.vm_name}' stopped successfully{note}", _closed(controls))

    @bp.route(f"{API}/vm/restart", methods=["GET", "POST"])
    @when_failing("restarting VM")
    def vm_restart():
        controls.restart_vm()
        return _message(f"VM '{controls.vm_name}' restarted successfully", _closed(controls))

    @bp.get(f"{API}/snapshots")
    @when_failing("listing snapshots")
    def snapshots():
        return jsonify({"vm_name": controls.vm_name, "snapshots": controls.list_snapshots()})

    @bp.route(f"{API}/snapshot/create", methods=["GET", "POST"])
    @when_failing("creating snapshot")
    def snapshot_create():
        # Every value given must be valid; the query string's wins (as documented).
        given = [validate_name(value) for value in param_values("snapshot_name")]
        name = given[0] if given else controls.snapshot_name
        replaced = controls.create_snapshot(name)
        verb = "replaced" if replaced else "created"
        return _message(f"Snapshot '{name}' {verb} successfully for VM '{controls.vm_name}'")

    def _delete(snapshot_name: str):
        name = validate_name(snapshot_name)
        controls.delete_snapshot(name)
        return _message(f"Snapshot '{name}' deleted successfully")

    @bp.delete(f"{API}/snapshot/<anytext:snapshot_name>")
    @when_failing("deleting snapshot")
    def snapshot_delete(snapshot_name: str):
        return _delete(snapshot_name)

    @bp.get(f"{API}/snapshot/delete/<anytext:snapshot_name>")
    @when_failing("deleting snapshot")
    def snapshot_delete_get(snapshot_name: str):
        return _delete(snapshot_name)

    @bp.route(f"{API}/revert/enable", methods=["GET", "POST"])
    def revert_enable():
        controls.set_auto_revert(True)
        return _message("Automatic revert enabled")

    @bp.route(f"{API}/revert/disable", methods=["GET", "POST"])
    def revert_disable():
        controls.set_auto_revert(False)
        return _message("Automatic revert disabled - manual intervention required on failures")

    # ------------------------------------------------------------ guest requests

    @bp.route(f"{API}/revert/request", methods=["GET", "POST"])
    def revert_request():
        reason = text_param("reason", required=True, limit=REASON_MAX)
        severity = text_param("severity", required=False, limit=32) or "normal"
        if severity not in SEVERITIES:
            raise ApiError(
                400,
                f"Invalid parameter: severity must be one of "
                f"{', '.join(SEVERITIES)} (got {severity!r})",
            )
        details = controls.request_revert(GUEST_REQUEST, f"{reason} (severity {severity})")
        return _accepted(details)

    @bp.route(f"{API}/idle/reset", methods=["GET", "POST"])
    def idle_reset():
        seconds = seconds_param("idle_duration", IDLE_DURATION_MAX)
        reason = "the guest reports no visitor interaction"
        if seconds is not None:
            reason += f" for {seconds:g} s"
        return _accepted(controls.request_revert(IDLE_RESET, reason))

    # ------------------------------------------------------------ history

    @bp.get(f"{API}/events")
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
        found = controls.history(limit=limit, since=since, triggers=triggers)
        return jsonify({"vm_name": controls.vm_name, "events": [e.as_json() for e in found]})

    @bp.get(f"{API}/report")
    def report():
        try:
            return jsonify(controls.report(request.args.get("since"), request.args.get("until")))
        except ReportRangeError as exc:
            raise ApiError(400, f"Invalid parameter: {exc}") from None

    return bp


def metrics_blueprint(registry: CollectorRegistry) -> Blueprint:
    """``/metrics``: the registry in Prometheus' text format (version 0.0.4), which every
    Prometheus reads; the collectors read the controller when it is asked."""
    bp = Blueprint("metrics", __name__)

    @bp.get(METRICS_PATH)
    def metrics():
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return bp


def _last_event_id() -> int | None:
    """The resume cursor an EventSource sends back after a reconnect (absent or empty: none)."""
    value = request.headers.get("Last-Event-ID", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ApiError(
            400,
            f"Invalid header: Last-Event-ID must be the id of an event of this stream, "
            f"a whole number (got {value[:40]!r})",
        )
    return int(value)


def stream_blueprint(hub: Hub) -> Blueprint:
    """``/api/v1/events/stream``: Server-Sent Events from the controller's hub (stream.py)."""
    bp = Blueprint("stream", __name__)

    @bp.get(EVENTS_STREAM_PATH)
    def events_stream():
        resume = _last_event_id()
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # headers only: no place taken, nothing held
            hub.source.status()  # answers as GET would before the monitor has started
            return Response(b"", content_type="text/event-stream", headers=headers)
        try:
            client = hub.subscribe()
        except StreamFull as exc:
            raise ApiError(503, str(exc)) from None
        try:
            # After subscribing: what changes while the opening is read is sent live too.
            opening = hub.opening(resume)
        except BaseException:
            hub.unsubscribe(client)
            raise
        unsent = request.environ.get(UNSENT_KEY) or (lambda: 0)
        body = hub.events(client, opening, unsent)
        return Response(body, content_type="text/event-stream", headers=headers)

    return bp


class Screens(Protocol):
    """What the screen routes read (screenwatch.ScreenShelf)."""

    def latest(self) -> tuple[bytes, datetime] | None: ...

    def kept(self, event_id: int) -> bytes | None: ...


def _png(png: bytes, taken: str | None = None) -> Response:
    headers = {"Cache-Control": "no-store"}
    if taken:
        headers["X-Screenshot-Time"] = taken
    return Response(png, content_type="image/png", headers=headers)


def screen_blueprint(screens: Screens | None) -> Blueprint:
    """``/api/v1/screen/...``: the VM's screen as the screen watcher last took it, and
    the screenshots that caused recoveries (their history rows link them)."""
    bp = Blueprint("screen", __name__)
    off = "screen watching is off: the configuration has no screen: section"

    @bp.get(f"{API}/screen/latest")
    def screen_latest():
        if screens is None:
            raise ApiError(404, off)
        latest = screens.latest()
        if latest is None:
            raise ApiError(
                404, "no screenshot yet: the VM has not been running since the controller started"
            )
        return _png(latest[0], latest[1].isoformat(timespec="seconds"))

    @bp.get(f"{API}/screen/<event_id>")
    def screen_kept(event_id: str):
        # Read as text: werkzeug's int converter fails with a 500 on thousands of digits.
        number = parse_whole(event_id)
        if number is None:
            raise ApiError(
                400,
                "Invalid path: the history event's id must be a whole number "
                f"(got {event_id[:40]!r})",
            )
        if screens is None:
            raise ApiError(404, off)
        png = screens.kept(number)
        if png is None:
            raise ApiError(
                404,
                f"no screenshot kept for history event {number}: only a screen rule's "
                "recoveries have one, and the oldest are removed (screen.keep, screen.keep_mib)",
            )
        return _png(png)

    return bp


def _accepted(details: dict[str, Any]) -> tuple[Response, int]:
    message = "Revert queued" if details.get("queued") else "Revert not queued again"
    return jsonify({"message": message, "details": details}), 202
