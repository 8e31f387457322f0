"""The REST layer: real Monitor and Domain over the in-memory FakeRunner, no network.

Every response these tests receive is checked against the OpenAPI document
(see ``Api.call``): a documented route answers what its schema says for that
status, and anything the document cannot describe (an unknown path, a wrong
method) must still be a JSON ``{"detail": ...}`` error. What each behaviour
does to a real VM is proven in test_integration.py; here the point is status
codes, bodies, input validation and logging, quickly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
from fake_virsh import FakeRunner
from flask import Flask
from libvirt_env import wait_until
from openapi_check import to_json_schema
from werkzeug.exceptions import HTTPException

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.metrics import ControllerMetrics
from vmcontroller.monitor import Monitor
from vmcontroller.store import Store
from vmcontroller.stream import Hub
from vmcontroller.virsh import VirshError
from vmcontroller.vm import Domain

# Long enough that the monitor thread never acts on its own during a test:
# every revert and log line below comes from the request under test.
QUIET = {"heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 60}
VIRSH_MESSAGE = "internal error: qemu unexpectedly closed the monitor"
NOT_INITIALISED = {"detail": "VM manager not initialized"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Endpoints of the docs blueprints, the dashboard and Flask's static files: not API operations.
DOCS_ENDPOINTS = ("static", "docs.", "flasgger.", "dashboard.")
DOCS_PREFIXES = (
    "/static/",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/flasgger_static/",
    "/oauth2-redirect.html",
    "/apidocs/",
    "/ui/",
)


def openapi_path(rule: str) -> str:
    """Flask's '/a/<anytext:snapshot_name>' written as OpenAPI's '/a/{snapshot_name}'."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


class Api:
    """The Flask test client, checking every answer against the OpenAPI document."""

    def __init__(self, app: Flask, check, spec: dict, monitor: Monitor, runner: FakeRunner):
        self.app = app
        self.client = app.test_client()
        self.monitor = monitor
        self.runner = runner
        self._check = check
        self._routes = app.url_map.bind("localhost")
        self._error_schema = to_json_schema(spec, {"$ref": "#/components/schemas/Error"})

    def template(self, method: str, path: str) -> str | None:
        """The documented path template that serves this request, or None if no route does."""
        try:
            rule, _ = self._routes.match(path, method=method, return_rule=True)
        except HTTPException:
            return None
        return openapi_path(rule.rule)

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> dict:
        response = self.last = self.client.open(path, method=method, **kwargs)
        text = response.get_data(as_text=True)
        assert response.status_code == expect, (method, path, response.status_code, text)
        assert response.mimetype == "application/json", (method, path, response.content_type)
        body = response.get_json()
        template = self.template(method, response.request.path)
        if template is None:
            # No operation to check against (unknown path, wrong method): the
            # document's convention says every error body is still an Error.
            assert response.status_code >= 400, (method, path, response.status_code)
            jsonschema.validate(body, self._error_schema)
        else:
            self._check(template, method.lower(), response.status_code, body)
        if response.status_code >= 400:
            assert set(body) == {"detail"} and body["detail"], body
        return body

    def get(self, path: str, expect: int = 200, **kwargs: Any) -> dict:
        return self.call("GET", path, expect, **kwargs)

    def post(self, path: str, expect: int = 200, **kwargs: Any) -> dict:
        return self.call("POST", path, expect, **kwargs)


