"""The README's first command, `scripts/demo`, run for real on a test-named VM.

The demo builds the project's tiny Linux guest, runs it under the controller and
shows a newcomer heartbeats arriving, a frozen guest being reverted and its
heartbeats resuming. This test does exactly that, starting from the empty-disk VM
an earlier version of the demo made, which the demo replaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from guest_env import GuestDomain
from libvirt_env import EventRecorder, TestDomain, free_port, virsh, wait_until

pytestmark = pytest.mark.libvirt
REPO = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT = 10  # heartbeat_timeout in the config scripts/demo writes


def test_demo_runs_the_heartbeat_guest_and_recovers_it(libvirt, guest_build, tmp_path):
    old = TestDomain("demo").create()  # the empty-disk VM of the earlier demo
    port = free_port()
    vm = GuestDomain("demo", guest_build.path, port)  # only for its paths and removal
    vm.name, vm.disk, vm.console = old.name, old.disk, old.disk.with_suffix(".console.log")
    env = {
        **os.environ,
        "DEMO_VM": vm.name,
        "DEMO_DIR": str(tmp_path),
        "DEMO_PORT": str(port),
        "DEMO_GUEST_DIR": str(guest_build.path),
    }
    log_path = tmp_path / "demo.log"
    log = log_path.open("w+")
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "demo")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    recorder = None
    try:
        url = f"http://127.0.0.1:{port}/api/v1/status"

        def status() -> dict | None:
            assert proc.poll() is None, log_path.read_text()
            try:
                response = requests.get(url, timeout=2)
            except requests.ConnectionError:
                return None
            return response.json() if response.status_code == 200 else None

        wait_until(lambda: status() is not None, 300, 0.2, "the demo controller to answer")
        first = status()
        assert first["vm_name"] == vm.name and first["snapshot_exists"] is True
        assert "<kernel>" in virsh("dumpxml", "--domain", vm.name), "the guest replaced the old VM"
        assert "ready" in virsh("snapshot-list", "--domain", vm.name, "--name").split()
        assert (tmp_path / "config.yaml").is_file()

        # A newcomer sees heartbeats arrive in status ...
        wait_until(lambda: status()["heartbeat"]["is_healthy"], 60, 0.2, "healthy heartbeats")
        assert "heartbeat: seq=" in vm.console_text()

        # ... freezes the guest, and watches the controller revert it and heartbeats resume.
        recorder = EventRecorder(vm.name)
        heard = status()["heartbeat"]["last_heartbeat"]
        virsh("suspend", "--domain", vm.name)
        assert recorder.wait_for("Suspended Paused", 1, 10)
        assert recorder.wait_for("Started Snapshot", 1, DEMO_TIMEOUT + 20), recorder.events
        wait_until(
            lambda: (
                status()["heartbeat"]["is_healthy"]
                and status()["heartbeat"]["last_heartbeat"] != heard
            ),
            30,
            0.2,
            "heartbeats after the revert",
        )
        assert status()["vm_state"] == "running"
    finally:
        if recorder is not None:
            recorder.close()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        vm.remove()
    output = log_path.read_text()
    assert code == 0, output
    assert "empty-disk VM of an earlier demo: replacing it" in output
    assert "created snapshot 'ready'" in output
    assert f"Exhibition VM Controller demo: VM '{vm.name}'" in output
    assert f"virsh -c qemu:///system suspend --domain {vm.name}" in output
    assert "Traceback" not in output


def test_create_demo_vm_leaves_a_vm_it_did_not_make_alone(libvirt, guest_build):
    other = TestDomain("demo").create(start=False, snapshot=None)
    try:
        virsh("desc", "--domain", other.name, "--config", "--new-desc", "someone's artwork")
        proc = subprocess.run(
            [
                "bash",
                str(REPO / "scripts" / "create-demo-vm.sh"),
                other.name,
                "8000",
                str(guest_build.path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr
        assert "was not made by this script: leaving it alone" in proc.stderr
        assert virsh("desc", "--domain", other.name).strip() == "someone's artwork"
        assert "<kernel>" not in virsh("dumpxml", "--domain", other.name)
    finally:
        other.remove()
        other.disk.with_suffix(".console.log").unlink(missing_ok=True)
