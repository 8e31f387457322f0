"""Screen liveness on a real VM: the test guest's screen (scripts/build-guest.sh with
guest_env.SCREEN_MODE_KERNEL_ARGS) moves, freezes, goes black or shows an error
dialog on keys sent with virsh send-key, while its heartbeats go on. The controller
runs in this process (guest_env.start_exhibit) with screen rules; a revert resumes the
snapshot taken while the screen moved, so the screen moves again after each one.
"""

from __future__ import annotations

import io

import pytest
import requests
import yaml
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: autouse)
from guest_env import (
    SCREEN,
    SCREEN_ARTWORK,
    SCREEN_CLOCK,
    SCREEN_ERROR_BOX,
    SCREEN_MODE_KERNEL_ARGS,
    GuestDomain,
    start_exhibit,
)
from libvirt_env import free_port, wait_until
from PIL import Image
from waits import stays_false

from vmcontroller.server import Controller
from vmcontroller.vocab import PROGRESS_STALLED
from vmcontroller.vocab import SCREEN as SCREEN_TRIGGER

pytestmark = pytest.mark.libvirt

TIMEOUT = GRACE = 5.0
INTERVAL = 0.5


def screen_guest(label: str, guest_build) -> GuestDomain:
    return GuestDomain(
        label,
        guest_build.path,
        free_port(),
        devices=SCREEN,
        kernel_args=SCREEN_MODE_KERNEL_ARGS,
    ).define()


def screen_rows(base: str) -> list[dict]:
    found = requests.get(f"{base}/api/v1/events?trigger={SCREEN_TRIGGER}", timeout=10)
    return found.json()["events"]


def judged(base: str) -> bool:
    screen = requests.get(f"{base}/api/v1/status", timeout=10).json()["screen"]
    return screen["judged"] and screen["last_screenshot"] is not None


def verdicts(base: str) -> dict[str, dict]:
    screen = requests.get(f"{base}/api/v1/status", timeout=10).json()["screen"]
    return {v["rule"]: v for v in screen["rules"]}


def test_a_frozen_artwork_is_reverted_though_a_masked_clock_ticks_and_a_moving_one_is_not(
    libvirt, guest_build, tmp_path
):
    vm = screen_guest("frozen", guest_build)
    rules = [
        # The artwork must move; the clock in the corner is masked out.
        {"name": "artwork", "kind": "frozen", "seconds": 4, "mask": [list(SCREEN_CLOCK)]},
        # The same rule without the mask: the ticking clock keeps it from holding.
        {"name": "unmasked", "kind": "frozen", "seconds": 600},
    ]
    controller: Controller | None = None
    try:
        controller = start_exhibit(
            vm,
            tmp_path / "state.db",
            TIMEOUT,
            GRACE,
            extra={"screen": {"interval": INTERVAL, "rules": rules}},
        )
        base = f"http://127.0.0.1:{vm.port}"
        wait_until(lambda: judged(base), 30, message="the screen judged")
        stays_false(
            lambda: bool(screen_rows(base)),
            4 + 4 * INTERVAL,
            "a revert while the artwork moves",
        )
        latest = requests.get(f"{base}/api/v1/screen/latest", timeout=10)
        assert latest.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(latest.content)).size == (720, 400)

        vm.screen_key("f")  # the artwork stops; the clock and the heartbeats go on
        wait_until(
            lambda: verdicts(base)["artwork"]["holding"], 10, message="the frozen artwork seen"
        )
        # Without the mask the ticking clock restarts the count at least once a second.
        assert verdicts(base)["unmasked"]["held_seconds"] < 1 + 2 * INTERVAL
        wait_until(lambda: screen_rows(base), 4 + 10, message="the screen revert")
        row = screen_rows(base)[0]
        assert row["action"] == "revert" and "screen rule 'artwork' (frozen)" in row["reason"]
        wait_until(
            lambda: screen_rows(base)[0]["outcome"] == "succeeded", 60, message="the revert done"
        )
        kept = requests.get(base + row["screenshot"], timeout=10)
        assert kept.status_code == 200
        picture = Image.open(io.BytesIO(kept.content)).convert("RGB")
        assert picture.size == (720, 400)
        # After the revert the snapshot's screen moves again: no second revert.
        wait_until(lambda: judged(base), 30, message="the screen judged again")
        stays_false(lambda: len(screen_rows(base)) > 1, 4 + 4 * INTERVAL, "a second revert")
    finally:
        if controller is not None:
            controller.stop()
        vm.remove()