@pytest.fixture
def make_api(check_response, openapi):
    """Build a Monitor (started unless start=False) and the app around it."""
    started: list[Monitor] = []

    def make(
        runner: FakeRunner | None = None,
        start: bool = True,
        store: Store | None = None,
        **overrides: Any,
    ) -> Api:
        runner = runner or FakeRunner()
        config = build_config({"vm_name": runner.domain, **QUIET, **overrides})
        monitor = Monitor(
            Domain(runner, runner.domain, config.snapshot_name), config, store or Store(":memory:")
        )
        if start:
            runner.listener = monitor.on_lifecycle_event
            monitor.on_events_connection(True)
            monitor.start()
            started.append(monitor)
            assert monitor.wait_initialised(5), "monitor did not initialise"
        # As server.Controller builds it: with the metrics, so that /metrics is served too.
        metrics = ControllerMetrics(monitor, __version__)
        app = create_app(monitor, __version__, metrics=metrics.registry, stream=Hub(monitor, 4))
        return Api(app, check_response, openapi, monitor, runner)

    yield make
    for monitor in started:
        monitor.stop()


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


def documented_operations(spec: dict) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


# ------------------------------------------------------------------ before start

NEEDS_MONITOR = [
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/heartbeat"),
    ("POST", "/api/v1/heartbeat"),
    ("GET", "/api/v1/heartbeat/status"),
    ("GET", "/api/v1/vm/start"),
    ("POST", "/api/v1/vm/start"),
    ("GET", "/api/v1/vm/stop"),
    ("POST", "/api/v1/vm/stop"),
    ("GET", "/api/v1/vm/restart"),
    ("POST", "/api/v1/vm/restart"),
    ("GET", "/api/v1/snapshots"),
    ("GET", "/api/v1/snapshot/create"),
    ("POST", "/api/v1/snapshot/create"),
    ("DELETE", "/api/v1/snapshot/ready"),
    ("GET", "/api/v1/snapshot/delete/ready"),
    ("GET", "/api/v1/revert/enable"),
    ("POST", "/api/v1/revert/enable"),
    ("GET", "/api/v1/revert/disable"),
    ("POST", "/api/v1/revert/disable"),
    ("GET", "/api/v1/revert/request?reason=x"),
    ("POST", "/api/v1/revert/request?reason=x"),
    ("GET", "/api/v1/idle/reset"),
    ("POST", "/api/v1/idle/reset"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events/stream"),
    ("GET", "/api/v1/report"),
]


def test_the_503_list_covers_every_operation_but_the_root(openapi):
    listed = {
        (path.replace("/ready", "/{snapshot_name}").split("?")[0], method)
        for method, path in NEEDS_MONITOR
    }
    # The root and /metrics answer before the monitor has started (metrics then claim no
    # state: tests/test_metrics.py), and so do the screen's pictures (the screen watcher's).
    assert listed == documented_operations(openapi) - {
        ("/", "GET"),
        ("/metrics", "GET"),
        ("/api/v1/screen/latest", "GET"),
        ("/api/v1/screen/{event_id}", "GET"),
    }


def test_the_screen_routes_say_when_screen_watching_is_off(api):
    for path in ("/api/v1/screen/latest", "/api/v1/screen/7"):
        answer = api.get(path, expect=404)
        assert answer["detail"].startswith("screen watching is off")


@pytest.mark.parametrize("method, path", NEEDS_MONITOR, ids=[" ".join(r) for r in NEEDS_MONITOR])
def test_every_route_answers_503_until_the_monitor_has_started(make_api, method, path):
    api = make_api(start=False)
    assert api.call(method, path, 503) == NOT_INITIALISED
    assert api.runner.calls == [], "nothing reaches virsh before the monitor has started"


def test_the_root_answers_before_the_monitor_has_started(make_api):
    api = make_api(start=False)
    assert api.get("/") == {
        "message": "Exhibition VM Controller API",
        "details": {"version": __version__, "documentation": "/docs", "status": "/api/v1/status"},
    }


# ------------------------------------------------------------------ routes vs document


def test_every_route_is_documented_and_every_documented_operation_exists(make_api, openapi):
    app = make_api(start=False).app
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(DOCS_ENDPOINTS):
            # The filter must hide only the docs pages and static files, never an API route.
            assert rule.rule.startswith(DOCS_PREFIXES), rule.rule
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((openapi_path(rule.rule), method))
    documented = documented_operations(openapi)
    assert not served - documented, f"undocumented routes: {sorted(served - documented)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"
    assert len(served) == 30


# ------------------------------------------------------------------ every route, happy path


def test_every_route_answers_as_documented(api):
    name = api.runner.domain
    status = api.get("/api/v1/status")
    assert status["vm_name"] == name and status["vm_state"] == "running"
    assert status["vm_is_running"] is True and status["snapshot_exists"] is True
    assert status["auto_revert_enabled"] is True
    assert api.get("/api/v1/heartbeat/status")["last_heartbeat"] is None
    for method in ("GET", "POST"):
        assert api.call(method, "/api/v1/heartbeat")["message"] == "Heartbeat received"
        assert api.call(method, "/api/v1/revert/disable")["message"].startswith(
            "Automatic revert disabled"
        )
        assert api.call(method, "/api/v1/revert/enable") == {
            "message": "Automatic revert enabled",
            "details": None,
        }
        assert api.call(method, "/api/v1/vm/restart") == {
            "message": f"VM '{name}' restarted successfully",
            "details": None,
        }
        assert api.call(method, "/api/v1/vm/stop")["message"] == f"VM '{name}' stopped successfully"
        assert api.runner.state == "shut off"
        assert (
            api.call(method, "/api/v1/vm/start")["message"] == f"VM '{name}' started successfully"
        )
        assert api.runner.state == "running"
        api.call(method, f"/api/v1/snapshot/create?snapshot_name=s-{method.lower()}")
    assert api.get("/api/v1/snapshots") == {
        "vm_name": name,
        "snapshots": ["ready", "s-get", "s-post"],
    }
    assert (
        api.call("DELETE", "/api/v1/snapshot/s-get")["message"]
        == "Snapshot 's-get' deleted successfully"
    )
    api.get("/api/v1/snapshot/delete/s-post")
    assert api.runner.snapshots == ["ready"]


def test_heartbeat_accepts_and_ignores_query_parameters(api):
    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/heartbeat?seq=1&boot=x")
        assert body["message"] == "Heartbeat received"
        assert body["details"]["is_healthy"] is True
        assert body["details"]["seconds_since_last"] == 0.0
    body = api.post("/api/v1/heartbeat?seq=2", data={"boot": "x", "uptime": "12"})
    assert body["message"] == "Heartbeat received"


# ------------------------------------------------------------------ missing reference snapshot


def test_restart_without_the_snapshot_is_a_conflict(make_api):
    api = make_api(FakeRunner(snapshots=()))
    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/vm/restart", 409)
        assert "'ready'" in body["detail"] and "does not exist" in body["detail"]
        assert "/api/v1/snapshot/create" in body["detail"], "says how to fix it"
    assert api.runner.count("start") == 0 and api.runner.state == "running"


def test_start_without_the_snapshot_boots_the_vm_and_says_so(make_api):
    api = make_api(FakeRunner(snapshots=()))
    api.post("/api/v1/vm/stop")
    assert api.runner.state == "shut off"
    body = api.post("/api/v1/vm/start")
    assert body["message"].startswith(f"VM '{api.runner.domain}' started successfully")
    assert "'ready' not found" in body["message"] and "without a revert" in body["message"]
    assert api.runner.state == "running" and api.runner.count("start") == 1


# ------------------------------------------------------------------ libvirt failures

LIBVIRT_FAILURES = [
    ("POST", "/api/v1/vm/start", "snapshot-revert", "starting VM"),
    ("POST", "/api/v1/vm/stop", "destroy", "stopping VM"),
    ("GET", "/api/v1/vm/restart", "snapshot-revert", "restarting VM"),
    ("GET", "/api/v1/snapshots", "snapshot-list", "listing snapshots"),
    (
        "POST",
        "/api/v1/snapshot/create?snapshot_name=backup",
        "snapshot-create-as",
        "creating snapshot",
    ),
    ("DELETE", "/api/v1/snapshot/ready", "snapshot-delete", "deleting snapshot"),
]


@pytest.mark.parametrize(
    "method, path, command, doing",
    LIBVIRT_FAILURES,
    ids=[f"{m} {p}" for m, p, _, _ in LIBVIRT_FAILURES],
)
def test_a_libvirt_failure_is_a_500_carrying_virsh_message(api, method, path, command, doing):
    api.runner.fail(command, VirshError(VIRSH_MESSAGE))
    body = api.call(method, path, 500)
    assert body == {"detail": f"Error {doing}: {VIRSH_MESSAGE}"}
    assert command not in api.runner.failures, "the request itself ran into the failure"


def test_status_needs_no_virsh_and_survives_a_failing_libvirt(api):
    """Status answers from what the monitor knows: no virsh process per poll."""
    before = len(api.runner.calls)
    for _ in range(20):
        api.get("/api/v1/status")
    assert len(api.runner.calls) == before
    api.runner.fail("domstate+snapshot-list", VirshError(VIRSH_MESSAGE))
    api.monitor.on_events_connection(True)  # makes the monitor re-read the state now
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "unknown", 5, message="unknown state"
    )
    status = api.get("/api/v1/status")
    assert status["vm_is_running"] is False
    assert VIRSH_MESSAGE in status["vm_state_detail"]


