"""The controller against a real libvirtd and real QEMU VMs (type='qemu').

Each test gets its own uniquely named domain (running, with a 'ready'
snapshot) and an in-process controller on a free loopback port. What the
controller did is read from libvirt itself: lifecycle events recorded by an
independent `virsh event` process, snapshot-current, domstate.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from libvirt_env import virsh, wait_until
from waits import enforcement_period, pause_period, stays_false

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"  # libvirt's event when a revert brings the VM up


class Heartbeats:
    """A guest stand-in that sends a heartbeat every 0.2 s until stopped.

    Every answer is checked (200, the message, healthy) and counted; any other
    answer or a failed request is kept in ``errors`` for the test to assert on,
    so a sender that silently fails cannot pass for a guest that is alive.
    """

    def __init__(self, api):
        self.api = type(api)(api.base, api._check)  # its own session: not shared across threads
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                body = self.api.get("/api/v1/heartbeat")
                assert body["message"] == "Heartbeat received", body
                assert body["details"]["is_healthy"] is True, body
                self.answered += 1
            except Exception as exc:  # kept for the test; this thread must not die
                self.errors.append(repr(exc))

    def wait_answered(self, count: int, timeout: float = 30) -> None:
        """A positive sign: ``count`` more heartbeats answered from now."""
        target = self.answered + count
        wait_until(
            lambda: self.answered >= target or bool(self.errors),
            timeout,
            message=f"{count} heartbeats answered",
        )
        assert not self.errors, self.errors

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def reverts_in_history(api) -> int:
    """Reverts the controller recorded (started ones too: they count before libvirt's event)."""
    return sum(
        1
        for e in api.get("/api/v1/events?limit=1000", "/api/v1/events")["events"]
        if e["action"] == "revert"
    )


STATUS_FIELDS = {
    "vm_name": str,
    "vm_state": str,
    "vm_is_running": bool,
    "snapshot_name": str,
    "snapshot_exists": bool,
    "heartbeat": dict,
    "auto_revert_enabled": bool,
}
# Additive fields beyond the API reference (issue 3): every spec field keeps its name and type.
STATUS_EXTRA = {
    "vm_state_detail": (str, type(None)),
    "stopped_by_staff": bool,
    "recovery": dict,
    "state_file": dict,
    "snapshot_detail": (str, type(None)),
    "schedule": (dict, type(None)),  # null: no opening hours configured
    "notifications": (dict, type(None)),
    "screen": (dict, type(None)),
}
HEARTBEAT_FIELDS = {
    "enabled": bool,
    "last_heartbeat": (str, type(None)),
    "seconds_since_last": (int, float, type(None)),
    "is_healthy": bool,
    "timeout": (int, float),
    # Additive (issue 16): the heartbeats' progress value, null while unused.
    "progress": (dict, type(None)),
}


def assert_fields(body: dict, fields: dict) -> None:
    """Field names and types exactly as in shared/spec/api-reference.md."""
    assert set(body) == set(fields), sorted(body)
    for key, kind in fields.items():
        assert isinstance(body[key], kind), (key, body[key])


def assert_message(body: dict) -> None:
    assert set(body) == {"message", "details"} and isinstance(body["message"], str)


def test_startup_reverts_and_every_read_endpoint_matches_the_spec(start_controller, domain, events):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30), "the controller reverts at start"
    assert domain.current_snapshot() == "ready"

    root = api.get("/")
    assert root == {
        "message": "Exhibition VM Controller API",
        "details": {
            "version": root["details"]["version"],
            "documentation": "/docs",
            "status": "/api/v1/status",
        },
    }

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


def test_answered_heartbeats_keep_the_vm_alone_past_grace_and_timeout(
    start_controller, domain, events
):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)
    try:
        guest.wait_answered(3)
        wait_until(
            lambda: api.get("/api/v1/heartbeat/status")["enabled"],
            30,
            message="the grace period to end (heartbeat timeout enforced)",
        )
        answered = guest.answered
        period = enforcement_period(controller.config)
        stays_false(
            lambda: events.count(REVERTED) > 1 or reverts_in_history(api) > 1,
            period,
            "a guest whose heartbeats are answered was reverted",
        )
        assert not guest.errors, guest.errors
        assert guest.answered - answered >= period / 0.2 / 4, "heartbeats kept coming meanwhile"
        assert api.get("/api/v1/heartbeat/status")["is_healthy"] is True
    finally:
        guest.stop()


