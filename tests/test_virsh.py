"""The virsh runner: parsers, error classification, and the process rules
(-c URI, LC_ALL=C, explicit options, timeouts) checked with a stand-in virsh."""

from __future__ import annotations

import logging
import os
import signal
import stat
import textwrap
import threading

import pytest
from libvirt_env import wait_until
from waits import pid_alive

from vmcontroller import virsh as virsh_module
from vmcontroller.virsh import (
    DomainNotFound,
    EventStream,
    LibvirtUnreachable,
    ManagedSaveConflict,
    NotRunning,
    RevertRisky,
    SnapshotLacksDefinition,
    SnapshotNotFound,
    VirshError,
    VirshRunner,
    VirshTimeout,
    classify_error,
    parse_domstate,
    parse_event_line,
    parse_name_list,
    run_command,
)


def test_parse_domstate():
    assert parse_domstate("running\n\n") == "running"
    assert parse_domstate("\nshut off\n") == "shut off"
    with pytest.raises(VirshError):
        parse_domstate("\n")


def test_parse_lists():
    assert parse_name_list("ready\nbackup-1\n\n") == ["ready", "backup-1"]
    assert parse_name_list("") == []


def test_parse_event_lines():
    event = parse_event_line(
        "2026-11-25 17:08:23.810+0000: event 'lifecycle' for domain 'eden': Stopped Destroyed\n"
    )
    assert event is not None
    assert (event.domain, event.event, event.detail) == ("eden", "Stopped", "Destroyed")
    assert event.timestamp is not None and event.timestamp.microsecond == 810000
    event = parse_event_line(
        "event 'lifecycle' for domain 'x': Shutdown Finished after host request"
    )
    assert event is not None and event.detail == "Finished after host request"
    assert event.timestamp is None
    assert parse_event_line("event 'reboot' for domain 'x'") is None
    assert parse_event_line("") is None


def test_an_event_is_delivered_whatever_its_timestamp_looks_like():
    """The timestamp is informative; the event itself is what the watchdog acts on."""
    whole_seconds = parse_event_line(
        "2026-11-25 17:08:23+0100: event 'lifecycle' for domain 'eden': Crashed Panicked"
    )
    assert whole_seconds is not None and whole_seconds.event == "Crashed"
    assert whole_seconds.timestamp is not None
    assert (whole_seconds.timestamp.second, whole_seconds.timestamp.utcoffset().seconds) == (
        23,
        3600,
    )
    impossible = parse_event_line(
        "2026-13-45 17:08:23.810+0000: event 'lifecycle' for domain 'eden': Stopped Destroyed"
    )
    assert impossible is not None and impossible.timestamp is None
    assert (impossible.domain, impossible.event, impossible.detail) == (
        "eden",
        "Stopped",
        "Destroyed",
    )


@pytest.mark.parametrize(
    "stderr, cls",
    [
        ("error: failed to get domain 'nope'\n", DomainNotFound),
        (
            "error: Domain snapshot not found: no domain snapshot with matching name 'x'",
            SnapshotNotFound,
        ),
        ("error: domain 'x' has no current snapshot", SnapshotNotFound),
        (
            "error: Failed to destroy domain 'x'\nerror: Requested operation is not valid: domain is "
            "not running",
            NotRunning,
        ),
        (
            "error: failed to connect to the hypervisor\nerror: Failed to connect socket to "
            "'/run/libvirt/libvirt-sock': No such file or directory",
            LibvirtUnreachable,
        ),
        ("error: operation failed: domain moment x already exists", VirshError),
        # Refused reverts (VIR_ERR_SNAPSHOT_REVERT_RISKY). The first is what libvirt 9.0.0 printed
        # here (tests/test_reference_snapshot.py produces it); the second is libvirt 9.0's
        # qemuSnapshotRevertValidate, raised even with --force, which cannot be produced through
        # the API (redefining a snapshot without <domain> is refused: "missing domain in
        # snapshot"); the third is the ABI check of libvirts before 8.x, which 9.0 no longer
        # makes (a revert respawns QEMU from the snapshot's definition).
        (
            "error: Failed to revert snapshot ready\nerror: revert requires force: snapshot without "
            "memory state, removal of existing managed saved state strongly recommended to avoid "
            "corruption\n",
            ManagedSaveConflict,
        ),
        (
            "error: Failed to revert snapshot ready\nerror: revert requires force: snapshot 'ready' "
            "lacks domain 'art' rollback info\n",
            SnapshotLacksDefinition,
        ),
        (
            "error: Failed to revert snapshot ready\nerror: revert requires force: Target domain max "
            "memory 131072 does not match source 65536\n",
            RevertRisky,
        ),
    ],
)
def test_classify_error_keeps_virsh_message(stderr, cls):
    error = classify_error(stderr, ["virsh"], 1)
    assert type(error) is cls
    assert "error:" not in error.message
    assert error.message.split("; ")[-1] in stderr


