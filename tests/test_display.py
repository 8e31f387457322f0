"""The gallery screen: the shipped launcher shows the VM full-screen and brings it back alone.

A real X server without hardware (Xvfb, on a display number it picks itself)
stands in for the exhibition PC's screen; scripts/vmcontroller-kiosk runs on
it as the kiosk session does (``--session``: matchbox-window-manager, then
virt-viewer in kiosk mode), the VM named by a controller configuration. The
guest is the project's heartbeat guest with a screen and a sound card
(guest_env.SCREEN): its kernel prints to its VGA text screen.

What is on the X screen is compared with what the guest itself shows
(``virsh screenshot``): both are brought to the guest's 80 x 25 text cells
(the X screen at the place and scale a full-screen viewer puts the guest,
so a title bar or a window that is not full screen fails the comparison).
To tell the guest's screen after a revert from the one before, the test
marks the guest's screen first (SysRq-H through ``virsh send-key``: the
kernel prints its help lines), which the snapshot does not have. Every
screenshot is kept as a PNG in ARTEFACTS/display (ARTEFACTS: the variable
VMCTL_TEST_ARTEFACTS, else vmctl-test-artefacts in the temporary folder).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_env import SCREEN, SCREEN_KERNEL_ARGS, GuestDomain, build_guest
from libvirt_env import virsh, wait_until

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "scripts" / "vmcontroller-kiosk"
ARTEFACTS = (
    Path(
        os.environ.get("VMCTL_TEST_ARTEFACTS", Path(tempfile.gettempdir()) / "vmctl-test-artefacts")
    )
    / "display"
)
TOOLS = ("Xvfb", "virt-viewer", "matchbox-window-manager", "xwd", "xwininfo", "convert")
WIDTH, HEIGHT = 1024, 768
CELLS = (80, 25)  # the guest's text screen, in characters
INK = 24  # a cell whose brightness differs by more than this differs
SAME = 0.01  # two screens are the same when at most this share of their cells differ
DEADLINE = 30  # for the screen to show the guest again, from the event


def test_the_tools_are_installed():
    """scripts/setup-test-tools.sh installs them: missing, the test fails rather than skips."""
    assert [t for t in TOOLS if shutil.which(t) is None] == []


# --- images -------------------------------------------------------------------------------


def cells(png: Path, crop: tuple[int, int, int, int] | None = None) -> bytes:
    """The picture's mean grey per text cell (80 x 25 bytes), ImageMagick doing the scaling."""
    argv = ["convert", str(png)]
    if crop:
        w, h, x, y = crop
        argv += ["-crop", f"{w}x{h}+{x}+{y}", "+repage"]
    argv += [
        "-strip",
        "-colorspace",
        "Gray",
        "-resize",
        f"{CELLS[0]}x{CELLS[1]}!",
        "-depth",
        "8",
        "pgm:-",
    ]
    pgm = subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout
    # Binary PGM: "P5", width, height, maxval, exactly one whitespace, then the pixels,
    # whose first bytes may themselves be "whitespace" (a grey of 9 to 13, or 32): the
    # header is matched, never split, or those pixels would be lost.
    header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s", pgm)
    assert header, pgm[:20]
    size = (int(header.group(1)), int(header.group(2)))
    assert size == CELLS and header.group(3) == b"255", header.group(0)
    pixels = pgm[header.end() : header.end() + CELLS[0] * CELLS[1]]
    assert len(pixels) == CELLS[0] * CELLS[1], len(pixels)
    return pixels


def png_size(png: Path) -> tuple[int, int]:
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def share_differing(a: bytes, b: bytes) -> float:
    return sum(abs(x - y) > INK for x, y in zip(a, b, strict=True)) / len(a)