def test_heartbeat_timeout_causes_a_revert(start_controller, domain, events):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)
    guest.wait_answered(3)
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "later", "--atomic")
    assert domain.current_snapshot() == "later"
    guest.stop()
    assert not guest.errors, guest.errors
    assert events.wait_for(REVERTED, 2, 30), "no revert after the heartbeat timeout"
    assert domain.current_snapshot() == "ready"
    wait_until(lambda: domain.state() == "running", 30, message="VM running after the revert")
    assert api.get("/api/v1/heartbeat/status")["is_healthy"] is False
    triggers = [
        e["trigger"]
        for e in api.get("/api/v1/events?limit=1000", "/api/v1/events")["events"]
        if e["action"] == "revert" and e["outcome"] == "succeeded"
    ]
    assert "heartbeat_timeout" in triggers, triggers


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


def recovered_by(api, trigger: str) -> list[dict]:
    """The controller's successful reverts with this trigger, from its history API."""
    return [
        e
        for e in api.get(f"/api/v1/events?trigger={trigger}", "/api/v1/events")["events"]
        if e["action"] == "revert" and e["outcome"] == "succeeded"
    ]


def test_a_suspended_vm_is_recovered_with_trigger_vm_paused_but_a_snapshots_pause_is_not(
    start_controller, domain, events
):
    controller, api = start_controller(heartbeat_timeout=2)
    assert events.wait_for(REVERTED, 1, 30)
    guest = Heartbeats(api)  # heartbeats keep coming: only the paused state can trigger this
    try:
        guest.wait_answered(3)
        api.post("/api/v1/snapshot/create?snapshot_name=pause-check")
        assert events.wait_for("Resumed Unpaused", 1, 10), "the snapshot's own pause is seen"
        stays_false(
            lambda: events.count(REVERTED) > 1,
            pause_period(controller.config),
            "a snapshot's own brief pause was taken for a failure",
        )
        assert not guest.errors, guest.errors
        assert recovered_by(api, "vm_paused") == []
        virsh("suspend", "--domain", domain.name)
        assert events.wait_for("Suspended Paused", 1, 10)
        assert events.wait_for(REVERTED, 2, 30), "paused VM not recovered"
        wait_until(
            lambda: len(recovered_by(api, "vm_paused")) == 1,
            30,
            message="the revert recorded with trigger vm_paused",
        )
        assert recovered_by(api, "heartbeat_timeout") == [], "the heartbeats were answered"
        wait_until(lambda: domain.state() == "running", 30, message="VM running again")
    finally:
        guest.stop()
    assert not guest.errors, guest.errors


def test_a_vm_stopped_through_the_api_stays_stopped_past_grace_and_timeout(
    start_controller, domain, events
):
    controller, api = start_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    assert events.wait_for(REVERTED, 1, 30)
    assert_message(api.post("/api/v1/vm/stop"))
    assert events.wait_for("Stopped Destroyed", 1, 10), "libvirt saw the stop"
    assert domain.state() == "shut off"
    assert api.get("/api/v1/heartbeat/status")["enabled"] is False
    stays_false(
        lambda: domain.state() != "shut off" or events.count(REVERTED) > 1,
        enforcement_period(controller.config),
        "a VM stopped by staff was started again",
    )
    assert api.get("/api/v1/heartbeat/status")["enabled"] is False
    assert api.get("/api/v1/vm/stop")["message"].endswith("(it was not running)")
    body = api.get("/api/v1/vm/start")
    assert body["message"] == f"VM '{domain.name}' started successfully"
    assert domain.state() == "running" and events.wait_for(REVERTED, 2, 10)
    assert domain.current_snapshot() == "ready"


