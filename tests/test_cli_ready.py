"""`vmcontroller ready` over the real routes, in front of a stub controller that keeps state.

The verb is a sequence of API calls whose order matters (maintenance on before
anything else, the snapshot only after a fresh heartbeat, maintenance put back
as it was on every way out), so the stub records the calls and answers like a
controller would: a guest that heartbeats moves ``last_heartbeat`` on at each
look, maintenance is a flag the routes set. The same verb against real
libvirt and the real heartbeat guest is in test_ready.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: an autouse fixture)
from libvirt_env import free_port
from werkzeug.serving import make_server

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.controls import Controls
from vmcontroller.errors import LibvirtFailure

START = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)


@dataclass
class Started:
    reverted: bool = True


@dataclass
class ReadyControls:
    """A controller in memory: maintenance flag, VM state, a guest that heartbeats or not."""

    vm_name: str = "eden"
    snapshot_name: str = "ready"
    auto_revert: bool = True
    vm_state: str = "running"
    beating: bool = True  # the guest's heartbeats arrive
    snapshot_exists: bool = True
    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    beats: int = 0
    stops_at_look: int | None = None  # the VM shuts off at this look at the status
    looks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, name: str, *args: Any) -> None:
        with self.lock:
            self.calls.append((name, args))
        if name in self.fail:
            raise self.fail[name]

    def heartbeat_status(self) -> dict[str, Any]:
        if self.beating and self.vm_state == "running":
            self.beats += 1  # one more heartbeat has come since the last look
        last = START + timedelta(seconds=self.beats) if self.beats else None
        return {
            "enabled": True,
            "last_heartbeat": last.isoformat() if last else None,
            "seconds_since_last": 42.0 if last else None,
            "is_healthy": self.beating,
            "timeout": 10,
        }

    def status(self) -> dict[str, Any]:
        self._call("status")
        self.looks += 1
        if self.looks == self.stops_at_look:
            self.vm_state = "shut off"
        return {
            "vm_name": self.vm_name,
            "vm_state": self.vm_state,
            "vm_is_running": self.vm_state == "running",
            "snapshot_name": self.snapshot_name,
            "snapshot_exists": self.snapshot_exists,
            "heartbeat": self.heartbeat_status(),
            "auto_revert_enabled": self.auto_revert,
        }

    def heartbeat(self) -> dict[str, Any]:
        return self.heartbeat_status()

    def start_vm(self) -> Started:
        return Started()

    def stop_vm(self) -> bool:
        return True

    def restart_vm(self) -> None:
        pass

    def list_snapshots(self) -> list[str]:
        return [self.snapshot_name] if self.snapshot_exists else []

    def create_snapshot(self, name: str) -> bool:
        self._call("create_snapshot", name, self.auto_revert)
        replaced, self.snapshot_exists = self.snapshot_exists, True
        return replaced

    def delete_snapshot(self, name: str) -> None:
        pass

    def set_auto_revert(self, enabled: bool) -> None:
        self._call("set_auto_revert", enabled)
        self.auto_revert = enabled

    def request_revert(self, trigger: str, reason: str) -> dict[str, Any]:
        return {}

    def history(self, limit: int = 100, since: float | None = None, triggers: Any = ()) -> Any:
        return []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls if name != "status"]


@pytest.fixture
def controller() -> Iterator[tuple[ReadyControls, str]]:
    """The stub behind the real Flask app, served over HTTP on loopback for the CLI."""
    controls = ReadyControls()
    typed: Controls = controls
    server = make_server("127.0.0.1", 0, create_app(typed, __version__), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield controls, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def ready(url: str, *args: str):
    return invoke("ready", "--url", url, *args)


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown(result)
    assert "Traceback" not in shown(result)
    return lines[0]


# ------------------------------------------------------------------ success


def test_ready_turns_maintenance_on_checks_snapshots_and_turns_it_off(controller):
    controls, url = controller
    result = ready(url)
    assert result.exit_code == 0, shown(result)
    assert controls.names() == ["set_auto_revert", "create_snapshot", "set_auto_revert"]
    creates = [args for name, args in controls.calls if name == "create_snapshot"]
    assert creates == [("ready", False)], "the snapshot is taken in maintenance, under its name"
    assert controls.auto_revert is True
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line[:1].isdigit()] == [
        "1/5 maintenance",
        "2/5 VM running",
        "3/5 heartbeats",
        "4/5 snapshot",
        "5/5 maintenance",
    ], result.stdout
    assert "Snapshot 'ready' replaced successfully" in result.stdout
    assert "off again" in lines[-2] and "reference snapshot" in lines[-1]
    assert result.stderr == ""


def test_ready_leaves_maintenance_on_when_it_was_on(controller):
    controls, url = controller
    controls.auto_revert = False
    result = ready(url)
    assert result.exit_code == 0, shown(result)
    assert controls.names() == ["create_snapshot"], "maintenance neither set nor cleared"
    assert controls.auto_revert is False
    assert "already on" in result.stdout and "left on, as it was" in result.stdout


def test_ready_takes_the_configured_snapshot_name_and_creates_a_missing_one(controller):
    controls, url = controller
    controls.snapshot_name, controls.snapshot_exists = "start-state", False
    result = ready(url)
    assert result.exit_code == 0, shown(result)
    assert [a for n, a in controls.calls if n == "create_snapshot"] == [("start-state", False)]
    assert "taking 'start-state'" in result.stdout
    assert "Snapshot 'start-state' created successfully" in result.stdout


def test_ready_json_prints_a_summary_and_no_progress_on_stdout(controller):
    controls, url = controller
    result = ready(url, "--json")
    assert result.exit_code == 0, shown(result)
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["vm_name"] == "eden" and summary["snapshot_name"] == "ready"
    assert summary["snapshot"] == "replaced"
    assert summary["maintenance_before"] is False and summary["maintenance_after"] is False
    assert summary["last_heartbeat"].startswith("2026-11-25T10:00")
    assert [s["step"] for s in summary["steps"]] == [
        "maintenance",
        "VM running",
        "heartbeats",
        "snapshot",
        "maintenance",
    ]
    assert "1/5 maintenance" in result.stderr, "progress goes to stderr with --json"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("state", ["shut off", "paused"])
def test_a_vm_that_does_not_run_is_refused_and_maintenance_restored(controller, state):
    controls, url = controller
    controls.vm_state = state
    result = ready(url, "--wait", "5")
    assert result.exit_code == 1, shown(result)
    line = one_error_line(result)
    assert "step 'VM running'" in line and "the VM is not running" in line, line
    assert "start it and wait for the artwork, then run ready again" in line, line
    assert "maintenance is off again, as it was before" in line, line
    if state == "paused":
        assert "no heartbeats" in line, line
    assert controls.names() == ["set_auto_revert", "set_auto_revert"], "no snapshot"
    assert controls.auto_revert is True


def test_a_guest_without_heartbeats_is_refused_after_the_wait(controller):
    controls, url = controller
    controls.heartbeat_status()  # one heartbeat came, long ago
    controls.beating = False
    result = ready(url, "--wait", "1")
    assert result.exit_code == 1, shown(result)
    line = one_error_line(result)
    assert "step 'heartbeats'" in line and "no heartbeat from the guest within 1 s" in line
    assert "the last one came at 2026-11-25T10:00:01+00:00 (42 s ago)" in line, line
    assert "heartbeat script" in line and "PREPARING-WINDOWS.md" in line, line
    assert "maintenance is off again" in line
    assert controls.names() == ["set_auto_revert", "set_auto_revert"]
    assert controls.auto_revert is True
    looks = [n for n, _ in controls.calls if n == "status"]
    assert len(looks) >= 3, "it looked again while waiting"


def test_a_vm_that_stops_while_ready_waits_for_a_heartbeat_is_refused_at_once(controller):
    """Waiting out --wait for a VM that is gone would only delay the reason."""
    controls, url = controller
    controls.beating = False
    controls.stops_at_look = 3  # running at the first two looks (status, VM running)
    result = ready(url, "--wait", "600")
    assert result.exit_code == 1, shown(result)
    line = one_error_line(result)
    assert "step 'heartbeats'" in line and "the VM is not running (state: shut off)" in line
    assert "maintenance is off again, as it was before" in line, line
    assert controls.names() == ["set_auto_revert", "set_auto_revert"], "no snapshot"
    assert controls.auto_revert is True


def test_a_guest_that_never_heartbeat_is_named_so(controller):
    controls, url = controller
    controls.beating = False
    result = ready(url, "--wait", "0")
    assert result.exit_code == 1, shown(result)
    assert "none has come since the controller started" in one_error_line(result)


def test_a_refusal_keeps_maintenance_on_when_it_was_on(controller):
    controls, url = controller
    controls.auto_revert, controls.beating = False, False
    result = ready(url, "--wait", "0")
    assert result.exit_code == 1, shown(result)
    assert "maintenance stays on, as it was before" in one_error_line(result)
    assert controls.names() == [] and controls.auto_revert is False


def test_a_failed_snapshot_exits_1_with_libvirts_message_and_maintenance_restored(controller):
    controls, url = controller
    controls.fail["create_snapshot"] = LibvirtFailure("error: No space left on device")
    result = ready(url, "--json")
    assert result.exit_code == 1, shown(result)
    line = result.stderr.splitlines()[-1]  # after the progress, which --json sends to stderr
    assert line.startswith("vmcontroller: ready stopped at step 'snapshot'"), line
    assert "step 'snapshot'" in line and "No space left on device" in line, line
    assert "(HTTP 500)" in line and "maintenance is off again" in line
    assert controls.auto_revert is True
    summary = json.loads(result.stdout)
    assert summary["ok"] is False and summary["step"] == "snapshot"
    assert "No space left on device" in summary["reason"]
    assert summary["maintenance_after"] is False


def test_maintenance_refused_stops_before_anything_else(controller):
    controls, url = controller
    controls.fail["set_auto_revert"] = LibvirtFailure("the state file is read-only")
    result = ready(url)
    assert result.exit_code == 1, shown(result)
    line = one_error_line(result)
    assert "step 'maintenance'" in line, line
    assert "maintenance may still be ON" in line and "vmcontroller revert enable" in line, line
    assert "create_snapshot" not in controls.names()


def test_an_unreachable_controller_exits_3():
    result = ready(f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 3, shown(result)
    line = one_error_line(result)
    assert "step 'status'" in line and "connection refused" in line, line
    assert "nothing was changed" in line


def test_wait_must_be_a_number_of_seconds(controller):
    _, url = controller
    result = ready(url, "--wait", "soon")
    assert result.exit_code == 2, shown(result)