@pytest.fixture
def stand_in(tmp_path):
    """A fake virsh that records its argv and environment, and can be told to hang or fail."""
    script = tmp_path / "virsh"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        printf '%s\\n' "$@" > {tmp_path}/argv
        echo "$LC_ALL" > {tmp_path}/lc_all
        case "$VMCTL_STANDIN" in
          hang) exec sleep 30 ;;
          fail) echo "error: failed to get domain 'x'" >&2; exit 1 ;;
          silent) exit 0 ;;
        esac
        echo running
        """)
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def test_runner_uses_uri_lc_all_and_explicit_options(stand_in, monkeypatch):
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    runner = VirshRunner("qemu:///session", timeout=5, binary=str(stand_in / "virsh"))
    assert runner.domstate("--all") == "running"
    argv = (stand_in / "argv").read_text().split("\n")
    assert argv[:6] == ["-q", "-c", "qemu:///session", "domstate", "--domain", "--all"]
    assert (stand_in / "lc_all").read_text().strip() == "C"
    runner.snapshot_delete("vm", "-h")
    argv = (stand_in / "argv").read_text().split("\n")
    assert argv[3:8] == ["snapshot-delete", "--domain", "vm", "--snapshotname", "-h"]


def test_runner_times_out(stand_in, monkeypatch):
    monkeypatch.setenv("VMCTL_STANDIN", "hang")
    runner = VirshRunner(timeout=0.5, binary=str(stand_in / "virsh"))
    # The stand-in sleeps 30 s: this message comes only from the timeout ending the call.
    with pytest.raises(VirshTimeout, match="did not answer within 0.5 s"):
        runner.domstate("vm")


def test_runner_raises_typed_errors(stand_in, monkeypatch):
    monkeypatch.setenv("VMCTL_STANDIN", "fail")
    runner = VirshRunner(binary=str(stand_in / "virsh"))
    with pytest.raises(DomainNotFound, match="failed to get domain 'x'"):
        runner.domstate("x")


def test_a_state_poll_answered_with_nothing_is_an_error_not_a_state(stand_in, monkeypatch):
    """An empty answer must not read as a VM in some state (or with no snapshots)."""
    runner = VirshRunner(binary=str(stand_in / "virsh"))
    assert runner.state_and_snapshots("vm") == ("running", [])
    monkeypatch.setenv("VMCTL_STANDIN", "silent")
    with pytest.raises(VirshError, match="virsh domstate printed no state: ''"):
        runner.state_and_snapshots("vm")


def test_runner_without_virsh_binary(tmp_path):
    runner = VirshRunner(binary=str(tmp_path / "no-virsh"))
    with pytest.raises(LibvirtUnreachable, match="cannot run"):
        runner.domstate("x")


def test_virsh_is_found_on_path(stand_in, monkeypatch):
    monkeypatch.setenv("PATH", f"{stand_in}{os.pathsep}{os.environ['PATH']}")
    assert VirshRunner().domstate("vm") == "running"
    assert (stand_in / "argv").exists()


def test_run_command_at_its_timeout_kills_the_whole_process_group(tmp_path):
    """A hook like ``sh -c 'sleep 600; notify'`` must not leave its ``sleep`` behind
    after the timeout: killing only the shell orphaned it, for ever, each revert."""
    pidfile = tmp_path / "pid"
    script = f"sleep 600 & echo $! > {pidfile}; wait"
    result = run_command(["sh", "-c", script], timeout=0.5)
    assert result.returncode is None, "a timed-out command has no exit status"
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not pid_alive(grandchild), 10, message="the hook's own child to be killed")


def test_run_command_that_finishes_leaves_its_background_children_alone(tmp_path):
    """Only a command that outlives its timeout is killed; one that finished in
    time may have started a daemon on purpose."""
    pidfile = tmp_path / "pid"
    result = run_command(
        ["sh", "-c", f"sleep 600 >/dev/null 2>&1 & echo $! > {pidfile}"], timeout=10
    )
    assert result.returncode == 0
    child = int(pidfile.read_text())
    try:
        assert pid_alive(child), "a finished command's background child was killed"
    finally:
        os.kill(child, signal.SIGKILL)


def test_run_command_whose_child_escaped_the_group_returns_at_the_timeout_with_its_output(
    tmp_path, monkeypatch
):
    """A child that made a session of its own is not killed with the group and keeps the
    output pipe open: run_command still returns (after a bounded wait for the output),
    with what the command printed, instead of hanging the revert that ran it."""
    monkeypatch.setattr(virsh_module, "_REAP_WAIT", 0.5)
    pidfile = tmp_path / "pid"
    script = f"echo notifying; setsid sleep 600 & echo $! > {pidfile}; sleep 600"
    try:
        result = run_command(["sh", "-c", script], timeout=1)
        assert result.returncode is None
        assert result.output == "notifying"
    finally:
        wait_until(pidfile.exists, 10, message="the escaped child's pid")
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- the event stream


def event_virsh(tmp_path, body: str) -> VirshRunner:
    """A runner whose ``virsh event`` is a script: ``$n`` is the number of this run (1, 2...),
    and each run writes its pid to ``pid.$n``."""
    script = tmp_path / "virsh"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo x >> {tmp_path}/runs
        n=$(wc -l < {tmp_path}/runs)
        echo $$ > {tmp_path}/pid.$n
        """)
        + textwrap.dedent(body)
    )
    script.chmod(0o755)
    return VirshRunner(binary=str(script))