def test_a_history_the_state_file_cannot_give_is_a_503_naming_the_file(make_api, tmp_path):
    path = tmp_path / "state.db"
    api = make_api(store=Store(path))
    api.post("/api/v1/revert/disable")
    assert api.get("/api/v1/events")["events"][0]["action"] == "disable_auto_revert"
    # The disk garbles the state file under the running controller: the database, its
    # write-ahead log and the shared index that tells SQLite its cache is stale.
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with name.open("r+b") as damaged:
            damaged.write(b"garbage!" * 1024)
    body = api.get("/api/v1/events", 503)
    assert body["detail"] == (f"cannot read the history from {str(path)!r}: file is not a database")
    assert api.post("/api/v1/heartbeat")["message"] == "Heartbeat received", (
        "the watchdog goes on without its history"
    )


# ------------------------------------------------------------------ 404, 405


def test_an_unknown_snapshot_is_404_on_both_delete_routes(api):
    body = api.call("DELETE", "/api/v1/snapshot/never-made", 404)
    assert "never-made" in body["detail"]
    body = api.get("/api/v1/snapshot/delete/never-made", 404)
    assert "never-made" in body["detail"]
    assert api.runner.snapshots == ["ready"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothing-here",
        "/api/v2/status",
        "/nope",
        "/api/v1/vm",
        "/api/v1/heartbeat/status/extra",
    ],
)
def test_an_unknown_path_is_a_json_404(api, path):
    assert api.get(path, 404) == {"detail": "Not Found"}


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/api/v1/heartbeat"),
        ("DELETE", "/api/v1/status"),
        ("GET", "/api/v1/snapshot/foo"),
        ("POST", "/api/v1/snapshots"),
        ("PATCH", "/api/v1/vm/restart"),
        ("POST", "/api/v1/snapshot/delete/foo"),
    ],
)
def test_a_wrong_method_is_a_json_405(api, method, path):
    assert api.call(method, path, 405) == {"detail": "Method Not Allowed"}


