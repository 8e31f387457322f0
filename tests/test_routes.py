"""The routes over a stub of the Controls protocol: no monitor thread, no virsh, no store.

What each route asks of the controller, the JSON it shapes from the answer, and
the status each failure of ``errors.py`` gets, every answer checked against the
OpenAPI document. The same routes over the real Monitor and real libvirt are
tested in test_api.py, test_recovery.py and the others; this file pins the
contract between the web layer and the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from checked_http import checked_client

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.controls import Controls
from vmcontroller.errors import (
    Busy,
    Conflict,
    LibvirtFailure,
    NotInitialised,
    SnapshotMissing,
    SnapshotUnknown,
    StateFileError,
)
from vmcontroller.report import ReportRangeError


def example(spec: dict, path: str, method: str = "get", status: str = "200") -> Any:
    """The documented example answer: the stub answers what the document promises."""
    return spec["paths"][path][method]["responses"][status]["content"]["application/json"][
        "example"
    ]


@dataclass
class Row:
    data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return self.data


@dataclass
class Started:
    reverted: bool


@dataclass
class StubControls:
    """Answers from the document's examples; ``fail`` makes a method raise instead."""

    spec: dict
    vm_name: str = "eden-garden-vm"
    snapshot_name: str = "ready"
    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    reverted: bool = True
    was_running: bool = True
    replaced: bool = False
    note: str | None = None  # the schedule's word outside opening hours

    def schedule_note(self) -> str | None:
        return self.note

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            raise self.fail[name]

    def status(self) -> dict[str, Any]:
        self._call("status")
        return example(self.spec, "/api/v1/status")

    def heartbeat(self, progress: str | None = None) -> dict[str, Any]:
        self._call("heartbeat")
        return example(self.spec, "/api/v1/heartbeat")["details"]

    def heartbeat_status(self) -> dict[str, Any]:
        self._call("heartbeat_status")
        return example(self.spec, "/api/v1/heartbeat/status")

    def start_vm(self) -> Started:
        self._call("start_vm")
        return Started(self.reverted)

    def stop_vm(self) -> bool:
        self._call("stop_vm")
        return self.was_running

    def restart_vm(self) -> None:
        self._call("restart_vm")

    def list_snapshots(self) -> list[str]:
        self._call("list_snapshots")
        return ["ready", "backup-1"]

    def create_snapshot(self, name: str) -> bool:
        self._call("create_snapshot", name)
        return self.replaced

    def delete_snapshot(self, name: str) -> None:
        self._call("delete_snapshot", name)

    def set_auto_revert(self, enabled: bool) -> None:
        self._call("set_auto_revert", enabled)

    def request_revert(self, trigger: str, reason: str) -> dict[str, Any]:
        self._call("request_revert", trigger, reason)
        return example(self.spec, "/api/v1/revert/request", "get", "202")["details"]

    def history(self, limit: int = 100, since: float | None = None, triggers: Any = ()) -> Any:
        self._call("history", limit, since, tuple(triggers))
        return [Row(e) for e in example(self.spec, "/api/v1/events")["events"]]

    def report(self, since: str | None, until: str | None) -> dict[str, Any]:
        self._call("report", since, until)
        if since == "bad":
            raise ReportRangeError("since must be a date written YYYY-MM-DD (got 'bad')")
        return example(self.spec, "/api/v1/report")


@pytest.fixture
def routes(openapi, check_response):
    def make(**stub: Any) -> tuple[Any, StubControls]:
        controls = StubControls(openapi, **stub)
        typed: Controls = controls  # the stub is a Controls, as mypy would check
        return checked_client(create_app(typed, __version__), openapi, check_response), controls

    return make


def test_each_route_asks_the_controller_once_and_shapes_its_answer(routes, openapi):
    client, controls = routes()
    assert client.get("/api/v1/status").get_json() == example(openapi, "/api/v1/status")
    assert client.post("/api/v1/heartbeat").get_json()["message"] == "Heartbeat received"
    assert client.get("/api/v1/snapshots").get_json() == {
        "vm_name": "eden-garden-vm",
        "snapshots": ["ready", "backup-1"],
    }
    assert client.post("/api/v1/vm/restart").get_json()["message"] == (
        "VM 'eden-garden-vm' restarted successfully"
    )
    assert client.post("/api/v1/snapshot/create?snapshot_name=before-show").get_json()[
        "message"
    ] == ("Snapshot 'before-show' created successfully for VM 'eden-garden-vm'")
    assert client.delete("/api/v1/snapshot/backup-1").status_code == 200
    assert client.get("/api/v1/revert/disable").status_code == 200
    answer = client.get("/api/v1/idle/reset?idle_duration=90")
    assert answer.status_code == 202
    assert client.get("/api/v1/events?limit=5&trigger=idle_reset").get_json()["events"]
    assert [name for name, _ in controls.calls] == [
        "status",
        "heartbeat",
        "list_snapshots",
        "restart_vm",
        "create_snapshot",
        "delete_snapshot",
        "set_auto_revert",
        "request_revert",
        "history",
    ]
    assert ("create_snapshot", ("before-show",)) in controls.calls
    assert ("set_auto_revert", (False,)) in controls.calls
    assert (
        "request_revert",
        ("idle_reset", "the guest reports no visitor interaction for 90 s"),
    ) in controls.calls
    assert ("history", (5, None, ("idle_reset",))) in controls.calls