LINE = "2026-11-25 17:08:23.810+0000: event 'lifecycle' for domain 'art': Stopped Destroyed"


def test_an_event_callback_that_raises_is_logged_and_the_stream_reconnects(tmp_path, caplog):
    """A bug in handling one event must not end the watch: the failure is logged, that
    virsh is killed (not left running unread) and a new one delivers the next events."""
    runner = event_virsh(
        tmp_path,
        f"""\
        echo "{LINE}"
        exec sleep 600
        """,
    )
    seen: list[str] = []

    def on_event(event) -> None:
        seen.append(event.event)
        if len(seen) == 1:
            raise RuntimeError("a bug in the handler")

    stream = EventStream(runner, "art", on_event, max_backoff=0.5)
    with caplog.at_level(logging.ERROR, logger="vmcontroller.virsh"):
        stream.start()
        try:
            wait_until(lambda: len(seen) >= 2, 20, message="the event after the reconnect")
        finally:
            stream.stop()
    assert seen[:2] == ["Stopped", "Stopped"]
    assert "lifecycle event stream failed" in caplog.text and "a bug in the handler" in caplog.text
    first = int((tmp_path / "pid.1").read_text())
    wait_until(lambda: not pid_alive(first), 10, message="the first virsh event to be killed")


def test_a_stream_that_ran_long_restarts_its_reconnect_back_off(tmp_path, caplog):
    """After a failing libvirtd the delay doubles; a stream that then ran well for
    ``stable_after`` is a new start, and its end is retried at the shortest delay."""
    marker = tmp_path / "long-run-ended"
    runner = event_virsh(
        tmp_path,
        f"""\
        case $n in
          1|2|3) exit 1 ;;
          4) sleep 1.5; touch {marker}; exit 0 ;;
          *) exec sleep 600 ;;
        esac
        """,
    )
    stream = EventStream(runner, "art", lambda event: None, max_backoff=1.0, stable_after=1.0)
    with caplog.at_level(logging.WARNING, logger="vmcontroller.virsh"):
        stream.start()
        try:
            wait_until(lambda: (tmp_path / "pid.5").exists(), 30, message="the fifth virsh")
        finally:
            stream.stop()
    delays = [
        r.getMessage().rsplit(" in ", 1)[1]
        for r in caplog.records
        if r.getMessage().startswith("lifecycle event stream ended")
    ]
    assert delays[:4] == ["0.5 s", "1.0 s", "1.0 s", "0.5 s"], delays


class GatedRunner(VirshRunner):
    """Holds the stream thread just before it starts ``virsh event`` until ``gate`` opens."""

    def __init__(self, binary: str, gate: threading.Event):
        super().__init__(binary=binary)
        self.gate = gate
        self.reached = threading.Event()

    def event_argv(self) -> list[str]:
        self.reached.set()
        assert self.gate.wait(30)
        return super().event_argv()


