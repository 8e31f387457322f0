"""The controller against a real libvirtd and real QEMU VMs (type='qemu').

Each test gets its own uniquely named domain (running, with a 'ready'
snapshot) and an in-process controller on a free loopback port. What the
controller did is read from libvirt itself: lifecycle events recorded by an
independent `virsh event` process, snapshot-current, domstate.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from libvirt_env import virsh, wait_until

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"   # libvirt's event when a revert brings the VM up


class Heartbeats:
    """A guest stand-in that sends a heartbeat every 0.2 s until stopped."""

    def __init__(self, api):
        self.api = api
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                self.api.session.get(self.api.base + "/api/v1/heartbeat", timeout=5)
            except Exception:
                pass

    def stop(self):
        self._stop.set()
        self._thread.join(5)


STATUS_FIELDS = {"vm_name": str, "vm_state": str, "vm_is_running": bool, "snapshot_name": str,
                 "snapshot_exists": bool, "heartbeat": dict, "auto_revert_enabled": bool}
# Additive fields beyond the API reference (issue 3): every spec field keeps its name and type.
STATUS_EXTRA = {"vm_state_detail": (str, type(None)), "stopped_by_staff": bool, "recovery": dict,
                "state_file": dict, "snapshot_detail": (str, type(None))}
HEARTBEAT_FIELDS = {"enabled": bool, "last_heartbeat": (str, type(None)),
                    "seconds_since_last": (int, float, type(None)), "is_healthy": bool,
                    "timeout": (int, float)}


def assert_fields(body: dict, fields: dict) -> None:
    """Field names and types exactly as in shared/spec/api-reference.md."""
    assert set(body) == set(fields), sorted(body)
    for key, kind in fields.items():
        assert isinstance(body[key], kind), (key, body[key])


def assert_message(body: dict) -> None:
    assert set(body) == {"message", "details"} and isinstance(body["message"], str)


def test_startup_reverts_and_every_read_endpoint_matches_the_spec(start_controller, domain,
                                                                  events):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30), "the controller reverts at start"
    assert domain.current_snapshot() == "ready"

    root = api.get("/")
    assert root == {"message": "Exhibition VM Controller API",
                    "details": {"version": root["details"]["version"], "documentation": "/docs",
                                "status": "/api/v1/status"}}

    status = api.get("/api/v1/status")
    assert_fields(status, {**STATUS_FIELDS, **STATUS_EXTRA})
    assert_fields(status["heartbeat"], HEARTBEAT_FIELDS)
    assert status["vm_name"] == domain.name and status["vm_state"] == "running"
    assert status["vm_is_running"] is True and status["snapshot_exists"] is True
    assert status["heartbeat"]["is_healthy"] is False, "no heartbeat since the start yet"
    assert status["heartbeat"]["last_heartbeat"] is None

    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/heartbeat?seq=1&boot=abc", "/api/v1/heartbeat").json()
        assert body["message"] == "Heartbeat received"
        assert_fields(body["details"], HEARTBEAT_FIELDS)
        assert body["details"]["is_healthy"] is True
        assert body["details"]["seconds_since_last"] == 0.0

    beat = api.get("/api/v1/heartbeat/status")
    assert_fields(beat, HEARTBEAT_FIELDS)
    assert beat["timeout"] == 3 and beat["is_healthy"] is True
    assert "T" in beat["last_heartbeat"]

    snaps = api.get("/api/v1/snapshots")
    assert snaps == {"vm_name": domain.name, "snapshots": ["ready"]}


def test_heartbeat_timeout_causes_a_revert(start_controller, domain, events):
    controller, api = start_controller()
    events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)
    time.sleep(2)
    assert events.count(REVERTED) == 1, "heartbeats keep the VM alone"
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "later", "--atomic")
    assert domain.current_snapshot() == "later"
    guest.stop()
    assert events.wait_for(REVERTED, 2, 30), "no revert after the heartbeat timeout"
    assert domain.current_snapshot() == "ready"
    wait_until(lambda: domain.state() == "running", 30, message="VM running after the revert")
    assert api.get("/api/v1/heartbeat/status")["is_healthy"] is False


def test_external_destroy_is_recovered(start_controller, domain, events):
    controller, api = start_controller(heartbeat_timeout=30)
    events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)
    try:
        virsh("destroy", "--domain", domain.name)
        assert events.wait_for(REVERTED, 2, 20), "destroyed VM not recovered"
        wait_until(lambda: domain.state() == "running", 30, message="VM running again")
    finally:
        guest.stop()


def test_suspend_is_recovered_but_our_own_snapshot_pause_is_not(start_controller, domain, events):
    controller, api = start_controller(heartbeat_timeout=2)
    events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)  # heartbeats keep coming: only the paused state can trigger this
    try:
        api.post("/api/v1/snapshot/create?snapshot_name=pause-check")
        assert events.wait_for("Resumed Unpaused", 1, 10)
        time.sleep(3)
        assert events.count(REVERTED) == 1, "a snapshot's own brief pause is no failure"
        virsh("suspend", "--domain", domain.name)
        assert events.wait_for(REVERTED, 2, 30), "paused VM not recovered"
        wait_until(lambda: domain.state() == "running", 30, message="VM running again")
    finally:
        guest.stop()


def test_stop_through_the_api_stays_stopped_until_started(start_controller, domain, events):
    controller, api = start_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    events.wait_for(REVERTED, 1, 30)
    assert_message(api.post("/api/v1/vm/stop"))
    assert domain.state() == "shut off"
    time.sleep(3)
    assert domain.state() == "shut off" and events.count(REVERTED) == 1
    assert api.get("/api/v1/heartbeat/status")["enabled"] is False
    assert api.get("/api/v1/vm/stop")["message"].endswith("(it was not running)")
    body = api.get("/api/v1/vm/start")
    assert body["message"] == f"VM '{domain.name}' started successfully"
    assert domain.state() == "running" and events.count(REVERTED) == 2
    assert domain.current_snapshot() == "ready"


def test_maintenance_mode_does_not_revert(start_controller, domain, events):
    controller, api = start_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    events.wait_for(REVERTED, 1, 30)
    assert api.get("/api/v1/revert/disable")["message"].startswith("Automatic revert disabled")
    assert api.get("/api/v1/status")["auto_revert_enabled"] is False
    virsh("destroy", "--domain", domain.name)
    time.sleep(3)  # three timeouts without a heartbeat, and a destroyed VM
    assert domain.state() == "shut off" and events.count(REVERTED) == 1
    assert api.post("/api/v1/revert/enable") == {"message": "Automatic revert enabled",
                                                 "details": None}
    assert events.wait_for(REVERTED, 2, 30), "enabling auto-revert recovers the VM"


def test_restart_returns_once_the_vm_runs(start_controller, domain, events):
    controller, api = start_controller(vm_startup_heartbeat_delay=30)
    events.wait_for(REVERTED, 1, 30)
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "drift", "--atomic")
    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/vm/restart", "/api/v1/vm/restart").json()
        assert body == {"message": f"VM '{domain.name}' restarted successfully", "details": None}
        assert domain.state() == "running" and domain.current_snapshot() == "ready"
    beat = api.get("/api/v1/heartbeat/status")
    assert beat["enabled"] is False, "the grace period goes on in the background"


def test_twenty_concurrent_restarts(start_controller, domain, events):
    controller, api = start_controller()
    events.wait_for(REVERTED, 1, 30)
    before = events.count(REVERTED)
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: api.call("POST", "/api/v1/vm/restart",
                                                 "/api/v1/vm/restart", expect=None).status_code,
                              range(20)))
    assert codes == [200] * 20
    time.sleep(1)  # let any late lifecycle event arrive before counting
    reverts = events.count(REVERTED) - before
    assert 1 <= reverts <= 2, f"{reverts} reverts for 20 concurrent restarts"
    assert domain.state() == "running"


def test_snapshot_create_replace_list_delete(start_controller, domain, events):
    controller, api = start_controller()
    events.wait_for(REVERTED, 1, 30)
    body = api.get("/api/v1/snapshot/create?snapshot_name=backup-2025-12-09")
    assert body["message"] == f"Snapshot 'backup-2025-12-09' created successfully for VM '{domain.name}'"
    api.post("/api/v1/snapshot/create", data={"snapshot_name": "from-form"})
    api.post("/api/v1/snapshot/create?snapshot_name=after-ready")
    listed = api.get("/api/v1/snapshots")["snapshots"]
    assert sorted(listed) == sorted(domain.snapshots())
    assert set(listed) == {"ready", "backup-2025-12-09", "from-form", "after-ready"}

    # Replacing 'ready' (default name) keeps every snapshot made after it.
    tree_before = domain.snapshot_tree()
    assert tree_before["backup-2025-12-09"] == "ready"
    body = api.post("/api/v1/snapshot/create")
    assert body["message"].startswith("Snapshot 'ready' replaced successfully")
    tree = domain.snapshot_tree()
    assert set(tree) == {"ready", "backup-2025-12-09", "from-form", "after-ready"}
    assert tree["backup-2025-12-09"] is None, "children of the old 'ready' are re-parented"
    assert tree["ready"] == "after-ready", "the new 'ready' is the newest state"
    assert domain.current_snapshot() == "ready"

    assert api.call("DELETE", "/api/v1/snapshot/from-form", "/api/v1/snapshot/{snapshot_name}"
                    ).json() == {"message": "Snapshot 'from-form' deleted successfully",
                                 "details": None}
    api.get("/api/v1/snapshot/delete/backup-2025-12-09",
            "/api/v1/snapshot/delete/{snapshot_name}")
    assert set(domain.snapshots()) == {"ready", "after-ready"}
    missing = api.call("DELETE", "/api/v1/snapshot/never-made", "/api/v1/snapshot/{snapshot_name}",
                       expect=404).json()
    assert "never-made" in missing["detail"]
    api.call("GET", "/api/v1/snapshot/delete/never-made",
             "/api/v1/snapshot/delete/{snapshot_name}", expect=404)


BAD_NAMES = ["--current", "--children", "-h", "--", "", "a b", "../x", ".hidden", "é✓", "a\n",
             "x" * 300]


def test_bad_snapshot_names_are_rejected_and_change_nothing(start_controller, domain, events):
    controller, api = start_controller(heartbeat_timeout=60)
    events.wait_for(REVERTED, 1, 30)
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "child", "--atomic")
    before = (domain.snapshot_tree(), domain.current_snapshot(), domain.state(), len(events.events))
    create = "/api/v1/snapshot/create"
    for name in BAD_NAMES:
        body = api.call("GET", create, create, params={"snapshot_name": name}, expect=400).json()
        assert "snapshot_name" in body["detail"]
        api.call("POST", create, create, data={"snapshot_name": name}, expect=400)
        if name and "/" not in name:
            quoted = requests_quote(name)
            api.call("DELETE", f"/api/v1/snapshot/{quoted}", "/api/v1/snapshot/{snapshot_name}",
                     expect=400)
            api.call("GET", f"/api/v1/snapshot/delete/{quoted}",
                     "/api/v1/snapshot/delete/{snapshot_name}", expect=400)
    # A name with a slash cannot even route to a snapshot: 400 via the path converter.
    api.call("GET", "/api/v1/snapshot/delete/..%2Fx", None, expect=400)
    time.sleep(0.5)
    after = (domain.snapshot_tree(), domain.current_snapshot(), domain.state(), len(events.events))
    assert after == before


def requests_quote(name: str) -> str:
    from urllib.parse import quote
    return quote(name, safe="")


def test_unknown_paths_and_wrong_methods_are_json(start_controller):
    controller, api = start_controller()
    assert api.call("GET", "/api/v1/nothing-here", expect=404).json() == {"detail": "Not Found"}
    body = api.call("PUT", "/api/v1/heartbeat", expect=405).json()
    assert body == {"detail": "Method Not Allowed"}
    api.call("DELETE", "/api/v1/status", expect=405)
    api.call("POST", "/api/v1/snapshots", expect=405)


def test_libvirt_failure_is_a_500_with_virsh_message(start_controller, domain):
    missing = domain.name + "-gone"
    controller, api = start_controller(vm_name=missing)
    status = api.get("/api/v1/status")
    assert status["vm_state"] == "not found" and status["vm_is_running"] is False
    body = api.call("POST", "/api/v1/vm/restart", "/api/v1/vm/restart", expect=500).json()
    assert body["detail"].startswith("Error restarting VM: ")
    assert f"failed to get domain '{missing}'" in body["detail"]
    body = api.call("GET", "/api/v1/snapshots", "/api/v1/snapshots", expect=500).json()
    assert f"'{missing}'" in body["detail"]
