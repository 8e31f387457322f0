"""The watchdog in a gallery PC's second month: faults that must never disarm it, and our
own operations that must never disturb a healthy artwork. Real libvirtd, real QEMU VMs
(and the real heartbeat guest where the guest's silence is the point); what happened is
read from libvirt's own lifecycle events and from the controller's API.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from guest_env import GuestDomain, start_exhibit
from libvirt_env import EventRecorder, free_port, virsh, wait_until

from vmcontroller import monitor as monitor_module

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"


def history(api, **params) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return api.get(f"/api/v1/events?{query}", "/api/v1/events")["events"]


# ---------------------------------------------------------------- 1. a state file that refuses writes


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of the test's own, to fill up or remount read-only."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the test (needs root): {proc.stderr}", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    f = (mount / "filler").open("wb", buffering=0)
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError:
        pass
    finally:
        try:
            f.close()
        except OSError:
            pass


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_a_state_file_that_refuses_writes_never_disarms_recovery(
    fault, start_controller, domain, events, small_disk
):
    """Disk full: it fills up under a running controller. Read-only: the kernel refuses a
    remount while the file is open for writing (EBUSY), so the filesystem turns read-only
    between two runs, as after errors=remount-ro and a reboot; the controller must start on
    it, run on what the file holds, and save again once it is writable."""
    settings = {
        "state_path": str(small_disk / "state.db"),
        "heartbeat_timeout": 2,
        "vm_startup_heartbeat_delay": 0.5,
    }
    controller, api = start_controller(**settings)
    assert events.wait_for(REVERTED, 1, 30), "the first start is clean"
    wait_until(lambda: controller.monitor.store.pending == 0, 10, message="writes settled")
    if fault == "disk full":
        fill(small_disk)
    else:
        controller.stop()
        remount(small_disk, "ro")
        controller, api = start_controller(**settings)
        assert events.wait_for(REVERTED, 2, 30), "it starts, and clean"

    # Staff actions still act, and answer 200.
    assert api.post("/api/v1/revert/disable")["message"].startswith("Automatic revert disabled")
    assert api.get("/api/v1/status")["auto_revert_enabled"] is False
    api.post("/api/v1/revert/enable")
    wait_until(
        lambda: not api.get("/api/v1/status")["state_file"]["saving"],
        30,
        message="status to say the state is not being saved",
    )
    detail = api.get("/api/v1/status")["state_file"]["detail"]
    assert "not being saved" in detail and str(small_disk) in detail, detail

    # A silent guest is still reverted, again and again: the deadline is re-armed each time.
    before = events.count(REVERTED)
    assert events.wait_for(REVERTED, before + 2, 60), events.events
    wait_until(
        lambda: api.get("/api/v1/status")["recovery"]["count"] >= 2,
        30,
        message="both recoveries counted",
    )

    # Stop and start by staff still work.
    api.post("/api/v1/vm/stop")
    assert domain.state() == "shut off"
    assert api.get("/api/v1/status")["stopped_by_staff"] is True
    api.post("/api/v1/vm/start")
    assert domain.state() == "running"

    # The disk comes back: everything queued reaches the file, nothing was lost.
    if fault == "disk full":
        (small_disk / "filler").unlink()
    else:
        remount(small_disk, "rw")
    wait_until(
        lambda: api.get("/api/v1/status")["state_file"]["saving"],
        60,
        message="writes to go through again",
    )
    rows = [(e["trigger"], e["action"], e["outcome"]) for e in history(api, limit=100)]
    assert rows.count(("heartbeat_timeout", "revert", "succeeded")) >= 2, rows
    for staff in ("disable_auto_revert", "enable_auto_revert", "stop", "start"):
        assert ("api", staff, "succeeded") in rows, rows
    saved = sqlite3.connect(str(small_disk / "state.db"))
    flags = dict(saved.execute("SELECT key, value FROM flags").fetchall())
    saved.close()
    assert flags["manual_stop"] == "false" and flags["auto_revert_enabled"] == "true"


# ---------------------------------------------------------------- 2. our own long snapshot

SLOW_VIRSH = """#!/bin/sh
# virsh, except that snapshot-create-as keeps the guest paused first for as many
# seconds as {slow} says: what a 2 GB guest on a hard disk does to its heartbeats.
prev=""; uri=""; dom=""; snap=""
for a in "$@"; do
    [ "$prev" = "-c" ] && uri=$a
    [ "$prev" = "--domain" ] && dom=$a
    [ "$a" = "snapshot-create-as" ] && snap=1
    prev=$a