def test_a_stop_that_lands_while_virsh_event_is_starting_still_ends_it(tmp_path):
    """stop() finds no process to end when it comes just before ``virsh event`` starts;
    the stream must end that process itself instead of reading it for ever."""
    event_virsh(tmp_path, "exec sleep 600\n")
    gate = threading.Event()
    runner = GatedRunner(str(tmp_path / "virsh"), gate)
    stream = EventStream(runner, "art", lambda event: None)
    stream.start()
    assert runner.reached.wait(30)
    stopper = threading.Thread(target=stream.stop, args=(30,))
    stopper.start()
    wait_until(stream._stop.is_set, 10, message="stop() to be under way")
    gate.set()
    stopper.join(40)
    # Left running, that virsh (a 600 s sleep) would hold the thread in its read.
    assert not stopper.is_alive() and not stream._thread.is_alive()
    assert not stream.connected


def test_run_command_that_cannot_be_started_says_why_with_status_127(tmp_path):
    """A post_revert_command that names a missing program is reported, never raised."""
    result = run_command([str(tmp_path / "no-such-program"), "x"], timeout=5)
    assert result.returncode == 127
    assert (
        result.output
        == f"cannot run {str(tmp_path / 'no-such-program')!r}: No such file or directory"
    )


# ---------------------------------------------------------------- vm import's calls


def test_unreadable_capabilities_are_an_error_not_an_empty_set():
    """An empty set would read as 'libvirt can run nothing here'."""
    with pytest.raises(VirshError, match="virsh capabilities printed no readable XML"):
        virsh_module.parse_virt_types("<capabilities><guest>")


def test_undefine_forgets_a_domain_with_snapshots(domain):
    """A plain undefine refuses a domain that has snapshots; an import's undo must not."""
    from libvirt_env import virsh

    assert domain.snapshots() == ["ready"]
    virsh("destroy", "--domain", domain.name)
    VirshRunner(timeout=60).undefine(domain.name)
    assert domain.name not in virsh("list", "--all", "--name").split()


@pytest.fixture
def qemu_img(tmp_path):
    """A stand-in qemu-img: prints a percentage, notes its pid, then hangs until killed."""
    script = tmp_path / "qemu-img"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo $$ > {tmp_path}/pid
        printf '    (10.00/100%%)\\r'
        exec sleep 30
        """)
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def test_qemu_img_info_that_hangs_or_is_missing_says_so(qemu_img, tmp_path):
    with pytest.raises(virsh_module.ImageUnreadable, match="qemu-img info did not answer within"):
        virsh_module.image_info("disk.img", timeout=0.5, binary=str(qemu_img / "qemu-img"))
    with pytest.raises(virsh_module.QemuImgError, match="cannot run .*no-qemu-img"):
        virsh_module.image_info("disk.img", binary=str(tmp_path / "no-qemu-img"))


def test_a_conversion_that_cannot_start_or_fails_gives_qemu_imgs_reason(tmp_path):
    with pytest.raises(virsh_module.QemuImgError, match="cannot run .*no-qemu-img"):
        virsh_module.convert_image(
            "a.img", "raw", str(tmp_path / "b.qcow2"), binary=str(tmp_path / "no-qemu-img")
        )
    missing = tmp_path / "missing.img"
    with pytest.raises(virsh_module.QemuImgError) as info:
        virsh_module.convert_image(str(missing), "raw", str(tmp_path / "b.qcow2"))
    assert f"Could not open '{missing}'" in info.value.message
    assert not info.value.message.startswith("qemu-img:")


def test_a_conversion_past_its_timeout_is_killed_and_says_so(qemu_img, tmp_path):
    seen: list[float] = []
    with pytest.raises(virsh_module.QemuImgError, match="did not finish within 0.5 s"):
        virsh_module.convert_image(
            "a.img",
            "raw",
            str(tmp_path / "b.qcow2"),
            on_progress=seen.append,
            timeout=0.5,
            binary=str(qemu_img / "qemu-img"),
        )
    assert seen == [10.0]
    assert not pid_alive(int((qemu_img / "pid").read_text()))


def test_an_interrupted_conversion_kills_qemu_img(qemu_img, tmp_path):
    """Ctrl-C (here raised where the progress is shown) must not leave qemu-img writing."""

    def interrupt(percent: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        virsh_module.convert_image(
            "a.img",
            "raw",
            str(tmp_path / "b.qcow2"),
            on_progress=interrupt,
            binary=str(qemu_img / "qemu-img"),
        )
    assert not pid_alive(int((qemu_img / "pid").read_text()))
