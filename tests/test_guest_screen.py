"""The test guest's screen: an "artwork" that a screen check can judge, switched by keys.

The heartbeat guest started with SCREEN_MODE_KERNEL_ARGS and the SCREEN devices
runs, besides its heartbeat loop, a screen loop on its VGA text console: a
status line with a clock that ticks every second, and an artwork that moves
("m", the mode at boot), stops ("f"), goes black ("b") or shows an error box
("e"), switched with ``virsh send-key``. These tests show on a real VM that
the rectangles guest_env gives (SCREEN_CLOCK, SCREEN_ARTWORK,
SCREEN_ERROR_BOX) hold what they say, and that the heartbeats go on whatever
the screen does: the case a screen check exists for. Every screenshot is kept
as a PNG in ARTEFACTS/guest-screen (ARTEFACTS: the variable
VMCTL_TEST_ARTEFACTS, else vmctl-test-artefacts in the temporary folder).

The guest's loop ticks once a second and handles a key at once; a change of
mode is complete on the screen once the status line (row 1, left of the
clock) shows it, because the loop writes that line last.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_env import (
    SCREEN,
    SCREEN_ARTWORK,
    SCREEN_CLOCK,
    SCREEN_ERROR_BOX,
    SCREEN_MODE_KERNEL_ARGS,
    SCREEN_SIZE,
    GuestDomain,
    screenshot,
)
from libvirt_env import virsh, wait_until
from PIL import Image

ARTEFACTS = (
    Path(
        os.environ.get("VMCTL_TEST_ARTEFACTS", Path(tempfile.gettempdir()) / "vmctl-test-artefacts")
    )
    / "guest-screen"
)
STATUS = (0, 0, 540, 16)  # row 1 left of the clock: the mode's name
DEADLINE = 30  # for the guest to show what a key asked for (it reads keys at once)
TICK = 1.0  # the guest's screen loop repaints once a second

Rect = tuple[int, int, int, int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shots:
    """Screenshots of one VM, decoded with Pillow and kept as numbered PNGs."""

    def __init__(self, vm: GuestDomain, folder: Path):
        self.vm = vm
        self.folder = folder
        self.count = 0
        self.raw: list[bytes] = []  # every screenshot as libvirt wrote it, in order

    def take(self, name: str) -> Image.Image:
        data = screenshot(self.vm.name)
        self.count += 1
        self.raw.append(data)
        (self.folder / f"{self.count:02d}-{name}.png").write_bytes(data)
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "PNG" and image.size == SCREEN_SIZE, (image.format, image.size)
        return image.convert("RGB")

    def wait_for(self, name: str, want, message: str) -> Image.Image:
        """Screenshots until want(image) holds; the one that satisfied it is returned."""
        seen: list[Image.Image] = []

        def check() -> bool:
            seen.append(self.take(name))
            return want(seen[-1])

        wait_until(check, DEADLINE, interval=0.2, message=f"{message} (see {self.folder})")
        return seen[-1]


def area(image: Image.Image, rect: Rect) -> bytes:
    x, y, w, h = rect
    return image.crop((x, y, x + w, y + h)).tobytes()


def all_black(image: Image.Image, rect: Rect = (0, 0, *SCREEN_SIZE)) -> bool:
    return not any(area(image, rect))


def border_is_painted(image: Image.Image, rect: Rect) -> bool:
    """The pixels on the rectangle's edge have the error box's colours (blue, grey)
    but for the few where the frame's black '#' glyphs touch the cells' left edge:
    the rectangle sits on the box, not a cell inside or outside it."""
    x, y, w, h = rect
    edge = [(x + i, y) for i in range(w)] + [(x + i, y + h - 1) for i in range(w)]
    edge += [(x, y + j) for j in range(h)] + [(x + w - 1, y + j) for j in range(h)]
    black = sum(image.getpixel(p) == (0, 0, 0) for p in edge)
    return black <= 0.05 * len(edge)


def heartbeats_go_on(vm: GuestDomain, offset: int, what: str) -> None:
    wait_until(lambda: len(vm.beats(offset)) >= 2, DEADLINE, message=f"heartbeats {what}")


@pytest.fixture
def vm(guest_build) -> Iterator[GuestDomain]:
    guest = GuestDomain(
        "screen",
        guest_build.path,
        free_port(),  # nobody listens: the heartbeats fail, and each one says so
        kernel_args=SCREEN_MODE_KERNEL_ARGS,
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
def shots(vm: GuestDomain, request) -> Shots:
    folder = ARTEFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Shots(vm, folder)


def moving(shots: Shots, name: str) -> Image.Image:
    """Wait until the artwork moves from one screenshot to a later one; the later."""
    first = shots.wait_for(
        name, lambda i: not all_black(i, STATUS) and not all_black(i, SCREEN_ARTWORK), "the artwork"
    )
    return shots.wait_for(
        name,
        lambda i: area(i, SCREEN_ARTWORK) != area(first, SCREEN_ARTWORK),
        "the artwork to move",
    )


def test_the_screen_moves_freezes_goes_black_shows_an_error_and_moves_again(
    vm: GuestDomain, shots: Shots
):
    offset = vm.console_size()

    # moving (the mode at boot): the artwork changes from one tick to the next
    before = moving(shots, "moving")
    assert not all_black(before, SCREEN_CLOCK)
    heartbeats_go_on(vm, offset, "while the screen moves")

    # frozen: the artwork stays, the clock ticks on, so the whole screen still changes
    offset = vm.console_size()
    vm.screen_key("f")
    frozen = shots.wait_for(
        "frozen", lambda i: area(i, STATUS) != area(before, STATUS), "the frozen mode"
    )
    later = shots.wait_for(
        "frozen-later",
        lambda i: area(i, SCREEN_CLOCK) != area(frozen, SCREEN_CLOCK),
        "the clock to tick on a frozen screen",
    )
    assert area(later, SCREEN_ARTWORK) == area(frozen, SCREEN_ARTWORK)
    assert later.tobytes() != frozen.tobytes()  # unmasked, the clock looks like liveness
    heartbeats_go_on(vm, offset, "while the screen is frozen")

    # error: a fixed box in the middle, then frozen with the clock ticking
    offset = vm.console_size()
    vm.screen_key("e")
    error = shots.wait_for(
        "error", lambda i: area(i, STATUS) != area(frozen, STATUS), "the error box"
    )
    assert area(error, SCREEN_ERROR_BOX) != area(before, SCREEN_ERROR_BOX)
    assert border_is_painted(error, SCREEN_ERROR_BOX)
    error_later = shots.wait_for(
        "error-later",
        lambda i: area(i, SCREEN_CLOCK) != area(error, SCREEN_CLOCK),
        "the clock to tick behind the error box",
    )
    assert area(error_later, SCREEN_ERROR_BOX) == area(error, SCREEN_ERROR_BOX)
    assert area(error_later, SCREEN_ARTWORK) == area(error, SCREEN_ARTWORK)
    heartbeats_go_on(vm, offset, "behind the error box")

    # black: every pixel black, and nothing written any more
    offset = vm.console_size()
    vm.screen_key("b")
    black = shots.wait_for("black", all_black, "a black screen")
    # The one bare sleep: longer than the guest's tick, so anything its loop still
    # painted (the clock first of all) would be in the second screenshot.
    time.sleep(1.5 * TICK)
    black_later = shots.take("black-later")
    assert all_black(black_later) and all_black(black)
    assert shots.raw[-1] == shots.raw[-2]  # libvirt's PNG files, byte for byte
    heartbeats_go_on(vm, offset, "while the screen is black")

    # moving again: "m" repaints and the artwork moves
    offset = vm.console_size()
    vm.screen_key("m")
    again = moving(shots, "moving-again")
    assert not all_black(again, SCREEN_CLOCK)
    heartbeats_go_on(vm, offset, "after the screen moves again")

    beats = vm.beats()
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))  # one run, no gap


def test_a_snapshot_taken_while_moving_comes_back_moving(vm: GuestDomain, shots: Shots):
    """The controller's tests rely on it: reverting to ``ready`` brings the moving screen back."""
    moving(shots, "moving")
    virsh("snapshot-create-as", "--domain", vm.name, "--name", "ready")
    vm.screen_key("b")
    shots.wait_for("black", all_black, "a black screen")
    virsh("snapshot-revert", "--domain", vm.name, "--snapshotname", "ready", "--running")
    moving(shots, "reverted")