def full_screen_place(guest: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a full-screen viewer draws a guest screen of this size: scaled to fit the
    whole X screen, aspect kept, centred (w, h, x, y)."""
    scale = min(WIDTH / guest[0], HEIGHT / guest[1])
    w, h = round(guest[0] * scale), round(guest[1] * scale)
    return w, h, (WIDTH - w) // 2, (HEIGHT - h) // 2


@dataclass
class Look:
    """One look at the X screen and, right after, at the guest's own screen."""

    screen: Path
    guest: Path
    screen_cells: bytes
    guest_cells: bytes

    @property
    def shows_guest(self) -> bool:
        return share_differing(self.screen_cells, self.guest_cells) <= SAME

    @property
    def guest_has_text(self) -> bool:
        return sum(c > INK for c in self.guest_cells) > 100


# --- the screen ---------------------------------------------------------------------------


class Screen:
    """Xvfb and the launcher on it, with screenshots of both sides."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.xvfb: subprocess.Popen | None = None
        self.launcher: subprocess.Popen | None = None
        self.display = ""
        self.log = folder / "launcher.log"
        self.looks = 0

    def start_x(self) -> None:
        # -displayfd: Xvfb takes the first free display number and writes it once it
        # accepts clients, so neither a guess nor a sleep is needed.
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", "1", "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.xvfb.stdout is not None
        number = self.xvfb.stdout.readline().strip()
        assert number.isdigit(), f"Xvfb did not start (exit status {self.xvfb.poll()})"
        self.display = f":{number}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display}

    def start_launcher(self, config: Path) -> None:
        env = {
            **self.env(),
            "VMCTL_KIOSK_RESTART_DELAY": "0.5",
            # virt-viewer's own debug lines say which SPICE channels it opened.
            "G_MESSAGES_DEBUG": "virt-viewer",
        }
        with self.log.open("wb") as log:
            self.launcher = subprocess.Popen(
                ["sh", str(LAUNCHER), "--session", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.launcher and self.launcher.poll() is None:
            self.launcher.terminate()  # the launcher stops its viewer and window manager
            try:
                self.launcher.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.launcher.pid, signal.SIGKILL)
                self.launcher.wait(10)
        if self.xvfb and self.xvfb.poll() is None:
            self.xvfb.terminate()
            self.xvfb.wait(10)

    def viewers(self) -> list[int]:
        """The virt-viewer processes the launcher runs (its children)."""
        assert self.launcher is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm = text[text.index("(") + 1 : text.rindex(")")]
            state, ppid = text[text.rindex(")") + 2 :].split()[:2]
            if comm == "virt-viewer" and int(ppid) == self.launcher.pid and state != "Z":
                found.append(int(stat.parent.name))
        return found

    def look(self, vm: str, name: str) -> Look:
        """Screenshot the X screen, then the guest; keep both under name."""
        self.looks += 1
        screen = self.folder / f"{name}.png"
        guest = self.folder / f"{name}.guest.png"
        xwd = subprocess.run(
            ["xwd", "-root", "-silent", "-display", self.display],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        subprocess.run(
            ["convert", "xwd:-", "-strip", str(screen)], input=xwd, check=True, timeout=30
        )
        guest.unlink(missing_ok=True)
        virsh("screenshot", "--domain", vm, "--file", str(guest), check=False)
        if not guest.exists():  # the VM is off: nothing of it can be on the screen
            return Look(screen, guest, cells(screen), b"\0" * (CELLS[0] * CELLS[1]))
        return Look(screen, guest, cells(screen, full_screen_place(png_size(guest))), cells(guest))

    def wait_for(self, vm: str, name: str, want, message: str) -> Look:
        """Look again and again until want(look) holds; the last look is kept as name."""
        seen: list[Look] = []

        def check() -> bool:
            seen.append(self.look(vm, name))
            return want(seen[-1])

        wait_until(check, DEADLINE, interval=0.2, message=f"{message} (see {self.folder})")
        return seen[-1]

    def windows(self) -> str:
        """xwininfo's tree of every window on the screen, with its geometry."""
        return subprocess.run(
            ["xwininfo", "-root", "-tree", "-display", self.display],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout


# --- fixtures -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def vm(libvirt) -> Iterator[GuestDomain]:
    guest = GuestDomain(
        "display",
        build_guest().path,
        free_port(),  # nobody listens: the guest's heartbeats fail, and say so
        kernel_args=SCREEN_KERNEL_ARGS,
        devices=SCREEN,
    )
    try:
        guest.define()
        guest.start()
        wait_until(lambda: guest.beats() != [], 120, message="the guest's first heartbeat")
        yield guest
    finally:
        guest.remove()


@pytest.fixture
def screen() -> Iterator[Screen]:
    folder = ARTEFACTS
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    screen = Screen(folder)
    try:
        screen.start_x()
        yield screen
    finally:
        screen.stop()


# --- the test -----------------------------------------------------------------------------


def test_the_screen_shows_the_vm_again_after_revert_restart_and_a_dead_viewer(
    vm: GuestDomain, screen: Screen, tmp_path: Path
):
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready")
    config = tmp_path / "config.yaml"
    config.write_text(f"vm_name: {vm.name}\napi_port: {vm.port}\n")
    screen.start_launcher(config)  # the VM's name comes from the configuration

    before = screen.wait_for(
        vm.name, "1-before-revert", lambda s: s.guest_has_text and s.shows_guest, "the guest"
    )
    (viewer,) = screen.viewers()
    window = [line for line in screen.windows().splitlines() if f'"{vm.name}' in line]
    assert len(window) == 1 and f"{WIDTH}x{HEIGHT}+0+0" in window[0], window

    # Something on the guest's screen that the snapshot does not have.
    virsh("send-key", "--domain", vm.name, "KEY_LEFTALT", "KEY_SYSRQ", "KEY_H")
    marked = screen.wait_for(
        vm.name,
        "2-marked",
        lambda s: s.shows_guest and share_differing(s.guest_cells, before.guest_cells) > 5 * SAME,
        "the guest's screen with SysRq's help",
    )

    virsh("snapshot-revert", "--domain", vm.name, "--snapshotname", "ready", "--running")
    screen.wait_for(
        vm.name,
        "3-after-revert",
        lambda s: s.shows_guest and share_differing(s.screen_cells, marked.screen_cells) > 5 * SAME,
        "the reverted guest on the screen",
    )
    assert screen.viewers() == [viewer]  # virt-viewer reconnected by itself

    virsh("destroy", "--domain", vm.name)
    screen.wait_for(
        vm.name,
        "4-vm-off",
        lambda s: share_differing(s.screen_cells, marked.screen_cells) > 0.5,
        "the viewer waiting for the VM",
    )
    vm.start()
    screen.wait_for(
        vm.name, "5-after-restart", lambda s: s.guest_has_text and s.shows_guest, "the guest"
    )
    assert screen.viewers() == [viewer]

    # A viewer that dies is started again by the launcher.
    os.kill(viewer, signal.SIGKILL)
    wait_until(lambda: screen.viewers() not in ([], [viewer]), DEADLINE, message="a new viewer")
    screen.wait_for(
        vm.name, "6-new-viewer", lambda s: s.guest_has_text and s.shows_guest, "the guest"
    )

    log = screen.log.read_text()
    assert f"showing {vm.name} from qemu:///system" in log
    assert "virt-viewer exited (status 137); starting it again" in log
    # Sound: the guest's sound card plays through SPICE, and the viewer took the channel.
    assert "SpicePlaybackChannel" in log
    domain = virsh("dumpxml", "--domain", vm.name)
    assert "<audio id='1' type='spice'/>" in domain and "<sound model='ich6'>" in domain