# ------------------------------------------------------------------ bad input

BAD_NAMES = [
    "--current",
    "--children",
    "-h",
    "--",
    "a b",
    "../x",
    ".hidden",
    "é✓",
    "a\n",
    "ready;reboot",
    "x" * 65,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_an_invalid_snapshot_name_is_400_and_never_reaches_virsh(api, name):
    create = "/api/v1/snapshot/create"
    for method in ("GET", "POST"):
        body = api.call(method, create, 400, query_string={"snapshot_name": name})
        assert body["detail"].startswith("Invalid parameter: snapshot_name ")
    body = api.post(create, 400, data={"snapshot_name": name})
    assert "snapshot_name" in body["detail"]
    api.post(create, 400, data={"snapshot_name": name}, content_type="multipart/form-data")
    quoted = quote(name, safe="")
    assert "snapshot_name" in api.call("DELETE", f"/api/v1/snapshot/{quoted}", 400)["detail"]
    assert "snapshot_name" in api.get(f"/api/v1/snapshot/delete/{quoted}", 400)["detail"]
    assert api.runner.count("snapshot-create-as") == 0
    assert api.runner.count("snapshot-delete") == 0
    assert api.runner.snapshots == ["ready"]


def test_an_empty_snapshot_name_is_400_and_an_absent_one_is_the_configured_name(make_api):
    api = make_api(FakeRunner(snapshots=("golden",)), snapshot_name="golden")
    create = "/api/v1/snapshot/create"
    for method in ("GET", "POST"):
        body = api.call(method, create + "?snapshot_name=", 400)
        assert body == {"detail": "Invalid parameter: snapshot_name cannot be empty"}
    api.post(create, 400, data={"snapshot_name": ""})
    assert api.runner.count("snapshot-create-as") == 0
    for method in ("GET", "POST"):
        body = api.call(method, create)
        assert (
            body["message"]
            == f"Snapshot 'golden' replaced successfully for VM '{api.runner.domain}'"
        )
    assert api.runner.snapshots == ["golden"]
    created = [c[2] for c in api.runner.calls if c[0] == "snapshot-create-as"]
    assert set(created) == {"golden", "golden~replacing"}


# Python calls these numbers ('²'.isdigit(), float('１'), int('1_000'), float('nan')...);
# the API does not: each is a clear 400, never a 500 or a surprising value.
NOT_NUMBERS = [
    "²",
    "１",
    "٣",
    "1_000",
    " 5",
    "5 ",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "0x10",
    "",
    "9" * 5000,
    "\x00",
    "soon",
]


@pytest.mark.parametrize("value", NOT_NUMBERS + ["0", "1001", "-1", "1.5", "1e2", "+5"])
def test_limit_is_ascii_digits_within_its_range(api, value):
    body = api.get("/api/v1/events", 400, query_string={"limit": value})
    assert (
        body["detail"]
        == f"Invalid parameter: limit must be a whole number from 1 to 1000 (got {value!r})"
    )


@pytest.mark.parametrize("value", [v for v in NOT_NUMBERS if v] + ["-1", "10000001", "1e8", "e5"])
def test_idle_duration_is_a_finite_ascii_number_within_its_range(api, value):
    reverts = api.runner.count("snapshot-revert")
    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/idle/reset", 400, query_string={"idle_duration": value})
        assert body["detail"].startswith(
            "Invalid parameter: idle_duration must be a number of seconds from 0 to 10000000 (got "
        ), body
    api.post("/api/v1/idle/reset", 400, json={"idle_duration": 10**400})
    api.post("/api/v1/idle/reset", 400, json={"idle_duration": True})
    assert api.runner.count("snapshot-revert") == reverts


def test_idle_duration_accepts_what_json_and_scripts_write(api):
    for value in ("900", "0.5", "1e-05", "1.5E+3", "-0", "+7", "0", "1.", ""):
        api.get("/api/v1/idle/reset", 202, query_string={"idle_duration": value})
    api.post("/api/v1/idle/reset", 202, json={"idle_duration": 900})
    api.post("/api/v1/idle/reset", 202, data={"idle_duration": "12.5"})


@pytest.mark.parametrize(
    "value",
    NOT_NUMBERS[:-1]
    + ["２０２６-01-01", "2026-11-25T10:00:00+25:00", "0001-01-01", "123456789012", "1.1234567"],
)
def test_since_is_iso_8601_or_ascii_seconds(api, value):
    body = api.get("/api/v1/events", 400, query_string={"since": value})
    assert body["detail"].startswith("Invalid parameter: since must be an ISO 8601 time"), body


def test_since_accepts_iso_8601_and_epoch_seconds(api):
    for value in (
        "2026-11-25",
        "2026-11-25T10:00:00Z",
        "2026-11-25T10:00:00+01:00",
        "1764000000",
        "1764000000.5",
        "0",
    ):
        api.get("/api/v1/events", query_string={"since": value})


@pytest.mark.parametrize(
    "query, detail",
    [
        ({"since": "2026-02-30"}, "since must be a date written YYYY-MM-DD (got '2026-02-30')"),
        ({"until": "tomorrow"}, "until must be a date written YYYY-MM-DD (got 'tomorrow')"),
        ({"since": "1764000000"}, "since must be a date written YYYY-MM-DD (got '1764000000')"),
        ({"since": ""}, "since must be a date written YYYY-MM-DD (got '')"),
        # Found by test_fuzz: year 1 minus 29 days, or its midnight, overflowed (a 500).
        (
            {"until": "0001-01-01"},
            "until must be a day from 1971-01-01 to 9998-12-31 (got '0001-01-01')",
        ),
        (
            {"since": "2026-06-02", "until": "2026-06-01"},
            "since (2026-06-02) must not be after until (2026-06-01)",
        ),
        (
            {"since": "2025-01-01", "until": "2026-01-02"},
            "a report covers at most 366 days (asked for 367)",
        ),
    ],
)
def test_the_report_refuses_bad_dates_and_ranges(api, query, detail):
    body = api.get("/api/v1/report", 400, query_string=query)
    assert body == {"detail": f"Invalid parameter: {detail}"}


def test_the_report_covers_the_days_asked_for(api):
    body = api.get("/api/v1/report", query_string={"since": "2025-01-01", "until": "2025-12-31"})
    assert len(body["days"]) == 365 and body["days"][0]["date"] == "2025-01-01"
    assert body["total"]["unmonitored_seconds"] == sum(
        day["unmonitored_seconds"] for day in body["days"]
    )
    assert len(api.get("/api/v1/report")["days"]) == 30


# ------------------------------------------------------------------ unexpected errors


def test_an_unexpected_exception_is_a_json_500_without_traceback(api, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("status exploded")

    monkeypatch.setattr(Monitor, "status", broken)
    body = api.get("/api/v1/status", 500)
    assert body == {"detail": "Internal error: RuntimeError: status exploded"}
    text = api.last.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text and "line " not in text
    logged = [r for r in caplog.records if r.name == "vmcontroller.app" and r.exc_info]
    assert logged, "the traceback goes to the log instead"


# ------------------------------------------------------------------ logging


def records(caplog, name: str | None = None, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level and (name is None or r.name == name)]


def test_a_routine_heartbeat_is_logged_at_debug_only(api, caplog):
    caplog.set_level(logging.DEBUG)
    api.get("/api/v1/heartbeat")
    caplog.clear()
    for method in ("GET", "POST"):
        api.call(method, "/api/v1/heartbeat")
    api.get("/api/v1/heartbeat/status")
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name == "vmcontroller.requests" and r.levelno == logging.DEBUG
    ]
    assert any("GET /api/v1/heartbeat -> 200" in m for m in debug), debug
    assert any("POST /api/v1/heartbeat -> 200" in m for m in debug), debug
    assert any("GET /api/v1/heartbeat/status -> 200" in m for m in debug), debug
    assert records(caplog, "vmcontroller.requests") == []


def test_routine_reads_that_succeed_are_logged_at_debug_and_failed_ones_at_info(make_api, caplog):
    """A monitoring system polling status every few seconds for months must not fill the
    journal; a read that fails is worth a line."""
    caplog.set_level(logging.DEBUG)
    make_api(start=False).get("/api/v1/status", 503)  # not initialised yet: a failure
    failed = records(caplog, "vmcontroller.requests")
    assert len(failed) == 1 and "GET /api/v1/status -> 503" in failed[0].getMessage()
    api = make_api()
    caplog.clear()
    for path in (
        "/api/v1/status",
        "/api/v1/heartbeat/status",
        "/api/v1/snapshots",
        "/api/v1/events",
    ):
        api.get(path)
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name == "vmcontroller.requests" and r.levelno == logging.DEBUG
    ]
    assert len(debug) == 4, debug
    assert records(caplog, "vmcontroller.requests") == []
    api.post("/api/v1/revert/disable")  # a change: INFO
    assert len(records(caplog, "vmcontroller.requests")) == 1