def test_maintenance_mode_leaves_a_destroyed_silent_vm_alone_until_enabled(
    start_controller, domain, events
):
    controller, api = start_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    assert events.wait_for(REVERTED, 1, 30)
    assert api.get("/api/v1/revert/disable")["message"].startswith("Automatic revert disabled")
    assert api.get("/api/v1/status")["auto_revert_enabled"] is False
    virsh("destroy", "--domain", domain.name)
    assert events.wait_for("Stopped Destroyed", 1, 10)
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "shut off",
        10,
        message="the controller to see the VM shut off",
    )
    # No heartbeat at all and a destroyed VM, for longer than it would take to act on either.
    stays_false(
        lambda: domain.state() != "shut off" or events.count(REVERTED) > 1,
        enforcement_period(controller.config),
        "maintenance mode reverted the VM",
    )
    assert api.post("/api/v1/revert/enable") == {
        "message": "Automatic revert enabled",
        "details": None,
    }
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


def test_twenty_concurrent_restarts_all_succeed_with_one_or_two_reverts(
    start_controller, domain, events
):
    controller, api = start_controller(vm_startup_heartbeat_delay=60)
    assert events.wait_for(REVERTED, 1, 30)
    before = reverts_in_history(api)
    with ThreadPoolExecutor(20) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    api.call(
                        "POST", "/api/v1/vm/restart", "/api/v1/vm/restart", expect=None
                    ).status_code
                ),
                range(20),
            )
        )
    assert codes == [200] * 20
    # Each restart returns once its revert is done, so the history is complete now; the
    # grace period (60 s) rules out a revert of the controller's own meanwhile. Requests
    # that reach the controller after the first revert ended start a second one.
    reverts = reverts_in_history(api) - before
    assert 1 <= reverts <= 2, f"{reverts} reverts for 20 concurrent restarts"
    assert events.wait_for(REVERTED, 1 + reverts, 10), "libvirt saw each recorded revert"
    assert domain.state() == "running"


def test_snapshot_create_replace_list_delete(start_controller, domain, events):
    controller, api = start_controller()
    events.wait_for(REVERTED, 1, 30)
    body = api.get("/api/v1/snapshot/create?snapshot_name=backup-2025-12-09")
    assert (
        body["message"]
        == f"Snapshot 'backup-2025-12-09' created successfully for VM '{domain.name}'"
    )
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

    assert api.call(
        "DELETE", "/api/v1/snapshot/from-form", "/api/v1/snapshot/{snapshot_name}"
    ).json() == {"message": "Snapshot 'from-form' deleted successfully", "details": None}
    api.get("/api/v1/snapshot/delete/backup-2025-12-09", "/api/v1/snapshot/delete/{snapshot_name}")
    assert set(domain.snapshots()) == {"ready", "after-ready"}
    missing = api.call(
        "DELETE", "/api/v1/snapshot/never-made", "/api/v1/snapshot/{snapshot_name}", expect=404
    ).json()
    assert "never-made" in missing["detail"]
    api.call(
        "GET",
        "/api/v1/snapshot/delete/never-made",
        "/api/v1/snapshot/delete/{snapshot_name}",
        expect=404,
    )


BAD_NAMES = [
    "--current",
    "--children",
    "-h",
    "--",
    "",
    "a b",
    "../x",
    ".hidden",
    "é✓",
    "a\n",
    "x" * 300,
]


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
            api.call(
                "DELETE",
                f"/api/v1/snapshot/{quoted}",
                "/api/v1/snapshot/{snapshot_name}",
                expect=400,
            )
            api.call(
                "GET",
                f"/api/v1/snapshot/delete/{quoted}",
                "/api/v1/snapshot/delete/{snapshot_name}",
                expect=400,
            )
    # A name with a slash cannot even route to a snapshot: 400 via the path converter.
    api.call("GET", "/api/v1/snapshot/delete/..%2Fx", None, expect=400)
    actions = {
        e["action"] for e in api.get("/api/v1/events?limit=1000", "/api/v1/events")["events"]
    }
    assert not {a for a in actions if a.startswith("snapshot")}, actions
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
