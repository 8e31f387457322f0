"""`vmcontroller ready` against real libvirt and the project's heartbeat guest.

What is checked comes from libvirt and the guest, not from the controller's
word: the snapshot's creation time (``virsh snapshot-dumpxml``), libvirt's
lifecycle events (a revert starts the VM with "Started Snapshot"), the
guest's console. Heartbeats are stopped while the VM runs with a relay on
loopback between the guest and the controller that the test cuts (a heartbeat
script that died, a firewall), and by pausing the VM.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cli_invoke import invoke, shown
from guest_env import GuestDomain, start_exhibit
from libvirt_env import EventRecorder, free_port, virsh, wait_until

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"  # libvirt's event when a revert brings the VM up
TIMEOUT = 5.0  # heartbeat_timeout: shorter than ready's --wait below, so a revert would show


class Relay:
    """Passes TCP connections from a loopback port to the controller's; ``cut`` refuses new ones."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()
        self.listener.close()

    def _pipe(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            conn.close()
            return
        conn.settimeout(10)
        back = threading.Thread(target=_copy, args=(up, conn), daemon=True)
        back.start()
        _copy(conn, up)
        back.join(10)
        up.close()
        conn.close()

    def cut(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def created(vm: GuestDomain) -> int:
    """The snapshot's creation time, as libvirt recorded it (seconds)."""
    xml = virsh("snapshot-dumpxml", "--domain", vm.name, "--snapshotname", "ready")
    match = re.search(r"<creationTime>(\d+)</creationTime>", xml)
    assert match, xml
    return int(match.group(1))


def status(base: str) -> dict:
    response = requests.get(base + "/api/v1/status", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def exhibit(libvirt, guest_build, tmp_path: Path) -> Iterator:
    """Start a heartbeat guest under a controller (maintenance off, `ready` taken)."""
    made: list = []

    def make(relay: bool = False) -> tuple[GuestDomain, str, EventRecorder, Relay | None]:
        port = free_port()
        hop = Relay(port) if relay else None
        args = f"hb_url=http://10.0.2.2:{hop.port}" if hop else ""
        vm = GuestDomain("ready", guest_build.path, port, hb_timeout=2, kernel_args=args)
        made.append(vm.define())
        if hop:
            made.append(hop)
        recorder = EventRecorder(vm.name)
        made.append(recorder)
        made.append(start_exhibit(vm, tmp_path / "state.db", TIMEOUT, TIMEOUT))
        return vm, f"http://127.0.0.1:{port}", recorder, hop

    yield make
    for thing in reversed(made):
        for method in ("stop", "cut", "close", "remove"):
            if hasattr(thing, method):
                getattr(thing, method)()
                break


def test_ready_replaces_the_snapshot_of_a_heartbeating_guest_and_ends_maintenance_as_it_was(
    exhibit,
):
    vm, base, recorder, _ = exhibit()
    before = created(vm)
    wait_until(lambda: int(time.time()) > before, 5, 0.1, "the next second (creation times)")

    result = invoke("ready", "--url", base, "--wait", "60")
    assert result.exit_code == 0, shown(result)
    assert "5/5 maintenance: off again" in result.stdout, result.stdout
    assert created(vm) > before, "the snapshot was taken again"
    assert status(base)["auto_revert_enabled"] is True
    assert recorder.count(REVERTED) == 0, recorder.events
    offset = vm.console_size()
    wait_until(lambda: sum(b.ok for b in vm.beats(offset)) >= 2, 60, 0.2, "heartbeats go on")

    # In maintenance already: the snapshot is taken, and maintenance stays on.
    assert invoke("revert", "disable", "--url", base).exit_code == 0
    again = created(vm)
    wait_until(lambda: int(time.time()) > again, 5, 0.1, "the next second (creation times)")
    result = invoke("ready", "--url", base, "--wait", "60")
    assert result.exit_code == 0, shown(result)
    assert "left on, as it was" in result.stdout
    assert created(vm) > again
    assert status(base)["auto_revert_enabled"] is False
    assert recorder.count(REVERTED) == 0, recorder.events


def test_ready_refuses_a_guest_whose_heartbeats_stopped_without_a_revert_meanwhile(exhibit):
    vm, base, recorder, relay = exhibit(relay=True)
    before = created(vm)
    assert relay is not None
    relay.cut()  # the VM runs on; its heartbeats no longer reach the controller

    wait = 2 * TIMEOUT  # the controller would have reverted within this, were it not for ready
    result = invoke("ready", "--url", base, "--wait", str(wait))
    assert result.exit_code == 1, shown(result)
    line = result.stderr.strip()
    assert "step 'heartbeats'" in line and f"no heartbeat from the guest within {wait:g} s" in line
    assert "the last one came at" in line and "maintenance is off again" in line, line
    assert recorder.count(REVERTED) == 0, "no revert while ready waited"
    assert created(vm) == before, "no snapshot of a silent guest"
    assert vm.state() == "running"
    assert status(base)["auto_revert_enabled"] is True
    # Maintenance really ended: the silent guest is now reverted after the timeout.
    assert recorder.wait_for(REVERTED, 1, 60), recorder.events


def test_ready_refuses_a_paused_or_stopped_vm_and_restores_maintenance(exhibit):
    vm, base, recorder, _ = exhibit()
    before = created(vm)

    virsh("suspend", "--domain", vm.name)
    wait_until(lambda: status(base)["vm_state"] == "paused", 30, 0.1, "the controller sees it")
    result = invoke("ready", "--url", base, "--wait", "30")
    assert result.exit_code == 1, shown(result)
    line = result.stderr.strip()
    assert "step 'VM running'" in line and "paused: it sends no heartbeats" in line, line
    assert "maintenance is off again" in line
    assert recorder.count(REVERTED) == 0, "no revert while ready ran"
    assert status(base)["auto_revert_enabled"] is True

    assert invoke("stop", "--url", base).exit_code == 0  # stopped by staff: stays stopped
    wait_until(lambda: vm.state() == "shut off", 30, 0.1, "the VM off")
    result = invoke("ready", "--url", base, "--wait", "30")
    assert result.exit_code == 1, shown(result)
    line = result.stderr.strip()
    assert "the VM is not running (state: shut off)" in line, line
    assert "start it and wait for the artwork, then run ready again" in line
    assert status(base)["auto_revert_enabled"] is True
    assert created(vm) == before
    assert vm.state() == "shut off"
