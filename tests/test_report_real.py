"""The availability report of a real guest: heartbeats, a destroy and its revert, a restart.

The heartbeat guest (scripts/build-guest.sh) heartbeats every second; the
controller runs in this process (guest_env.start_exhibit) and is asked over
HTTP, its answers checked against the OpenAPI document.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from pathlib import Path

import pytest
import requests
from guest_env import GuestDomain, start_exhibit
from libvirt_env import free_port, virsh, wait_until

from vmcontroller.config import build_config
from vmcontroller.server import Controller
from vmcontroller.store import Store
from vmcontroller.vocab import HEALTH_START, HEALTH_STOP, VM_STOPPED

pytestmark = pytest.mark.libvirt

TIMEOUT = GRACE = 5.0


def restart_controller(vm: GuestDomain, state_path: Path) -> Controller:
    """A new controller on the same state file, as after an upgrade (it adopts the VM)."""
    controller = Controller(
        build_config(
            {
                "vm_name": vm.name,
                "api_host": "127.0.0.1",
                "api_port": vm.port,
                "heartbeat_timeout": TIMEOUT,
                "vm_startup_heartbeat_delay": GRACE,
                "heartbeat_check_interval": 0.5,
                "state_path": str(state_path),
            }
        )
    )
    controller.start()
    assert controller.monitor.wait_initialised(60)
    return controller


def test_a_destroy_its_revert_and_a_restart_in_todays_report(
    libvirt, guest_build, tmp_path, check_response
):
    port = free_port()
    vm = GuestDomain("report", guest_build.path, port, hb_timeout=2).define()
    state_path = tmp_path / "state.db"
    base = f"http://127.0.0.1:{port}"
    first_day = date.today()
    controllers: list[Controller] = []

    def report() -> dict:
        query = f"?since={first_day.isoformat()}&until={date.today().isoformat()}"
        response = requests.get(f"{base}/api/v1/report{query}", timeout=30)
        check_response("/api/v1/report", "get", response.status_code, response.json())
        assert response.status_code == 200, response.text
        return response.json()

    def healthy(since: float = 0.0) -> bool:
        """Healthy, on a heartbeat that came after ``since``."""
        status = requests.get(f"{base}/api/v1/heartbeat/status", timeout=10).json()
        last = status["last_heartbeat"]
        return bool(status["is_healthy"]) and datetime.fromisoformat(last).timestamp() > since

    def reverted() -> bool:
        found = requests.get(f"{base}/api/v1/events?trigger={VM_STOPPED}", timeout=10).json()
        return any(e["outcome"] == "succeeded" for e in found["events"])

    try:
        controllers.append(start_exhibit(vm, state_path, TIMEOUT, GRACE))
        wait_until(healthy, 60, 0.2, "heartbeats with automatic revert on")
        wait_until(
            lambda: report()["total"]["healthy_seconds"] > 0, 30, 0.2, "healthy time counted"
        )
        assert report()["total"]["recoveries"] == {}

        virsh("destroy", vm.name)
        destroyed_on = date.today().isoformat()
        wait_until(reverted, 90, 0.2, "the revert after the destroy")
        done = time.time()
        wait_until(lambda: healthy(done), 60, 0.2, "heartbeats from the reverted guest")
        (day,) = [d for d in report()["days"] if d["date"] == destroyed_on]
        assert day["unhealthy_seconds"] > 0 and day["longest_outage_seconds"] > 0
        assert day["healthy_seconds"] > 0 and 0 < day["healthy_share"] < 1
        assert day["recoveries"] == {VM_STOPPED: 1} and day["recoveries_total"] == 1

        controllers.pop().stop()
        restarted = time.time()
        controllers.append(restart_controller(vm, state_path))
        wait_until(lambda: healthy(restarted), 60, 0.2, "heartbeats after the restart")
        before = time.time()
        answer = report()
        after = time.time()
        assert answer["total"]["recoveries"] == {VM_STOPPED: 1}, "an adopted VM is no recovery"

        # The state file has the first run's start and stop, then the second's start; the
        # report counts as watched exactly the two runs, not the time between them.
        store = Store(state_path)
        try:
            marks = [
                (t, s) for t, s in store.health(0.0, after + 60) if s in (HEALTH_START, HEALTH_STOP)
            ]
        finally:
            store.close()
        (first_start, _), (stopped, stop), (second_start, _) = marks
        assert stop == HEALTH_STOP and first_start < stopped < second_start
        assert datetime.fromtimestamp(first_start).date() == first_day
        watched = sum(
            answer["total"][key]
            for key in ("healthy_seconds", "unhealthy_seconds", "staff_seconds")
        )
        first_run = stopped - first_start
        assert first_run + (before - second_start) - 0.01 <= watched
        assert watched <= first_run + (after - second_start) + 0.01
        assert answer["total"]["unmonitored_seconds"] >= second_start - stopped
    finally:
        for controller in controllers:
            controller.stop()
        vm.remove()
