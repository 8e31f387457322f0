"""scripts/admin: backup snapshots, maintenance mode and the Nagios-style health check,
run as real processes against a live controller on a real VM (and, for the cases a
live controller cannot be made to show, against a stand-in that answers 503)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from libvirt_env import free_port, virsh, wait_until

REPO = Path(__file__).resolve().parent.parent
ADMIN = REPO / "scripts" / "admin"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
BACKUP_NAME = re.compile(r"^backup-\d{4}-\d{2}-\d{2}-\d{6}$")


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """An admin script with a clean environment: PATH without this venv, so the script
    has to find the checkout's .venv/bin/vmcontroller by itself, as it documents."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    base["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return subprocess.run(
        [str(ADMIN / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **env},
    )


def health(url: str, *args: str) -> tuple[int, str]:
    proc = run("check-health.sh", "-u", url, *args)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    word = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}[proc.returncode]
    assert lines[0].startswith(f"VMCTL {word} - "), lines[0]
    return proc.returncode, lines[0]


@pytest.mark.libvirt
def test_backup_snapshots_with_rotation(start_controller, domain):
    _, api = start_controller(heartbeat_timeout=60)
    # Two older backups and two snapshots that are not backups.
    for name in ("backup-2020-01-01-000000", "backup-2021-06-30-235959", "backup-manual"):
        api.post(f"/api/v1/snapshot/create?snapshot_name={name}")
    before = int(time.time())
    proc = run("backup-snapshot.sh", "-u", api.base)
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    older = {"backup-2020-01-01-000000", "backup-2021-06-30-235959"}
    made = [s for s in domain.snapshots() if BACKUP_NAME.match(s) and s not in older]
    assert len(made) == 1 and proc.stdout.startswith(f"Snapshot '{made[0]}' created")
    stamp = made[0][len("backup-") :]
    assert before <= time.mktime(time.strptime(stamp, "%Y-%m-%d-%H%M%S")) <= after, (
        "named after the local time of the run"
    )

    proc = run("backup-snapshot.sh", "-u", api.base, "-k", "2")
    assert proc.returncode == 0, proc.stderr
    second = re.match(r"Snapshot '([^']+)' (created|replaced)", proc.stdout).group(1)
    every = older | {made[0], second}  # the same name if both ran within one second
    left = set(domain.snapshots())
    assert {s for s in left if BACKUP_NAME.match(s)} == set(sorted(every)[-2:]), left
    assert "backup-2020-01-01-000000" not in left
    assert {"ready", "backup-manual"} <= left, "other snapshots are never touched"

    custom = run("backup-snapshot.sh", "-u", api.base, "-p", "before.update")
    assert custom.returncode == 0
    assert any(s.startswith("before.update-") for s in domain.snapshots())


def test_backup_usage_errors_and_an_unreachable_controller():
    for args in (["-p", "-bad"], ["-p", "a b"], ["-k", "0"], ["-k", "x"], ["extra"], ["-z"]):
        assert run("backup-snapshot.sh", *args).returncode == 2, args
    gone = run("backup-snapshot.sh", "-u", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 3 and "connection refused" in gone.stderr


@pytest.mark.libvirt
def test_maintenance_on_off_status(start_controller):
    _, api = start_controller(heartbeat_timeout=60)
    assert run("maintenance.sh", "-u", api.base, "status").stdout.startswith("maintenance: off")
    on = run("maintenance.sh", "-u", api.base, "on")
    assert on.returncode == 0 and on.stdout.startswith("Automatic revert disabled")
    assert api.get("/api/v1/status")["auto_revert_enabled"] is False
    assert run("maintenance.sh", "-u", api.base, "status").stdout.startswith("maintenance: on")
    assert run("maintenance.sh", "-u", api.base, "off").returncode == 0
    assert api.get("/api/v1/status")["auto_revert_enabled"] is True
    assert run("maintenance.sh", "-u", api.base, "later").returncode == 2
    assert run("maintenance.sh").returncode == 2
    assert run("maintenance.sh", "-u", f"http://127.0.0.1:{free_port()}", "on").returncode == 3
    # VMCTL_URL works as well as -u.
    env_run = run("maintenance.sh", "status", VMCTL_URL=api.base)
    assert env_run.returncode == 0 and env_run.stdout.startswith("maintenance: off")


@pytest.mark.libvirt
def test_health_check_states(start_controller, domain):
    _, api = start_controller(heartbeat_timeout=60, vm_startup_heartbeat_delay=0.5)
    url = api.base

    code, line = health(url)
    assert code == WARNING and "no heartbeat since the controller started" in line

    api.post("/api/v1/heartbeat")
    code, line = health(url)
    assert code == OK, line
    assert re.match(
        rf"VMCTL OK - {domain.name} running, last heartbeat [0-9.]+ s ago, "
        rf"0 recent recoveries \| since_last=[0-9.]+s;60\.0;60;0 ",
        line,
    ), line

    wait_until(
        lambda: api.get("/api/v1/heartbeat/status")["seconds_since_last"] > 0.2,
        10,
        message="the heartbeat to get older than the thresholds given below",
    )
    code, line = health(url, "-w", "0.1", "-c", "0.2")
    assert code == CRITICAL and "critical above 0.2 s" in line
    code, line = health(url, "-w", "0.1", "-c", "100")
    assert code == WARNING and "not healthy" in line

    api.post("/api/v1/revert/disable")
    code, line = health(url, "-c", "0.2")
    assert code == WARNING and "maintenance mode" in line, "maintenance softens a late heartbeat"
    api.post("/api/v1/revert/enable")

    api.post("/api/v1/vm/stop")
    code, line = health(url)
    assert code == WARNING and "VM stopped by staff" in line
    api.post("/api/v1/vm/start")

    api.call("DELETE", "/api/v1/snapshot/ready", "/api/v1/snapshot/{snapshot_name}")
    code, line = health(url)
    assert code == CRITICAL and "reference snapshot missing" in line
    api.post("/api/v1/snapshot/create")
    api.post("/api/v1/heartbeat")
    assert health(url)[0] == OK

    # The VM dies behind everyone's back while recovery is off: nobody brings it back.
    api.post("/api/v1/revert/disable")
    virsh("destroy", "--domain", domain.name)
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "shut off",
        20,
        message="the controller to see the VM shut off",
    )
    code, line = health(url)
    assert code == WARNING and "VM is shut off" in line and "maintenance mode" in line


