"""The project's tiny Linux guest for tests: built once per session, run as vmctl-test-* VMs.

scripts/build-guest.sh builds Debian's cloud kernel and a busybox initramfs
whose init runs scripts/guest/posix/heartbeat.sh against the host through
QEMU user-mode networking (the guest dials 10.0.2.2, QEMU connects to the
host's 127.0.0.1). The build goes to a cache folder that survives test runs
(VMCTL_TEST_GUEST_DIR, default /var/cache/exhibition-vm-controller/test-guest,
~/.cache/... for a user other than root;
the downloaded .debs are cached by the script itself), so only a fresh
machine pays for it, inside the test run. What the guest sends is read from
its serial console, written to a file next to its disk: one line per
heartbeat, ``heartbeat: seq=N boot=ID ok`` (or ``FAIL: why``).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from libvirt_env import IMAGES, PREFIX, virsh

REPO = Path(__file__).resolve().parent.parent
_CACHE = (
    Path("/var/cache")
    if os.geteuid() == 0
    else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
)
GUEST_DIR = Path(
    os.environ.get("VMCTL_TEST_GUEST_DIR", _CACHE / "exhibition-vm-controller" / "test-guest")
)
BEAT = re.compile(r"heartbeat: seq=(\d+) boot=(\S+) (ok|FAIL)")

GUEST_XML = (REPO / "scripts" / "guest" / "domain.xml").read_text()  # shared with the demo

#: A screen and a sound card for the guest, as a gallery PC's VM has them: SPICE
#: (which also carries the sound to the viewer) on loopback only, a standard VGA.
#: The guest's kernel then prints to the screen too (SCREEN_KERNEL_ARGS), while
#: the serial console stays the last console=, the one init writes heartbeats to.
SCREEN = """
    <graphics type='spice' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
    <sound model='ich6'><audio id='1'/></sound>
    <audio id='1' type='spice'/>"""
SCREEN_KERNEL_ARGS = "console=tty0 console=ttyS0 loglevel=7 sysrq_always_enabled"

#: The guest's "artwork" on its VGA text screen (with SCREEN as its devices): a status
#: line with a ticking clock and a moving picture, switched at run time by
#: GuestDomain.screen_key ("m" moving, "f" frozen, "b" black, "e" an error box) while
#: the heartbeats go on. The kernel stays off that screen (no console=tty0) and never
#: blanks it. Where things are, in the 720 x 400 screenshot (x, y, width, height; a
#: text cell is 9 x 16 pixels): see the rectangles below.
SCREEN_MODE_KERNEL_ARGS = "hb_screen=1 consoleblank=0"
SCREEN_SIZE = (720, 400)
SCREEN_CLOCK = (540, 0, 180, 16)  # row 1, columns 61-80: the uptime, every second
SCREEN_ARTWORK = (0, 32, 720, 368)  # rows 3-25: moves in "moving" mode only
SCREEN_ERROR_BOX = (45, 112, 630, 176)  # rows 8-18, columns 6-75: the "error" dialog


def screenshot(domain: str) -> bytes:
    """The guest's screen as libvirt writes it (a PNG here, whatever the file's name)."""
    with tempfile.TemporaryDirectory(prefix="vmctl-shot-") as folder:
        path = Path(folder) / "screen.png"
        virsh("screenshot", "--domain", domain, "--file", str(path))
        return path.read_bytes()


@dataclass(frozen=True)
class Build:
    path: Path
    seconds: float  # what scripts/build-guest.sh took in this session
    log: str


@functools.cache
def build_guest() -> Build:
    """Run scripts/build-guest.sh once per test session (it returns at once when up to date)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-guest.sh"), str(GUEST_DIR)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"scripts/build-guest.sh {GUEST_DIR} failed ({proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return Build(GUEST_DIR, time.monotonic() - started, proc.stderr)


@dataclass(frozen=True)
class Beat:
    seq: int
    boot: str
    ok: bool


class GuestDomain:
    """A vmctl-test-* VM running the heartbeat guest against 127.0.0.1:port."""

    __test__ = False

    def __init__(
        self,
        label: str,
        guest: Path,
        port: int,
        hb_timeout: float = 2,
        kernel_args: str = "",
        devices: str = "",
    ):
        self.kernel_args = kernel_args  # appended to the guest's kernel command line
        self.devices = devices  # libvirt device elements added to the domain (e.g. SCREEN)
        self.name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"
        self.disk = IMAGES / f"{self.name}.qcow2"
        self.console = IMAGES / f"{self.name}.console.log"
        self.guest = guest
        self.port = port
        self.hb_timeout = hb_timeout

    def define(self) -> GuestDomain:
        IMAGES.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "16M"], check=True
        )
        xml = self.disk.with_suffix(".xml")
        text = GUEST_XML.format(
            name=self.name,
            description="vmctl test guest",
            guest=self.guest,
            port=self.port,
            hb_timeout=self.hb_timeout,
            disk=self.disk,
            console=self.console,
        )
        if self.kernel_args:
            text = text.replace("</cmdline>", f" {self.kernel_args}</cmdline>", 1)
        if self.devices:
            text = text.replace("</devices>", f"{self.devices}\n  </devices>", 1)
        xml.write_text(text)
        try:
            virsh("define", "--file", str(xml))
        finally:
            xml.unlink()
        return self

    def start(self) -> None:
        virsh("start", "--domain", self.name)

    def remove(self) -> None:
        virsh("destroy", "--domain", self.name, check=False)
        virsh("undefine", "--domain", self.name, "--snapshots-metadata", check=False)
        self.disk.unlink(missing_ok=True)
        self.console.unlink(missing_ok=True)

    def state(self) -> str:
        return virsh("domstate", "--domain", self.name).strip()

    def screen_key(self, key: str) -> None:
        """Type one key on the guest's keyboard: "m", "f", "b" or "e" switch the
        screen of a guest started with SCREEN_MODE_KERNEL_ARGS."""
        virsh("send-key", "--domain", self.name, f"KEY_{key.upper()}")

    def console_size(self) -> int:
        try:
            return self.console.stat().st_size
        except FileNotFoundError:
            return 0

    def console_text(self, offset: int = 0) -> str:
        try:
            with self.console.open("rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    def beats(self, offset: int = 0) -> list[Beat]:
        """Every heartbeat the guest reported on its console after offset, in order."""
        return [
            Beat(int(m.group(1)), m.group(2), m.group(3) == "ok")
            for m in BEAT.finditer(self.console_text(offset))
        ]


def start_exhibit(
    vm: GuestDomain,
    state_path: Path,
    timeout: float,
    grace: float,
    beats: int = 2,
    extra: dict | None = None,
):
    """The staff's order of work with a real guest: a controller in maintenance, the guest
    started and heartbeating, ``ready`` taken while it runs, then automatic revert on.
    ``extra``: more configuration (notifications, the guard). Returns the running
    in-process Controller (the caller stops it)."""
    import requests
    from libvirt_env import wait_until

    from vmcontroller.config import build_config
    from vmcontroller.server import Controller

    controller = Controller(
        build_config(
            {
                "vm_name": vm.name,
                "api_host": "127.0.0.1",
                "api_port": vm.port,
                "heartbeat_timeout": timeout,
                "vm_startup_heartbeat_delay": grace,
                "heartbeat_check_interval": 0.5,
                "auto_revert_enabled": False,
                "state_path": str(state_path),
                **(extra or {}),
            }
        )
    )
    controller.start()
    try:
        assert controller.monitor.wait_initialised(60)
        vm.start()
        wait_until(lambda: sum(b.ok for b in vm.beats()) >= beats, 120, message="heartbeats")
        base = f"http://127.0.0.1:{vm.port}"
        for path in ("/api/v1/snapshot/create", "/api/v1/revert/enable"):
            response = requests.post(base + path, timeout=60)
            assert response.status_code == 200, response.text
    except BaseException:
        controller.stop()
        raise
    return controller
