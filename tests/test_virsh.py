"""The virsh runner: parsers, error classification, and the process rules
(-c URI, LC_ALL=C, explicit options, timeouts) checked with a stand-in virsh."""
from __future__ import annotations

import os
import signal
import stat
import textwrap

import pytest

from vmcontroller.virsh import (DomainNotFound, LibvirtUnreachable, ManagedSaveConflict, NotRunning,
                                RevertRisky, SnapshotLacksDefinition, SnapshotNotFound,
                                VirshError, VirshRunner, VirshTimeout, classify_error,
                                parse_domstate, parse_event_line, parse_name_list,
                                parse_snapshot_current, run_command)
from libvirt_env import wait_until
from waits import pid_alive


def test_parse_domstate():
    assert parse_domstate("running\n\n") == "running"
    assert parse_domstate("\nshut off\n") == "shut off"
    with pytest.raises(VirshError):
        parse_domstate("\n")


def test_parse_lists():
    assert parse_name_list("ready\nbackup-1\n\n") == ["ready", "backup-1"]
    assert parse_name_list("") == []
    assert parse_snapshot_current("ready\n") == "ready"
    assert parse_snapshot_current("\n") is None


def test_parse_event_lines():
    event = parse_event_line("2026-11-25 17:08:23.810+0000: event 'lifecycle' for domain "
                             "'eden': Stopped Destroyed\n")
    assert event is not None
    assert (event.domain, event.event, event.detail) == ("eden", "Stopped", "Destroyed")
    assert event.timestamp is not None and event.timestamp.microsecond == 810000
    event = parse_event_line("event 'lifecycle' for domain 'x': Shutdown Finished after host request")
    assert event is not None and event.detail == "Finished after host request"
    assert event.timestamp is None
    assert parse_event_line("event 'reboot' for domain 'x'") is None
    assert parse_event_line("") is None


@pytest.mark.parametrize("stderr, cls", [
    ("error: failed to get domain 'nope'\n", DomainNotFound),
    ("error: Domain snapshot not found: no domain snapshot with matching name 'x'", SnapshotNotFound),
    ("error: domain 'x' has no current snapshot", SnapshotNotFound),
    ("error: Failed to destroy domain 'x'\nerror: Requested operation is not valid: domain is "
     "not running", NotRunning),
    ("error: failed to connect to the hypervisor\nerror: Failed to connect socket to "
     "'/run/libvirt/libvirt-sock': No such file or directory", LibvirtUnreachable),
    ("error: operation failed: domain moment x already exists", VirshError),
    # Refused reverts (VIR_ERR_SNAPSHOT_REVERT_RISKY). The first is what libvirt 9.0.0 printed
    # here (tests/test_reference_snapshot.py produces it); the second is libvirt 9.0's
    # qemuSnapshotRevertValidate, raised even with --force, which cannot be produced through
    # the API (redefining a snapshot without <domain> is refused: "missing domain in
    # snapshot"); the third is the ABI check of libvirts before 8.x, which 9.0 no longer
    # makes (a revert respawns QEMU from the snapshot's definition).
    ("error: Failed to revert snapshot ready\nerror: revert requires force: snapshot without "
     "memory state, removal of existing managed saved state strongly recommended to avoid "
     "corruption\n", ManagedSaveConflict),
    ("error: Failed to revert snapshot ready\nerror: revert requires force: snapshot 'ready' "
     "lacks domain 'art' rollback info\n", SnapshotLacksDefinition),
    ("error: Failed to revert snapshot ready\nerror: revert requires force: Target domain max "
     "memory 131072 does not match source 65536\n", RevertRisky),
])
def test_classify_error_keeps_virsh_message(stderr, cls):
    error = classify_error(stderr, ["virsh"], 1)
    assert type(error) is cls
    assert "error:" not in error.message
    assert error.message.split("; ")[-1] in stderr


@pytest.fixture
def stand_in(tmp_path):
    """A fake virsh that records its argv and environment, and can be told to hang or fail."""
    script = tmp_path / "virsh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        printf '%s\\n' "$@" > {tmp_path}/argv
        echo "$LC_ALL" > {tmp_path}/lc_all
        case "$VMCTL_STANDIN" in
          hang) exec sleep 30 ;;
          fail) echo "error: failed to get domain 'x'" >&2; exit 1 ;;
        esac
        echo running
        """))
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
    result = run_command(["sh", "-c", f"sleep 600 >/dev/null 2>&1 & echo $! > {pidfile}"],
                         timeout=10)
    assert result.returncode == 0
    child = int(pidfile.read_text())
    try:
        assert pid_alive(child), "a finished command's background child was killed"
    finally:
        os.kill(child, signal.SIGKILL)