def test_a_black_screen_and_a_captured_error_dialog_are_reverted(
    libvirt, guest_build, tmp_path, monkeypatch
):
    """The technician's way: capture the error screen with `vmcontroller screen capture`,
    cut the dialog out as the reference, check the rule with `screen test` on the saved
    screenshot, then run the controller with it."""
    vm = screen_guest("black", guest_build)
    blank = {"name": "blank", "kind": "black", "seconds": 3, "regions": [list(SCREEN_ARTWORK)]}
    plain = {"name": "plain", "kind": "uniform", "seconds": 3, "regions": [list(SCREEN_ARTWORK)]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"vm_name": vm.name, "screen": {"rules": [blank]}}))
    monkeypatch.chdir(tmp_path)
    controllers: list[Controller] = []
    try:
        vm.start()  # no controller yet: its heartbeats fail, its screen works
        wait_until(lambda: vm.beats(), 120, message="the guest up")
        vm.screen_key("e")
        x, y, w, h = SCREEN_ERROR_BOX
        capture = tmp_path / "error.png"

        def error_shown() -> bool:
            done = invoke("screen", "capture", "--config", str(config), "-o", str(capture))
            assert done.exit_code == 0, shown(done)
            box = Image.open(capture).convert("RGB").crop((x, y, x + w, y + h))
            return box.getpixel((w // 2, 1)) != (0, 0, 0)  # the dialog's frame is drawn

        wait_until(error_shown, 15, message="the error dialog on screen")
        Image.open(capture).convert("RGB").crop((x, y, x + w, y + h)).save(tmp_path / "dialog.png")
        dialog = {"name": "error-dialog", "kind": "looks_like", "image": "dialog.png", "at": [x, y]}
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"screen": {"rules": [dialog]}}))
        tried = invoke(
            "screen", "test", "--config", str(config), str(rules_file), "--image", str(capture)
        )
        assert tried.exit_code == 1, shown(tried)
        assert "error-dialog (looks_like): FAILS" in tried.stdout
        assert "would revert: rule error-dialog" in tried.stdout
        vm.screen_key("m")
        live = invoke("screen", "test", "--config", str(config), str(rules_file), "--watch", "0")
        assert live.exit_code == 0 and "no rule fails" in live.stdout, shown(live)
        vm.remove()  # a fresh start for the exhibit, as staff would set it up
        vm = screen_guest("black", guest_build)
        rules = [blank, plain, {**dialog, "image": str(tmp_path / "dialog.png")}]
        controllers.append(
            start_exhibit(
                vm,
                tmp_path / "state.db",
                TIMEOUT,
                GRACE,
                extra={"screen": {"interval": INTERVAL, "rules": rules}},
            )
        )
        base = f"http://127.0.0.1:{vm.port}"
        wait_until(lambda: judged(base), 30, message="the screen judged")
        vm.screen_key("e")
        wait_until(lambda: screen_rows(base), 15, message="the error dialog's revert")
        assert "screen rule 'error-dialog' (looks_like)" in screen_rows(base)[0]["reason"]
        wait_until(
            lambda: screen_rows(base)[0]["outcome"] == "succeeded", 60, message="revert done"
        )
        wait_until(lambda: judged(base), 30, message="the screen judged again")
        vm.screen_key("b")
        wait_until(lambda: len(screen_rows(base)) == 2, 3 + 15, message="the black screen's revert")
        reason = screen_rows(base)[0]["reason"]  # both see one dark colour for 3 s
        assert "screen rule 'blank' (black)" in reason and "'plain' (uniform)" in reason
    finally:
        for controller in controllers:
            controller.stop()
        vm.remove()


def test_a_progress_value_that_stops_is_reverted_and_a_moving_one_is_not(
    libvirt, guest_build, tmp_path
):
    """The guest's heartbeats carry its screen's frame counter (hb_progress=1, through
    heartbeat.sh -p); freezing the screen stops the counter, not the heartbeats."""
    vm = GuestDomain(
        "progress",
        guest_build.path,
        free_port(),
        devices=SCREEN,
        kernel_args=f"{SCREEN_MODE_KERNEL_ARGS} hb_progress=1",
    ).define()
    controller: Controller | None = None
    try:
        controller = start_exhibit(
            vm, tmp_path / "state.db", TIMEOUT, GRACE, extra={"heartbeat_progress_timeout": 4}
        )
        base = f"http://127.0.0.1:{vm.port}"

        def progress() -> dict:
            return requests.get(f"{base}/api/v1/heartbeat/status", timeout=10).json()["progress"]

        def stalled() -> list[dict]:
            found = requests.get(f"{base}/api/v1/events?trigger={PROGRESS_STALLED}", timeout=10)
            return found.json()["events"]

        wait_until(lambda: progress()["value"] is not None, 30, message="a progress value")
        first = progress()["value"]
        wait_until(lambda: progress()["value"] != first, 10, message="the value moving")
        stays_false(lambda: bool(stalled()), 4 + GRACE, "a revert while the value moves")
        vm.screen_key("f")  # the frame counter stops; the heartbeats go on
        wait_until(stalled, 4 + 10, message="the progress revert")
        row = stalled()[0]
        assert row["action"] == "revert" and "unchanged for" in row["reason"]
        wait_until(lambda: stalled()[0]["outcome"] == "succeeded", 60, message="revert done")
        # The snapshot's screen moves again, and so does the value: no second revert.
        after = progress()["value"]
        wait_until(lambda: progress()["value"] != after, 30, message="the value moving again")
    finally:
        if controller is not None:
            controller.stop()
        vm.remove()
