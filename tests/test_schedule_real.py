"""Opening hours driving a real VM: the heartbeat guest on real libvirt, a real controller
(server.Controller, its HTTP server on loopback), and a wall clock the test sets.

Config times have minute resolution, so the controller's monitor is given an injected
wall clock (the Monitor's ``wallclock`` seam, reached through server.Controller's
construction of it): the test moves it from before closing to closing time to the next
opening, and libvirt says what really happened to the VM.
"""

from __future__ import annotations

import functools
import subprocess
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests
from libvirt_env import free_port, wait_until
from waits import stays_false
from wallclock import WallClock

from vmcontroller import server
from vmcontroller.config import build_config
from vmcontroller.monitor import Monitor

VIENNA = ZoneInfo("Europe/Vienna")
TIMEOUT = 4.0
GRACE = 10.0


def history(base: str, trigger: str) -> list[dict]:
    answer = requests.get(f"{base}/api/v1/events", params={"trigger": trigger}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def status(base: str) -> dict:
    answer = requests.get(f"{base}/api/v1/status", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.libvirt
def test_a_real_vm_is_stopped_at_closing_and_reverted_at_opening(
    libvirt, guest_build, tmp_path, monkeypatch
):
    from guest_env import GuestDomain, start_exhibit

    vm = GuestDomain("schedule", guest_build.path, free_port()).define()
    state = tmp_path / "state.db"
    controller = None
    try:
        # The staff's order of work: the guest heartbeating and its ready snapshot taken
        # by a controller without a schedule, which is then replaced by one with a schedule.
        start_exhibit(vm, state, TIMEOUT, GRACE).stop()
        clock = WallClock(datetime(2027, 3, 2, 17, 58, tzinfo=VIENNA))  # a Tuesday
        monkeypatch.setattr(
            server, "Monitor", functools.partial(Monitor, wallclock=clock, schedule_recheck=0.1)
        )
        config = build_config(
            {
                "vm_name": vm.name,
                "api_host": "127.0.0.1",
                "api_port": vm.port,
                "heartbeat_timeout": TIMEOUT,
                "vm_startup_heartbeat_delay": GRACE,
                "heartbeat_check_interval": 0.5,
                "state_path": str(state),
                "schedule": {
                    "timezone": "Europe/Vienna",
                    "hours": {"tuesday": "10:00-18:00", "wednesday": "10:00-18:00"},
                },
            }
        )
        controller = server.Controller(config)
        controller.start()
        assert controller.monitor.wait_initialised(120)
        base = f"http://127.0.0.1:{vm.port}"

        # Started within opening hours, for the first time: the opening is caught up with a
        # fresh revert, and the guest's heartbeats are enforced once they come.
        (opening,) = history(base, "schedule_open")
        assert (opening["action"], opening["outcome"]) == ("revert", "succeeded")
        assert vm.state() == "running"
        wait_until(
            lambda: (
                status(base)["heartbeat"]["is_healthy"] and status(base)["heartbeat"]["enabled"]
            ),
            120,
            message="heartbeats enforced after the opening",
        )
        assert status(base)["schedule"]["state"] == "open"

        # Closing time: libvirt shows the VM shut off, and nothing brings it back.
        clock.set(datetime(2027, 3, 2, 18, 0, tzinfo=VIENNA))
        wait_until(lambda: vm.state() == "shut off", 60, message="the VM stopped at closing")
        (closing,) = history(base, "schedule_close")
        assert (closing["action"], closing["outcome"]) == ("stop", "succeeded")
        now = status(base)
        assert now["schedule"]["state"] == "closed" and now["schedule"]["enforcing"] is False
        assert now["heartbeat"]["enabled"] is False
        assert now["schedule"]["next_change"] == "2027-03-03T10:00:00+01:00"
        stays_false(
            lambda: vm.state() != "shut off",
            GRACE + TIMEOUT + 3,
            "the VM was brought back in closed hours",
        )
        # A staff start in closed hours is allowed and says that nothing watches it.
        started = requests.post(f"{base}/api/v1/vm/start", timeout=120)
        assert started.status_code == 200, started.text
        assert "not watched" in started.json()["details"]["note"]
        stopped = requests.post(f"{base}/api/v1/vm/stop", timeout=120)
        assert stopped.status_code == 200 and vm.state() == "shut off"
        requests.post(f"{base}/api/v1/vm/start", timeout=120)  # staff leave it running...
        offset = vm.console_size()

        # ...and the next opening still starts the day fresh: a revert, heartbeats enforced.
        clock.set(datetime(2027, 3, 3, 10, 0, tzinfo=VIENNA))
        wait_until(
            lambda: (
                [e["outcome"] for e in history(base, "schedule_open")] == ["succeeded", "succeeded"]
            ),
            120,
            message="the next opening's revert",
        )
        assert history(base, "schedule_open")[0]["action"] == "revert"
        assert vm.state() == "running"
        wait_until(lambda: vm.beats(offset), 120, message="heartbeats after the opening")
        wait_until(lambda: status(base)["heartbeat"]["enabled"], 60, message="heartbeats enforced")
        # Open: a VM destroyed behind the controller's back is recovered again.
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "destroy", "--domain", vm.name],
            check=True,
            capture_output=True,
        )
        wait_until(
            lambda: any(e["outcome"] == "succeeded" for e in history(base, "vm_stopped")),
            120,
            message="a recovery while open",
        )
        assert status(base)["recovery"]["guard"]["recent_recoveries"] == 1  # not the openings
    finally:
        if controller is not None:
            controller.stop()
        vm.remove()