def test_start_and_stop_say_what_they_found(routes):
    client, _ = routes(reverted=False, was_running=False)
    assert client.post("/api/v1/vm/start").get_json()["message"] == (
        "VM 'eden-garden-vm' started successfully "
        "(snapshot 'ready' not found: booted without a revert)"
    )
    assert client.post("/api/v1/vm/stop").get_json()["message"] == (
        "VM 'eden-garden-vm' stopped successfully (it was not running)"
    )
    client, _ = routes(replaced=True)
    assert client.post("/api/v1/snapshot/create").get_json()["message"] == (
        "Snapshot 'ready' replaced successfully for VM 'eden-garden-vm'"
    )


def test_staff_actions_outside_opening_hours_are_done_and_say_so(routes):
    client, controls = routes(note="the museum is closed (outside opening hours)")
    for path in ("/api/v1/vm/start", "/api/v1/vm/stop", "/api/v1/vm/restart"):
        answer = client.post(path)
        assert answer.status_code == 200
        assert answer.get_json()["details"] == {"note": controls.note}
    client, _ = routes()
    assert client.post("/api/v1/vm/start").get_json()["details"] is None


@pytest.mark.parametrize(
    ("method", "path", "failing", "error", "status", "detail"),
    [
        (
            "GET",
            "/api/v1/status",
            "status",
            NotInitialised("VM manager not initialized"),
            503,
            "VM manager not initialized",
        ),
        (
            "POST",
            "/api/v1/vm/restart",
            "restart_vm",
            SnapshotMissing("no snapshot 'ready'"),
            409,
            "no snapshot 'ready'",
        ),
        (
            "GET",
            "/api/v1/revert/request?reason=x",
            "request_revert",
            Conflict("maintenance is on"),
            409,
            "maintenance is on",
        ),
        (
            "GET",
            "/api/v1/events",
            "history",
            StateFileError("cannot read the history"),
            503,
            "cannot read the history",
        ),
        (
            "POST",
            "/api/v1/snapshot/create",
            "create_snapshot",
            LibvirtFailure("No space left"),
            500,
            "Error creating snapshot: No space left",
        ),
        (
            "POST",
            "/api/v1/vm/start",
            "start_vm",
            LibvirtFailure("internal error: qemu died"),
            500,
            "Error starting VM: internal error: qemu died",
        ),
        (
            "DELETE",
            "/api/v1/snapshot/gone",
            "delete_snapshot",
            SnapshotUnknown("Domain snapshot not found"),
            404,
            "Snapshot 'gone' not found for VM 'eden-garden-vm'",
        ),
    ],
)
def test_each_failure_of_the_controller_gets_its_documented_status(
    routes, method, path, failing, error, status, detail
):
    client, _ = routes(fail={failing: error})
    answer = client.open(path, method=method)
    assert (answer.status_code, answer.get_json()) == (status, {"detail": detail})


def test_busy_answers_503_with_retry_after_rounded_up(routes):
    client, _ = routes(fail={"restart_vm": Busy("a revert holds the VM", 2.2)})
    answer = client.post("/api/v1/vm/restart")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"


def test_bad_input_is_refused_before_the_controller_is_asked(routes):
    client, controls = routes()
    assert client.post("/api/v1/snapshot/create?snapshot_name=../x").status_code == 400
    assert client.get("/api/v1/events?trigger=nonsense").status_code == 400
    assert client.get("/api/v1/revert/request").status_code == 400  # reason is required
    assert controls.calls == []


@pytest.mark.parametrize("path", ["/api/v1/heartbeat", "/api/v1/status"])
def test_the_hot_path_answers_byte_for_byte_as_flask_does(routes, path):
    """HotPath serves the heartbeat and status without Flask's request machinery; a
    doubled slash bypasses it (PATH_INFO differs) and Flask routes the same view."""
    client, controls = routes()
    hot = client.get(path)
    flask = client.get("/", environ_overrides={"PATH_INFO": "/" + path})
    assert hot.status_code == flask.status_code == 200
    assert hot.data == flask.data
    for header in ("Content-Type", "Content-Length", "X-Content-Type-Options", "Referrer-Policy"):
        assert hot.headers[header] == flask.headers[header], header
    assert len(controls.calls) == 2


def test_a_failing_hot_route_is_answered_by_flasks_error_handlers(routes):
    client, controls = routes(fail={"heartbeat": NotInitialised("VM manager not initialized")})
    answer = client.post("/api/v1/heartbeat")
    assert (answer.status_code, answer.get_json()) == (
        503,
        {"detail": "VM manager not initialized"},
    )
    client, _ = routes(fail={"status": LibvirtFailure("cannot recv data: Connection reset")})
    answer = client.get("/api/v1/status")
    assert answer.get_json() == {
        "detail": "Error retrieving status: cannot recv data: Connection reset"
    }
    assert answer.status_code == 500
    client, _ = routes()
    assert client.put("/api/v1/heartbeat").status_code == 405
    assert client.head("/api/v1/status").data == b""


def test_the_report_passes_its_dates_and_answers_the_documented_shape(routes, openapi):
    client, controls = routes()
    answer = client.get("/api/v1/report?since=2025-12-01&until=2025-12-31")
    assert answer.get_json() == example(openapi, "/api/v1/report")
    assert client.get("/api/v1/report").status_code == 200
    assert controls.calls == [("report", ("2025-12-01", "2025-12-31")), ("report", (None, None))]


def test_a_bad_report_range_is_a_400_with_the_reason(routes):
    client, _ = routes()
    answer = client.get("/api/v1/report?since=bad")
    assert (answer.status_code, answer.get_json()) == (
        400,
        {"detail": "Invalid parameter: since must be a date written YYYY-MM-DD (got 'bad')"},
    )