done
delay=$(cat {slow} 2>/dev/null || echo 0)
if [ -n "$snap" ] && [ "$delay" != 0 ]; then
    {real} -q -c "$uri" suspend --domain "$dom" >/dev/null
    sleep "$delay"
    {real} -q -c "$uri" resume --domain "$dom" >/dev/null
fi
exec {real} "$@"
"""


def test_a_snapshot_that_pauses_the_guest_longer_than_the_timeout_reverts_nothing(
    libvirt, guest_build, tmp_path, monkeypatch, check_response
):
    timeout, grace, pause = 3.0, 4.0, 8
    slow = tmp_path / "slow"
    slow.write_text("0")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("virsh")
    (bindir / "virsh").write_text(SLOW_VIRSH.format(slow=slow, real=real))
    (bindir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    port = free_port()
    vm = GuestDomain("ownop", guest_build.path, port, hb_timeout=2).define()
    recorder = EventRecorder(vm.name)
    base = f"http://127.0.0.1:{port}"
    controller = None

    def status() -> dict:
        body = requests.get(f"{base}/api/v1/status", timeout=10).json()
        check_response("/api/v1/status", "get", 200, body)
        return body

    def post(path: str) -> dict:
        response = requests.post(base + path, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    try:
        controller = start_exhibit(vm, tmp_path / "state.db", timeout, grace, beats=3)
        wait_until(
            lambda: status()["heartbeat"]["is_healthy"] and status()["heartbeat"]["enabled"],
            30,
            message="heartbeats enforced",
        )

        slow.write_text(str(pause))
        post("/api/v1/snapshot/create?snapshot_name=backup-1")
        slow.write_text("0")
        paused = [t for t, e in recorder.events if e == "Suspended Paused"]
        resumed = [t for t, e in recorder.events if e == "Resumed Unpaused"]
        assert paused and resumed and resumed[-1] - paused[0] > 2 * timeout, (
            "the guest was paused longer than the timeout",
            recorder.events,
        )

        # The guest heartbeats again, enforcement comes back after the grace period, and a
        # few heartbeats later nothing has been reverted.
        offset = vm.console_size()
        wait_until(
            lambda: sum(b.ok for b in vm.beats(offset)) >= 1,
            30,
            message="a heartbeat after the snapshot",
        )
        wait_until(
            lambda: status()["heartbeat"]["enabled"],
            grace + 30,
            message="enforcement after the grace period",
        )
        seen = sum(b.ok for b in vm.beats(offset))
        wait_until(
            lambda: sum(b.ok for b in vm.beats(offset)) >= seen + 2,
            30,
            message="heartbeats while enforced",
        )
        assert recorder.count(REVERTED) == 0, recorder.events
        reverts = requests.get(
            f"{base}/api/v1/events?trigger=heartbeat_timeout,vm_paused", timeout=10
        ).json()["events"]
        assert reverts == [], reverts
        assert status()["recovery"]["guard"]["recent_recoveries"] == 0
        assert status()["heartbeat"]["is_healthy"] is True
    finally:
        if controller is not None:
            controller.stop()
        recorder.close()
        vm.remove()


# ---------------------------------------------------------------- 5. a restart of the controller


def saved_flag(config_path: Path, key: str) -> str | None:
    """A flag as the state file holds it on disk (what a kill -9 leaves)."""
    import yaml

    path = yaml.safe_load(config_path.read_text())["state_path"]
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT value FROM flags WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else row[0]


def keep_beating(api, until) -> None:
    while not until():
        api.post("/api/v1/heartbeat")
        time.sleep(0.2)


def test_a_controller_killed_and_restarted_adopts_a_healthy_running_vm(
    spawn_controller, domain, events
):
    settings = {"heartbeat_timeout": 3, "vm_startup_heartbeat_delay": 2}
    first = spawn_controller(**settings)
    assert events.wait_for(REVERTED, 1, 30), "the very first start is clean"
    keep_beating(first.api, lambda: first.api.get("/api/v1/status")["heartbeat"]["is_healthy"])
    wait_until(
        lambda: saved_flag(first.config_path, "vm_healthy") == "true",
        10,
        message="the controller to have written down that the guest is healthy",
    )
    first.proc.kill()  # kill -9: a crash, or systemd's watchdog restart
    first.proc.wait(10)

    second = spawn_controller(**settings)
    adopted = history(second.api, limit=5)[0]
    assert (adopted["trigger"], adopted["action"], adopted["outcome"]) == (
        "startup",
        "adopt",
        "succeeded",
    ), adopted
    status = second.api.get("/api/v1/status")
    assert status["heartbeat"]["enabled"] is False, "the grace period: waiting for heartbeats"
    # Heartbeats come; enforcement starts after the grace period; the VM was never reverted.
    keep_beating(second.api, lambda: second.api.get("/api/v1/status")["heartbeat"]["enabled"])
    keep_beating(second.api, lambda: second.api.get("/api/v1/status")["heartbeat"]["is_healthy"])
    assert events.count(REVERTED) == 1, events.events
    assert domain.state() == "running"
    assert "adopted without a revert" in second.log()

    # Had the heartbeats not come, the adopted VM would have been reverted like any other.
    assert events.wait_for(REVERTED, 2, 30), "silence after adoption is recovered"


@pytest.mark.parametrize(
    "change", ["host booted", "vm shut off", "always_clean_start", "guest silent"]
)
def test_a_controller_restart_starts_clean_when_it_cannot_trust_the_vm(
    change, start_controller, domain, events, tmp_path, monkeypatch
):
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("first-boot\n")
    monkeypatch.setattr(monitor_module, "BOOT_ID_PATH", boot_id)
    settings = {"heartbeat_timeout": 3, "vm_startup_heartbeat_delay": 2}
    first, api = start_controller(**settings)
    assert events.wait_for(REVERTED, 1, 30)
    keep_beating(api, lambda: api.get("/api/v1/status")["heartbeat"]["is_healthy"])
    if change == "guest silent":
        wait_until(lambda: not api.get("/api/v1/status")["heartbeat"]["is_healthy"], 30)
        api.post("/api/v1/revert/disable")  # so that the silence is seen, not acted on
        wait_until(lambda: first.monitor.store.get("vm_healthy") is False, 30)
        api.post("/api/v1/revert/enable")
    first.stop()
    if change == "host booted":
        boot_id.write_text("second-boot\n")
    elif change == "vm shut off":
        virsh("destroy", "--domain", domain.name)
    before = events.count(REVERTED)

    second, api2 = start_controller(
        **settings, **({"always_clean_start": True} if change == "always_clean_start" else {})
    )
    assert events.wait_for(REVERTED, before + 1, 30), events.events
    startup = [e for e in history(api2, limit=10) if e["trigger"] == "startup"][0]
    assert (startup["action"], startup["outcome"]) == ("revert", "succeeded"), startup
    expected = {
        "host booted": "the host has booted",
        "vm shut off": "the VM was shut off",
        "always_clean_start": "always_clean_start is set",
        "guest silent": "not healthy when the controller last saw it",
    }[change]
    assert expected in startup["reason"], startup


# ---------------------------------------------------------------- 6. bounded waits, honest answers


def test_a_staff_request_that_finds_the_vm_busy_answers_503_with_retry_after(
    start_controller, domain
):
    controller, api = start_controller(api_busy_timeout=1)
    lock = controller.domain.locked()
    answers: list[requests.Response] = []

    def call(path: str) -> None:
        answers.append(api.call("POST", path, path, expect=None))

    lock.acquire()  # another operation holds the VM (a hung libvirtd, a long snapshot)
    try:
        stop = api.call("POST", "/api/v1/vm/stop", "/api/v1/vm/stop", expect=503)
        assert int(stop.headers["Retry-After"]) >= 1
        assert "under way" in stop.json()["detail"], stop.json()
        # Two restarts at once: one waits for the lock, the other joins it; both bounded.
        threads = [threading.Thread(target=call, args=("/api/v1/vm/restart",)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers)
        assert domain.state() == "running", "nothing was done"
    finally:
        lock.release()
    api.post("/api/v1/vm/stop")
    assert domain.state() == "shut off"


# ---------------------------------------------------------------- 4. a replacement cut off


def test_start_up_finishes_a_replacement_of_ready_that_a_crash_cut_off(
    start_controller, domain, events
):
    """What a kill -9 between "delete the old ready" and "create the new one" leaves: only
    the spare. The controller, starting, recreates ready from it and says so."""
    spare = "ready~replacing"
    virsh("snapshot-create-as", "--domain", domain.name, "--name", spare, "--atomic")
    virsh("snapshot-delete", "--domain", domain.name, "--snapshotname", "ready")
    controller, api = start_controller()
    assert sorted(domain.snapshots()) == ["ready"], domain.snapshots()
    status = api.get("/api/v1/status")
    assert status["snapshot_exists"] is True
    assert status["snapshot_detail"] and "ready" in status["snapshot_detail"], status
    rows = [(e["trigger"], e["action"], e["outcome"]) for e in history(api)]
    assert ("startup", "snapshot_repair", "succeeded") in rows, rows
    assert ("startup", "revert", "succeeded") in rows, rows
    assert domain.state() == "running" and domain.current_snapshot() == "ready"