def test_the_first_heartbeat_after_each_start_is_logged_once_at_info(api, caplog):
    caplog.set_level(logging.DEBUG)
    for restart in (None, "/api/v1/vm/restart", "/api/v1/vm/start"):
        if restart:
            api.post(restart)
        caplog.clear()
        api.get("/api/v1/heartbeat")
        info = records(caplog, "vmcontroller.monitor")
        assert len(info) == 1, [r.getMessage() for r in info]
        assert info[0].levelno == logging.INFO and "first heartbeat" in info[0].getMessage()
        caplog.clear()
        for i in range(100):
            api.call("POST" if i % 2 else "GET", f"/api/v1/heartbeat?seq={i}")
        assert records(caplog) == [], [r.getMessage() for r in records(caplog)]


def test_a_control_request_is_logged_at_info_with_its_duration(api, caplog):
    caplog.set_level(logging.INFO)
    api.post("/api/v1/revert/disable")
    lines = [r.getMessage() for r in records(caplog, "vmcontroller.requests")]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"\S+ POST /api/v1/revert/disable -> 200 in \d+\.\d ms", lines[0]), lines


def test_a_failed_heartbeat_is_logged_at_info(make_api, caplog):
    api = make_api(start=False)
    caplog.set_level(logging.INFO)
    api.get("/api/v1/heartbeat", 503)
    lines = [r.getMessage() for r in records(caplog, "vmcontroller.requests")]
    assert len(lines) == 1 and "GET /api/v1/heartbeat -> 503 in " in lines[0], lines