def test_health_check_unreachable_starting_and_usage():
    code, line = health(f"http://127.0.0.1:{free_port()}")
    assert code == CRITICAL and "controller unreachable" in line

    class Starting(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            status, detail = (
                (503, "VM manager not initialized")
                if self.path.endswith("status")
                else (404, "Not Found")
            )
            body = json.dumps({"detail": detail}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Starting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, line = health(f"http://127.0.0.1:{server.server_address[1]}")
        assert code == WARNING and "controller starting" in line
    finally:
        server.shutdown()
        server.server_close()

    for args in (["-w", "soon"], ["-x"], ["extra"]):
        proc = run("check-health.sh", *args)
        assert proc.returncode == UNKNOWN and proc.stdout.startswith("VMCTL UNKNOWN - usage")
    missing = run("check-health.sh", VMCTL="/nonexistent/vmcontroller")
    assert missing.returncode == UNKNOWN


@pytest.mark.libvirt
def test_the_scripts_take_the_token_from_vmctl_token(start_controller):
    staff = "staff-token-0123456789abcdef"
    _, api = start_controller(heartbeat_timeout=60, api_token=staff)
    proc = run("check-health.sh", "-u", api.base)
    assert proc.returncode == UNKNOWN and "refused the check: Unauthorized" in proc.stdout
    assert run("maintenance.sh", "-u", api.base, "on").returncode == 1
    proc = run("check-health.sh", "-u", api.base, VMCTL_TOKEN=staff)
    assert proc.returncode == WARNING and "no heartbeat since" in proc.stdout, proc.stdout
    assert run("maintenance.sh", "-u", api.base, "on", VMCTL_TOKEN=staff).returncode == 0
    assert run("backup-snapshot.sh", "-u", api.base, VMCTL_TOKEN=staff).returncode == 0


@pytest.mark.libvirt
def test_health_check_is_critical_when_the_guard_tripped_and_the_vm_is_down(
    start_controller, domain, events
):
    _, api = start_controller(
        heartbeat_timeout=1, vm_startup_heartbeat_delay=0.2, max_recoveries=1, recovery_window=600
    )
    wait_until(
        lambda: api.get("/api/v1/status")["recovery"]["guard"]["state"] == "failed",
        60,
        0.2,
        "the guard to trip on a guest that never heartbeats",
    )
    code, line = health(api.base)
    assert code == CRITICAL and "recovery guard tripped" in line, line
    # Down, with recovery on but the guard tripped: nobody brings it back.
    virsh("destroy", "--domain", domain.name)
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "shut off",
        20,
        message="the controller to see the VM shut off",
    )
    code, line = health(api.base)
    assert code == CRITICAL and "VM is shut off" in line and "recovery guard tripped" in line
    assert "maintenance" not in line


@pytest.mark.libvirt
def test_health_check_is_critical_for_a_vm_libvirt_does_not_know(start_controller, domain):
    _, api = start_controller(vm_name=domain.name + "-gone")
    code, line = health(api.base)
    assert code == CRITICAL and "VM is not found" in line, line
