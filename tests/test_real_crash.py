"""A real guest kernel panic, reported by libvirt as "Crashed", is recovered as a crash.

The heartbeat guest (scripts/build-guest.sh) loads pvpanic and pvpanic-mmio,
the drivers of QEMU's ISA panic device (<panic model='isa'/> in
scripts/guest/domain.xml): when its kernel panics, QEMU tells libvirt, which
emits "Crashed Panicked" and, with <on_crash>destroy</on_crash>, "Stopped
Crashed". The panic is caused on demand from outside the guest: booted with
``unknown_nmi_panic``, the kernel panics on an NMI that ``virsh inject-nmi``
sends. A trigger inside the guest (a timer in its init) would not do: the
revert restores the guest's memory, timer included, so it would panic again
after every recovery.
"""

from __future__ import annotations

import pytest
import requests
from guest_env import GuestDomain, start_exhibit
from libvirt_env import EventRecorder, free_port, virsh, wait_until

from vmcontroller.vocab import VM_CRASHED

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"


def test_a_guest_kernel_panic_is_recovered_with_trigger_vm_crashed_and_heartbeats_resume(
    libvirt, guest_build, tmp_path, check_response
):
    timeout, grace = 5.0, 5.0
    port = free_port()
    vm = GuestDomain(
        "panic", guest_build.path, port, hb_timeout=2, kernel_args="unknown_nmi_panic"
    ).define()
    recorder = EventRecorder(vm.name)
    base = f"http://127.0.0.1:{port}"
    controller = None

    def get(path: str) -> dict:
        response = requests.get(base + path, timeout=10)
        check_response(path.split("?")[0], "get", response.status_code, response.json())
        assert response.status_code == 200, response.text
        return response.json()

    def crash_history() -> list[dict]:
        return get(f"/api/v1/events?trigger={VM_CRASHED}")["events"]

    try:
        controller = start_exhibit(vm, tmp_path / "state.db", timeout, grace)
        offset = vm.console_size()
        wait_until(
            lambda: sum(b.ok for b in vm.beats(offset)) >= 1,
            30,
            message="a heartbeat after the snapshot",
        )
        assert crash_history() == []

        virsh("inject-nmi", "--domain", vm.name)
        assert recorder.wait_for("Crashed Panicked", 1, 30), recorder.events
        panicked_at = vm.console_size()
        wait_until(
            lambda: any(e["outcome"] == "succeeded" for e in crash_history()),
            60,
            0.2,
            "a successful recovery with trigger vm_crashed",
        )
        assert recorder.count(REVERTED) == 1, recorder.events
        assert [
            e["trigger"]
            for e in get("/api/v1/events")["events"]
            if e["trigger"] not in ("api", "startup")
        ] == [VM_CRASHED]
        wait_until(
            lambda: sum(b.ok for b in vm.beats(panicked_at)) >= 2,
            60,
            0.2,
            "heartbeats from the recovered guest",
        )
        assert vm.state() == "running"
        status = get("/api/v1/status")
        assert status["recovery"]["last_trigger"] == VM_CRASHED
    finally:
        if controller is not None:
            controller.stop()
        recorder.close()
        vm.remove()