def test_control_characters_in_a_path_cannot_forge_a_log_line(make_api, caplog):
    api = make_api(start=False)
    caplog.set_level(logging.INFO)
    forged = "/api/v1/x%0A2026-01-01%2000:00:00%20INFO%20vmcontroller.requests:%20forged%1B[2K"
    api.get(forged, 404)
    lines = [r.getMessage() for r in records(caplog, "vmcontroller.requests")]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0] and "\x1b" not in lines[0], lines
    assert (
        "/api/v1/x\\n2026-01-01 00:00:00 INFO vmcontroller.requests: forged\\x1b[2K -> 404"
        in lines[0]
    ), lines


def test_a_heartbeat_carries_a_progress_value_on_both_paths_and_a_bad_one_is_refused(api):
    """The fast path (query string) and Flask's (form field) record the same value; a
    value too long or with a control character is a 400 and no heartbeat."""
    answer = api.get("/api/v1/heartbeat?seq=3&progress=frame%2012%20%26%20more")
    assert answer["details"]["progress"]["value"] == "frame 12 & more"
    api.post("/api/v1/heartbeat", data={"progress": "Flash: scene 2"})
    assert api.monitor.heartbeat_status()["progress"]["value"] == "Flash: scene 2"
    before = api.monitor.heartbeats_received
    for bad in ("x" * 129, "line%0Abreak"):
        refused = api.get(f"/api/v1/heartbeat?progress={bad}", expect=400)
        assert "progress must be at most 128 characters without control" in refused["detail"]
    refused = api.post("/api/v1/heartbeat", expect=400, json={"progress": 12})
    assert refused["detail"] == "Invalid parameter: progress must be a string (got int)"
    assert api.monitor.heartbeats_received == before
    assert api.monitor.heartbeat_status()["progress"]["value"] == "Flash: scene 2"
