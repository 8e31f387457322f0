"""scripts/admin export-exhibit.sh and restore-exhibit.sh: a backup that survives the PC,
proven by a round trip on real libvirt with the heartbeat guest under a controller
process: export, then undefine and delete everything, restore, and a new controller
recovers the restored VM to ``ready``. Refusals change nothing."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from guest_env import GuestDomain
from libvirt_env import IMAGES, TestDomain, free_port, virsh, wait_until

REPO = Path(__file__).resolve().parent.parent
ADMIN = REPO / "scripts" / "admin"
TOKEN = "staff-token-0123456789abcdef0123"

pytestmark = pytest.mark.libvirt


def run(script: str, *args: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    """An admin script as the admin runs it: PATH without this venv (the script finds
    the checkout's .venv/bin/vmcontroller), no VMCTL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if path_first is not None:
        env["PATH"] = f"{path_first}:{env['PATH']}"
    return subprocess.run(
        [str(ADMIN / script), *args], capture_output=True, text=True, timeout=600, env=env
    )


class Controller:
    """`python -m vmcontroller serve --config FILE`, as the service runs it."""

    def __init__(self, config: Path, log: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        self._log = log.open("a")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmcontroller", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.log = log
        wait_until(self._answers, 60, 0.1, "the controller to serve")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.session.get(self.base + "/api/v1/status", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> dict:
        response = self.session.get(self.base + path, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str) -> dict:
        response = self.session.post(self.base + path, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def history(self) -> list[tuple[str, str, str]]:
        events = self.get("/api/v1/events?limit=200")["events"]
        return [(e["trigger"], e["action"], e["outcome"]) for e in events]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Exhibit:
    """The heartbeat guest, its controller's config, token file and state file, laid
    out as on an exhibition PC (under a temporary 'root' instead of /etc and /var)."""

    def __init__(self, guest: Path, root: Path):
        self.port = free_port()
        self.vm = GuestDomain("backup", guest, self.port)
        self.root = root
        self.config = root / "etc" / "config.yaml"
        self.token = root / "etc" / "api_token"
        self.state = root / "var" / "state.db"
        self.controllers: list[Controller] = []

    def write_config(self) -> None:
        self.config.parent.mkdir(parents=True)
        self.state.parent.mkdir(parents=True)
        self.token.write_text(TOKEN + "\n")
        settings = {
            "vm_name": self.vm.name,
            "api_host": "127.0.0.1",
            "api_port": self.port,
            "heartbeat_timeout": 5,
            "vm_startup_heartbeat_delay": 20,
            "heartbeat_check_interval": 0.5,
            "state_path": str(self.state),
            "api_token_file": str(self.token),
        }
        self.config.write_text(yaml.safe_dump(settings))

    def controller(self) -> Controller:
        made = Controller(
            self.config, self.root / f"controller-{len(self.controllers)}.log", self.port
        )
        self.controllers.append(made)
        return made

    def files(self) -> list[Path]:
        return [self.vm.disk, self.config, self.token, self.state]

    def wipe(self) -> None:
        """The disaster: controller gone, VM and snapshot metadata undefined, files deleted."""
        for made in self.controllers:
            made.stop()
        self.vm.remove()
        for path in self.files():
            path.unlink(missing_ok=True)
        for path in self.state.parent.glob("state.db-*"):
            path.unlink()
        assert self.vm.name not in virsh("list", "--all", "--name").split()


def snapshot_view(name: str) -> tuple[dict[str, str | None], str | None]:
    probe = TestDomain.__new__(TestDomain)
    probe.name = name
    return probe.snapshot_tree(), probe.current_snapshot()


def disk_sources(xml: str) -> list[str]:
    return [s.get("file") for s in ET.fromstring(xml).iter("source") if s.get("file")]


@pytest.fixture
def exhibit(guest_build, tmp_path) -> Iterator[Exhibit]:
    made = Exhibit(guest_build.path, tmp_path / "pc")
    made.write_config()
    made.vm.define()
    try:
        yield made
    finally:
        for controller in made.controllers:
            controller.stop()
        made.vm.remove()
        shutil.rmtree(IMAGES / f"{made.vm.name}-moved", ignore_errors=True)


def running_exhibit(exhibit: Exhibit) -> Controller:
    """The staff's order of work: maintenance, guest heartbeating, ready, a later
    snapshot (a child of ready, left current), automatic revert on."""
    exhibit.vm.start()  # before the controller, which would boot it without a snapshot
    controller = exhibit.controller()
    controller.post("/api/v1/revert/disable")
    wait_until(lambda: sum(b.ok for b in exhibit.vm.beats()) >= 2, 120, message="heartbeats")
    controller.post("/api/v1/snapshot/create")
    controller.post("/api/v1/snapshot/create?snapshot_name=later")
    controller.post("/api/v1/revert/enable")
    return controller


def recovers_to_ready(exhibit: Exhibit) -> Controller:
    """A controller on the restored config reverts the restored VM and heartbeats arrive."""
    console = exhibit.vm.console_size()
    controller = exhibit.controller()
    wait_until(
        lambda: ("startup", "revert", "succeeded") in controller.history(),
        120,
        message="the start-up revert of the restored VM",
    )
    wait_until(
        lambda: sum(b.ok for b in exhibit.vm.beats(console)) >= 2,
        120,
        message="heartbeats from the restored guest",
    )
    status = controller.get("/api/v1/status")
    assert status["vm_state"] == "running" and status["snapshot_exists"], status
    wait_until(
        lambda: controller.get("/api/v1/status")["heartbeat"]["seconds_since_last"] is not None,
        30,
        message="the controller to hear the restored guest",
    )
    return controller


def test_export_wipe_restore_and_the_controller_recovers(exhibit, tmp_path):
    first = running_exhibit(exhibit)
    tree, current = snapshot_view(exhibit.vm.name)
    assert tree == {"ready": None, "later": "ready"} and current == "later"
    usb = tmp_path / "usb"
    usb.mkdir()

    export = run("export-exhibit.sh", "-C", str(exhibit.config), str(usb))
    assert export.returncode == 0, export.stderr
    out = Path(export.stdout.strip().splitlines()[-1])
    assert out.parent == usb and out.name.startswith(exhibit.vm.name + "-")
    assert [p.name for p in usb.iterdir()] == [out.name], "no .partial left behind"
    assert re.search(r"was down for \d+ s", export.stderr), export.stderr
    assert "%" in export.stderr or "copied" in export.stderr, "the copy shows progress"

    # The exhibit runs again as before: started through the controller, maintenance off.
    status = first.get("/api/v1/status")
    assert status["auto_revert_enabled"] and not status["stopped_by_staff"], status
    assert exhibit.vm.state() == "running"
    history = first.history()
    assert ("api", "disable_auto_revert", "succeeded") in history
    assert ("api", "enable_auto_revert", "succeeded") in history

    manifest = (out / "manifest.txt").read_text()
    for line in (
        f"vm={exhibit.vm.name}",
        f"disk.vda={exhibit.vm.disk}",
        "snapshot.01=ready",
        "snapshot.02=later",
        "snapshot.current=later",
        f"config={exhibit.config}",
        f"token.api_token_file={exhibit.token}",
        f"state={exhibit.state}",
    ):
        assert line in manifest.splitlines(), (line, manifest)
    assert re.search(r"^host=\S+$", manifest, re.M) and re.search(r"^created=20", manifest, re.M)
    checked = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, capture_output=True
    )
    assert checked.returncode == 0
    assert "tools/restore-exhibit.sh" in (out / "README.txt").read_text()
    assert (out / "tokens" / "api_token_file").read_text() == TOKEN + "\n"

    # The disaster, then a refused restore from a damaged export changes nothing.
    exhibit.wipe()
    token_copy = out / "tokens" / "api_token_file"
    token_copy.write_text("tampered-token-0123456789abcdef\n")
    damaged = run("restore-exhibit.sh", str(out))
    assert damaged.returncode == 1 and "damaged" in damaged.stderr, damaged.stderr
    assert "nothing changed" in damaged.stderr
    assert exhibit.vm.name not in virsh("list", "--all", "--name").split()
    assert not any(p.exists() for p in exhibit.files())
    token_copy.write_text(TOKEN + "\n")

    # A config someone already wrote on the new PC is not overwritten without --replace.
    exhibit.config.write_text("vm_name: something-else\n")
    differs = run("restore-exhibit.sh", str(out))
    assert differs.returncode == 1 and f"{exhibit.config} exists and differs" in differs.stderr
    assert exhibit.vm.name not in virsh("list", "--all", "--name").split()
    assert not exhibit.vm.disk.exists() and not exhibit.state.exists()
    exhibit.config.unlink()

    restore = run("restore-exhibit.sh", str(out))
    assert restore.returncode == 0, restore.stderr
    assert "systemctl enable --now exhibition-vm-controller" in restore.stdout
    assert "warning" not in restore.stderr, "the guest's kernel and initrd are on this PC"
    assert all(p.exists() for p in exhibit.files())
    assert stat.S_IMODE(exhibit.token.stat().st_mode) == 0o640
    assert snapshot_view(exhibit.vm.name) == (tree, current), "same parents, same current"

    # A second restore over the restored exhibit is refused, and changes nothing.
    again = run("restore-exhibit.sh", str(out))
    assert again.returncode == 1, again.stderr
    assert f"already has a VM named {exhibit.vm.name}" in again.stderr
    assert "nothing changed" in again.stderr
    assert snapshot_view(exhibit.vm.name) == (tree, current)

    second = recovers_to_ready(exhibit)
    history = second.history()
    assert ("api", "disable_auto_revert", "succeeded") in history, "the history came along"

    # Over an exhibit that ran on (its disk and state differ): --replace, service stopped.
    second.stop()
    replaced = run("restore-exhibit.sh", "--replace", str(out))
    assert replaced.returncode == 0, replaced.stderr
    assert f"replacing the VM {exhibit.vm.name}" in replaced.stderr
    assert f"{exhibit.config} already in place" in replaced.stderr
    assert exhibit.vm.state() == "shut off"
    assert not exhibit.state.with_name("state.db-wal").exists()
    assert snapshot_view(exhibit.vm.name) == (tree, current)

    # The same export restored with the images in another folder.
    exhibit.wipe()
    moved = IMAGES / f"{exhibit.vm.name}-moved"
    # ... by the copy of the restore the export carries, run as README.txt says.
    restore = subprocess.run(
        ["sh", str(out / "tools" / "restore-exhibit.sh"), "--images", str(moved), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert restore.returncode == 0, restore.stderr
    assert not exhibit.vm.disk.exists() and (moved / exhibit.vm.disk.name).exists()
    xml = virsh("dumpxml", "--domain", exhibit.vm.name, "--inactive")
    assert str(moved / exhibit.vm.disk.name) in disk_sources(xml)
    for snap in ("ready", "later"):
        snap_xml = virsh("snapshot-dumpxml", "--domain", exhibit.vm.name, "--snapshotname", snap)
        assert str(moved / exhibit.vm.disk.name) in disk_sources(snap_xml), snap
        assert str(exhibit.vm.disk) not in disk_sources(snap_xml), snap
    assert snapshot_view(exhibit.vm.name) == (tree, current)
    recovers_to_ready(exhibit)
    assert exhibit.vm.state() == "running"


def test_a_failed_copy_leaves_no_export_and_gives_the_exhibit_back(exhibit, tmp_path):
    controller = running_exhibit(exhibit)
    broken = tmp_path / "broken"
    broken.mkdir()
    dd = broken / "dd"
    dd.write_text("#!/bin/sh\necho 'dd: error writing: No space left on device' >&2\nexit 1\n")
    dd.chmod(0o755)
    usb = tmp_path / "usb"
    usb.mkdir()
    proc = run("export-exhibit.sh", "-C", str(exhibit.config), str(usb), path_first=broken)
    assert proc.returncode == 1 and "copying" in proc.stderr and "failed" in proc.stderr
    assert list(usb.iterdir()) == [], "nothing half-written left"
    status = controller.get("/api/v1/status")
    assert status["auto_revert_enabled"] and not status["stopped_by_staff"], status
    assert exhibit.vm.state() == "running"
    assert re.search(r"was down for \d+ s", proc.stderr), proc.stderr


def test_export_refuses_a_running_vm_without_its_controller(exhibit, tmp_path):
    exhibit.vm.start()
    usb = tmp_path / "usb"
    usb.mkdir()
    proc = run("export-exhibit.sh", "-C", str(exhibit.config), str(usb))
    assert proc.returncode == 3, proc.stderr
    assert "does not answer" in proc.stderr and "is running" in proc.stderr
    assert list(usb.iterdir()) == [], "nothing written"
    assert exhibit.vm.state() == "running"


def test_usage_errors(tmp_path):
    assert run("export-exhibit.sh").returncode == 2
    assert run("export-exhibit.sh", str(tmp_path / "missing")).returncode == 2
    assert run("export-exhibit.sh", "-I", "../etc", str(tmp_path)).returncode == 2
    assert run("export-exhibit.sh", "-I", "x", "-C", "y", str(tmp_path)).returncode == 2
    assert run("restore-exhibit.sh").returncode == 2
    assert run("restore-exhibit.sh", "--bogus", str(tmp_path)).returncode == 2
    proc = run("restore-exhibit.sh", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.txt" in proc.stderr
