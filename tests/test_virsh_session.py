"""The long-lived virsh that takes the screen (virsh.VirshSession): one process for many
screenshots instead of one each, since starting virsh costs ~20 ms of CPU, a whole
1 % of a core at one screenshot every 2 s. Real virsh and a real VM for what it does;
a stand-in virsh for the faults (one that hangs, one that dies)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from guest_env import SCREEN, SCREEN_MODE_KERNEL_ARGS, GuestDomain
from libvirt_env import URI, free_port, wait_until
from PIL import Image

from vmcontroller.virsh import DomainNotFound, VirshError, VirshSession, VirshTimeout


def test_one_virsh_takes_many_screenshots_and_says_what_is_wrong(libvirt, guest_build):
    vm = GuestDomain(
        "session",
        guest_build.path,
        free_port(),
        devices=SCREEN,
        kernel_args=SCREEN_MODE_KERNEL_ARGS,
    ).define()
    session = VirshSession(URI, timeout=30)
    try:
        vm.start()

        def size() -> tuple[int, int]:
            return Image.open(io.BytesIO(session.screenshot(vm.name))).size

        wait_until(lambda: size() == (720, 400), 30, message="the guest's text screen")
        first = session.screenshot(vm.name)
        pid = session.pid
        pictures = [first, session.screenshot(vm.name), session.screenshot(vm.name)]
        assert pid is not None and session.pid == pid  # one process for all of them
        for png in pictures:
            assert Image.open(io.BytesIO(png)).size == (720, 400)
        with pytest.raises(DomainNotFound):
            session.screenshot("vmctl-test-no-such-domain")
        assert Image.open(io.BytesIO(session.screenshot(vm.name))).size == (720, 400)
        vm.remove()
        with pytest.raises(VirshError):
            session.screenshot(vm.name)
    finally:
        session.close()
        vm.remove()
    assert session.pid is None
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"vmctl-screen-{os.getpid()}-")]


def stand_in(tmp_path: Path, body: str) -> str:
    script = tmp_path / "virsh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_session_that_hangs_is_killed_at_the_timeout_and_the_next_call_starts_afresh(tmp_path):
    binary = stand_in(tmp_path, 'echo $$ >> "$0.pids"\nexec sleep 30\n')
    session = VirshSession("qemu:///system", timeout=0.5, binary=binary)
    try:
        with pytest.raises(VirshTimeout, match="did not answer within 0.5 s"):
            session.screenshot("artwork")
        with pytest.raises(VirshTimeout):
            session.screenshot("artwork")
        pids = [int(p) for p in Path(binary + ".pids").read_text().split()]
        assert len(pids) == 2
        wait_until(lambda: not os.path.exists(f"/proc/{pids[0]}"), 5, message="the first killed")
    finally:
        session.close()


def test_a_session_that_dies_is_an_error_and_is_started_again(tmp_path):
    binary = stand_in(tmp_path, "echo $$ >> \"$0.pids\"\necho 'error: failed to connect' >&2\n")
    session = VirshSession("qemu:///system", timeout=5, binary=binary)
    try:
        with pytest.raises(VirshError, match="failed to connect"):
            session.screenshot("artwork")
        with pytest.raises(VirshError):
            session.screenshot("artwork")
        assert len(Path(binary + ".pids").read_text().split()) == 2
    finally:
        session.close()


SERVING = """echo $$ >> "$0.pids"
while IFS= read -r line; do
    case $line in
        "echo --err "*) echo "error: ${line#echo --err }" >&2 ;;
        screenshot*) [ -n "$SCREEN_SOURCE" ] && cp "$SCREEN_SOURCE" "${line##* }" ;;
    esac
done
"""


def test_a_session_whose_virsh_was_killed_says_so_and_the_next_call_starts_another(
    tmp_path, monkeypatch
):
    source = tmp_path / "screen.png"
    source.write_bytes(b"PNG pretend")
    monkeypatch.setenv("SCREEN_SOURCE", str(source))
    binary = stand_in(tmp_path, SERVING)
    session = VirshSession("qemu:///system", timeout=5, binary=binary)
    try:
        assert session.screenshot("artwork") == source.read_bytes()
        assert session.screenshot("artwork") == source.read_bytes()  # the same process
        pid = session.pid
        assert pid is not None
        os.kill(pid, 9)
        wait_until(lambda: not Path(f"/proc/{pid}/cmdline").read_bytes(), 5, message="gone")
        with pytest.raises(VirshError):
            session.screenshot("artwork")
        assert session.screenshot("artwork") == source.read_bytes()
        assert len(Path(binary + ".pids").read_text().split()) == 2
        monkeypatch.setenv("SCREEN_SOURCE", "")  # virsh says nothing, yet writes nothing
        session.close()
        with pytest.raises(VirshError, match="wrote no image"):
            session.screenshot("artwork")
    finally:
        session.close()


def test_a_session_without_virsh_says_it_cannot_run_it(tmp_path):
    session = VirshSession("qemu:///system", timeout=5, binary=str(tmp_path / "no-virsh"))
    try:
        with pytest.raises(VirshError, match="cannot run"):
            session.screenshot("artwork")
    finally:
        session.close()


def test_a_one_shot_screenshot_that_wrote_nothing_is_an_error(tmp_path, monkeypatch):
    from vmcontroller.virsh import VirshRunner

    runner = VirshRunner(binary=stand_in(tmp_path, "exit 0\n"))
    with pytest.raises(VirshError, match="wrote no image"):
        runner.screenshot("artwork")
