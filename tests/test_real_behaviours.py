"""Behaviours once proven only with the fake virsh (or not at all), on a real libvirtd.

Each test runs the in-process controller (conftest ``start_controller``) on its
own empty-disk QEMU VM (the ``domain`` fixture: running, with a 'ready'
snapshot) and reads what happened from libvirt itself: lifecycle events
recorded by an independent ``virsh event``, domstate, snapshot-list. Failures
of libvirt come from a stand-in virsh in front of the real one that fails one
subcommand, as libvirt does, and hands every other call to the real virsh.
A test that checks that something did *not* happen first waits for a sign
that the controller is at work, then for the whole period in which it would
have happened, derived from the configuration under test.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from libvirt_env import virsh, wait_until
from waits import decisions_of, enforcement_period, pause_period, pid_alive, stays_false

from vmcontroller.vocab import GUEST_REQUEST, HEARTBEAT_TIMEOUT, STARTUP, VM_STOPPED

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"  # libvirt's event when a revert brings the VM up
BOOTED = "Started Booted"
RESUMED = "Resumed Unpaused"
INJECTED = "internal error: injected by the test"

FAILING_VIRSH = """#!/bin/sh
# virsh, except that the subcommand named in {fail} fails as libvirt fails.
fail=$(cat {fail} 2>/dev/null)
if [ -n "$fail" ]; then
    for a in "$@"; do
        if [ "$a" = "$fail" ]; then
            echo "error: {injected} ($fail)" >&2
            exit 1
        fi
    done
fi
exec {real} "$@"
"""


@pytest.fixture
def failing_virsh(tmp_path, monkeypatch) -> Callable[[str], int]:
    """Put the failing stand-in first on PATH; call the result with the subcommand to fail."""
    fail = tmp_path / "fail"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = shutil.which("virsh")
    assert real, "virsh not on PATH"
    (bindir / "virsh").write_text(FAILING_VIRSH.format(fail=fail, real=real, injected=INJECTED))
    (bindir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return fail.write_text


def wait_out(seconds: float) -> None:
    """Let a period pass in which something must NOT happen (derived from the config)."""
    time.sleep(seconds)


def history(api, trigger: str | None = None) -> list[dict]:
    path = "/api/v1/events" + (f"?trigger={trigger}" if trigger else "")
    return api.get(path, "/api/v1/events")["events"]


def wait_for_outcome(api, trigger: str, outcome: str = "succeeded") -> list[dict]:
    """The history rows of trigger once the latest has its outcome (it is written after
    the action ends, so after libvirt's event of it)."""
    rows: list[dict] = []

    def done() -> bool:
        rows[:] = history(api, trigger)
        return bool(rows) and rows[0]["outcome"] == outcome

    wait_until(done, 30, 0.1, f"a {trigger} row with outcome {outcome}")
    return rows


def without_snapshot(domain) -> None:
    virsh("snapshot-delete", "--domain", domain.name, "--snapshotname", "ready")
    assert domain.snapshots() == []


# ------------------------------------------------------------------ no reference snapshot


def test_start_up_without_snapshot_boots_a_shut_off_vm(start_controller, domain, events):
    without_snapshot(domain)
    virsh("destroy", "--domain", domain.name)
    controller, api = start_controller()
    assert events.wait_for(BOOTED, 1, 30), events.events
    assert domain.state() == "running" and events.count(REVERTED) == 0
    rows = history(api, STARTUP)
    assert [(r["action"], r["outcome"]) for r in rows] == [("start", "succeeded")]


def test_start_up_without_snapshot_resumes_a_paused_vm(start_controller, domain, events):
    without_snapshot(domain)
    virsh("suspend", "--domain", domain.name)
    assert domain.state() == "paused"
    start_controller()
    assert events.wait_for(RESUMED, 1, 30), events.events
    assert domain.state() == "running"
    assert events.count(REVERTED) == 0 and events.count(BOOTED) == 0


def test_start_through_the_api_without_snapshot_resumes_a_paused_vm(
    start_controller, domain, events
):
    without_snapshot(domain)
    controller, api = start_controller(auto_revert_enabled=False)
    virsh("suspend", "--domain", domain.name)
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "paused",
        30,
        message="the controller to see the pause",
    )
    body = api.post("/api/v1/vm/start")
    assert "without a revert" in body["message"], body
    assert events.wait_for(RESUMED, 1, 30), events.events
    assert domain.state() == "running" and events.count(REVERTED) == 0


def test_start_through_the_api_without_snapshot_boots_the_vm(start_controller, domain, events):
    without_snapshot(domain)
    controller, api = start_controller()
    api.post("/api/v1/vm/stop")
    assert domain.state() == "shut off"
    body = api.post("/api/v1/vm/start")
    assert body["message"].startswith(f"VM '{domain.name}' started successfully"), body
    assert "'ready' not found" in body["message"] and "without a revert" in body["message"]
    assert events.wait_for(BOOTED, 1, 30), events.events
    assert domain.state() == "running" and events.count(REVERTED) == 0


def test_restart_without_snapshot_answers_409_and_leaves_the_vm_running(
    start_controller, domain, events
):
    without_snapshot(domain)
    controller, api = start_controller()
    for method in ("GET", "POST"):
        body = api.call(method, "/api/v1/vm/restart", "/api/v1/vm/restart", 409).json()
        assert "'ready'" in body["detail"] and "does not exist" in body["detail"]
    assert domain.state() == "running"
    assert events.count(REVERTED) == 0 and events.count("Stopped Destroyed") == 0


def test_a_failed_boot_at_start_up_is_recorded_and_staff_can_start_the_vm(
    start_controller, domain, events, failing_virsh
):
    without_snapshot(domain)
    virsh("destroy", "--domain", domain.name)
    failing_virsh("start")
    controller, api = start_controller()
    row = wait_for_outcome(api, STARTUP, "failed")[0]
    assert row["action"] == "start" and INJECTED in row["error"], row
    assert domain.state() == "shut off" and events.count(BOOTED) == 0
    failing_virsh("")
    body = api.post("/api/v1/vm/start")
    assert "without a revert" in body["message"], body
    assert events.wait_for(BOOTED, 1, 30), events.events
    assert domain.state() == "running"


def test_a_failed_start_up_revert_is_recorded_and_retried_by_the_watchdog(
    start_controller, domain, events, failing_virsh
):
    failing_virsh("snapshot-revert")
    controller, api = start_controller(recovery_backoff_initial=0.5)
    row = wait_for_outcome(api, STARTUP, "failed")[0]
    assert row["action"] == "revert" and INJECTED in row["error"], row
    assert events.count(REVERTED) == 0
    failing_virsh("")
    # Armed after the failure: the silent guest's timeout brings the retry.
    assert events.wait_for(REVERTED, 1, enforcement_period(controller.config) + 30), events.events
    assert wait_for_outcome(api, HEARTBEAT_TIMEOUT)[0]["action"] == "revert"


def test_start_up_reverts_even_when_the_check_for_a_cut_off_replacement_fails(
    start_controller, domain, events, failing_virsh, caplog
):
    failing_virsh("snapshot-list")  # only the repair's own listing; the state poll differs
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        controller, api = start_controller()
        assert events.wait_for(REVERTED, 1, 30), events.events
    assert any(
        "could not check the reference snapshot" in r.getMessage() and INJECTED in r.getMessage()
        for r in caplog.records
    )
    rows = wait_for_outcome(api, STARTUP)
    assert [(r["action"], r["outcome"]) for r in rows] == [("revert", "succeeded")]


# ------------------------------------------------------------------ libvirt failures

FAILURES = [
    ("POST", "/api/v1/vm/start", "/api/v1/vm/start", "snapshot-revert", "starting VM"),
    ("POST", "/api/v1/vm/stop", "/api/v1/vm/stop", "destroy", "stopping VM"),
    (
        "POST",
        "/api/v1/snapshot/create?snapshot_name=backup",
        "/api/v1/snapshot/create",
        "snapshot-create-as",
        "creating snapshot",
    ),
    (
        "DELETE",
        "/api/v1/snapshot/ready",
        "/api/v1/snapshot/{snapshot_name}",
        "snapshot-delete",
        "deleting snapshot",
    ),
]


@pytest.mark.parametrize(
    "method, path, template, command, doing",
    FAILURES,
    ids=[f"{m} {t}" for m, _, t, _, _ in FAILURES],
)
def test_a_failing_libvirt_answers_500_with_virsh_message(
    start_controller, domain, events, failing_virsh, method, path, template, command, doing
):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30)
    snapshots, state = domain.snapshots(), domain.state()
    failing_virsh(command)
    body = api.call(method, path, template, 500).json()
    assert body["detail"].startswith(f"Error {doing}: ") and INJECTED in body["detail"], body
    assert "Traceback" not in body["detail"]
    failing_virsh("")
    assert domain.snapshots() == snapshots and domain.state() == state


# ------------------------------------------------------------------ a recovery that waits for staff

GATED_VIRSH = """#!/bin/sh
# virsh, except that the subcommand {gated} waits, once {armed} exists, until {release} does.
for a in "$@"; do
    if [ "$a" = "{gated}" ] && [ -e {armed} ]; then
        touch {entered}
        while [ ! -e {release} ]; do sleep 0.05; done
    fi
done
exec {real} "$@"
"""


def test_a_recovery_staff_overrule_while_it_waits_is_skipped_and_their_restart_reverts(
    start_controller, domain, events, tmp_path, monkeypatch, caplog
):
    """A destroy is decided on while a staff operation holds the VM; staff then switch to
    maintenance and press restart. The recovery, its turn come, is no longer wanted: it is
    recorded as skipped, and the staff restart that joined it does its own revert."""
    files = {k: tmp_path / k for k in ("armed", "entered", "release")}
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "virsh").write_text(
        GATED_VIRSH.format(gated="snapshot-delete", real=shutil.which("virsh"), **files)
    )
    (bindir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "backup")
    controller, api = start_controller(heartbeat_timeout=600, vm_startup_heartbeat_delay=600)
    assert events.wait_for(REVERTED, 1, 30)
    monitor = controller.monitor
    answers: dict[str, int] = {}

    def call(method: str, path: str, template: str) -> None:
        own = type(api)(api.base, api._check)  # a session per thread
        answers[path] = own.call(method, path, template, expect=None).status_code

    files["armed"].touch()
    staff_delete = threading.Thread(
        target=call, args=("DELETE", "/api/v1/snapshot/backup", "/api/v1/snapshot/{snapshot_name}")
    )
    staff_delete.start()
    wait_until(files["entered"].exists, 30, message="the staff delete to hold the VM")
    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        virsh("destroy", "--domain", domain.name)
        wait_until(
            lambda: monitor._job is not None,
            30,
            message="the recovery of the destroy to wait for the VM",
        )
        api.post("/api/v1/revert/disable")
        staff_restart = threading.Thread(
            target=call, args=("POST", "/api/v1/vm/restart", "/api/v1/vm/restart")
        )
        staff_restart.start()
        wait_until(
            lambda: any("joins the restart" in r.getMessage() for r in caplog.records),
            30,
            message="the staff restart to join the recovery",
        )
        files["release"].touch()
        staff_delete.join(60)
        staff_restart.join(60)
    assert answers == {"/api/v1/snapshot/backup": 200, "/api/v1/vm/restart": 200}, answers
    assert events.wait_for(REVERTED, 2, 30), events.events
    skipped = history(api, VM_STOPPED)
    assert [(r["outcome"], r["error"]) for r in skipped] == [
        ("skipped", "no longer needed when its turn came")
    ], skipped
    restart = [r for r in history(api, "api") if r["action"] == "revert"]
    assert [r["outcome"] for r in restart] == ["succeeded"], restart
    assert events.count(REVERTED) == 2 and domain.state() == "running"


# ------------------------------------------------------------------ maintenance


def test_a_heartbeat_timeout_in_maintenance_is_logged_once_and_reverts_nothing(
    start_controller, domain, events, caplog
):
    timeout, grace = 1.0, 1.0
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        controller, api = start_controller(
            heartbeat_timeout=timeout, vm_startup_heartbeat_delay=grace
        )
        assert events.wait_for(REVERTED, 1, 30)
        api.post("/api/v1/revert/disable")

        def timeouts() -> list[str]:
            return [r.getMessage() for r in caplog.records if "no heartbeat" in r.getMessage()]

        wait_until(lambda: timeouts(), grace + timeout + 30, message="the timeout to be logged")
        # Without the once-only rule it would be logged again at every check, and a
        # revert would follow within a timeout: wait several timeouts and checks.
        wait_out(3 * timeout + 3 * controller.config.heartbeat_check_interval)
    assert len(timeouts()) == 1, timeouts()
    assert "maintenance" in timeouts()[0]
    assert events.count(REVERTED) == 1 and domain.state() == "running"
    assert history(api, HEARTBEAT_TIMEOUT) == []


def test_re_enabling_auto_revert_gives_the_guest_a_full_timeout_then_reverts(
    start_controller, domain, events, caplog
):
    timeout, grace = 3.0, 1.0
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        controller, api = start_controller(
            heartbeat_timeout=timeout, vm_startup_heartbeat_delay=grace, auto_revert_enabled=False
        )
        wait_until(
            lambda: any("no heartbeat" in r.getMessage() for r in caplog.records),
            grace + timeout + 30,
            message="the silence to be noticed in maintenance",
        )
    reverts_before = events.count(REVERTED)
    api.post("/api/v1/revert/enable")
    assert events.wait_for(REVERTED, reverts_before + 1, timeout + 30), events.events
    reverted = wait_for_outcome(api, HEARTBEAT_TIMEOUT)[0]
    enabled = next(r for r in history(api) if r["action"] == "enable_auto_revert")
    # The silence counted from the re-enabling, not from the last heartbeat long before.
    gap = (
        datetime.fromisoformat(reverted["time"]) - datetime.fromisoformat(enabled["time"])
    ).total_seconds()
    assert gap >= timeout - 0.1, (enabled, reverted)


def test_a_vm_paused_in_maintenance_is_logged_once_and_left_paused(
    start_controller, domain, events, caplog
):
    with caplog.at_level(logging.WARNING, logger="vmcontroller.monitor"):
        controller, api = start_controller(heartbeat_timeout=1.0)
        assert events.wait_for(REVERTED, 1, 30)
        api.post("/api/v1/revert/disable")
        virsh("suspend", "--domain", domain.name)
        wait_until(
            lambda: api.get("/api/v1/status")["vm_state"] == "paused",
            30,
            message="the controller to see the pause",
        )

        def refusals() -> list[str]:
            return [
                r.getMessage() for r in caplog.records if "paused for more than" in r.getMessage()
            ]

        wait_until(
            refusals, pause_period(controller.config) + 30, message="the long pause to be logged"
        )
        # Reported once: again at every check it would be a second line within the period.
        stays_false(
            lambda: len(refusals()) > 1 or events.count(REVERTED) > 1,
            pause_period(controller.config),
            "logged again or reverted",
        )
    assert "maintenance" in refusals()[0]
    assert domain.state() == "paused" and history(api, "vm_paused") == []


def test_a_vm_started_paused_behind_a_staff_stop_is_left_alone_without_a_busy_loop(
    start_controller, domain, events, monkeypatch
):
    controller, api = start_controller(heartbeat_timeout=1.0)
    assert events.wait_for(REVERTED, 1, 30)
    api.post("/api/v1/vm/stop")
    seen = decisions_of(controller.monitor, monkeypatch)
    virsh("start", "--paused", "--domain", domain.name)  # someone at the console
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "paused",
        30,
        message="the controller to see the paused VM",
    )
    # The pause outlasts the timeout: the monitor notes it once, acts on nothing (staff
    # stopped the VM) and must not decide the same thing again at every step.
    stays_false(
        lambda: seen.count("paused_too_long") > 1,
        2 * pause_period(controller.config),
        "the monitor decided on the same pause again and again",
    )
    assert domain.state() == "paused" and events.count(REVERTED) == 1
    assert api.get("/api/v1/status")["stopped_by_staff"] is True


# ------------------------------------------------------------------ guest requests


def test_a_guest_request_after_a_staff_stop_is_refused_and_the_vm_stays_off(
    start_controller, domain, events
):
    controller, api = start_controller()
    assert events.wait_for(REVERTED, 1, 30)
    api.post("/api/v1/vm/stop")
    body = api.call(
        "POST", "/api/v1/revert/request", "/api/v1/revert/request", 409, params={"reason": "test"}
    ).json()
    assert "stopped by staff" in body["detail"]
    rows = history(api, GUEST_REQUEST)
    assert [r["outcome"] for r in rows] == ["refused"]
    # A queued request would be carried out at the monitor's next step, well within a check.
    wait_out(3 * controller.config.heartbeat_check_interval)
    assert domain.state() == "shut off" and events.count(REVERTED) == 1


def test_a_guest_request_during_the_grace_period_is_not_queued(start_controller, domain, events):
    grace = 60.0
    controller, api = start_controller(vm_startup_heartbeat_delay=grace)
    assert events.wait_for(REVERTED, 1, 30)
    wait_until(
        lambda: api.get("/api/v1/status")["vm_state"] == "running",
        30,
        message="the controller to see the VM running",
    )
    response = api.call(
        "POST", "/api/v1/revert/request", "/api/v1/revert/request", 202, params={"reason": "test"}
    ).json()
    assert response["details"]["queued"] is False, response
    assert "grace period" in response["details"]["note"]
    wait_out(3 * controller.config.heartbeat_check_interval)
    assert events.count(REVERTED) == 1 and history(api, GUEST_REQUEST) == []


# ------------------------------------------------------------------ event stream and threads


def test_while_the_event_stream_is_down_a_fast_poll_recovers_an_external_destroy(
    start_controller, domain, events, failing_virsh
):
    failing_virsh("event")  # `virsh event` fails at once: the stream never connects
    controller, api = start_controller(
        heartbeat_timeout=600,
        vm_startup_heartbeat_delay=600,
        state_poll_interval=600,
        heartbeat_check_interval=0.5,
    )
    assert events.wait_for(REVERTED, 1, 30)
    assert controller.events.connected is False
    virsh("destroy", "--domain", domain.name)
    # Only the poll can see it: no event reaches the controller, and the slow poll
    # (state_poll_interval) would come in 600 s, past this deadline.
    assert events.wait_for(REVERTED, 2, 60), events.events
    assert len(wait_for_outcome(api, VM_STOPPED)) == 1
    assert controller.events.connected is False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_supervise_restarts_a_dead_monitor_thread_which_then_recovers_a_destroy(
    start_controller, domain, events, monkeypatch, caplog
):
    controller, api = start_controller(heartbeat_timeout=600, vm_startup_heartbeat_delay=600)
    assert events.wait_for(REVERTED, 1, 30)
    monitor = controller.monitor

    def die() -> bool:
        raise SystemExit("the monitor thread dies")  # not an Exception: escapes its guard

    monkeypatch.setattr(monitor, "_step", die)
    with monitor._cond:
        monitor._cond.notify_all()  # wake it so it takes the next step now
    wait_until(lambda: not monitor.thread_alive, 30, message="the monitor thread to die")
    monkeypatch.undo()
    with caplog.at_level(logging.ERROR, logger="vmcontroller.monitor"):
        controller.supervise()
    assert monitor.thread_alive
    assert any("died" in r.getMessage() for r in caplog.records)
    virsh("destroy", "--domain", domain.name)
    assert events.wait_for(REVERTED, 2, 60), events.events
    assert len(wait_for_outcome(api, VM_STOPPED)) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_supervise_restarts_a_dead_event_thread_whose_events_then_drive_recovery(
    start_controller, domain, events, monkeypatch, caplog
):
    # The safety poll is far away: a recovery within the deadline below comes from an event.
    controller, api = start_controller(
        heartbeat_timeout=600, vm_startup_heartbeat_delay=600, state_poll_interval=600
    )
    assert events.wait_for(REVERTED, 1, 30)
    stream = controller.events
    wait_until(
        lambda: stream._proc is not None and stream.connected,
        30,
        message="the controller's virsh event process",
    )
    thread = stream._thread
    assert thread is not None

    def die() -> None:
        raise SystemExit("the event thread dies")  # not an Exception: escapes its guard

    monkeypatch.setattr(stream, "_follow_once", die)
    stream._proc.kill()  # its virsh ends, as when libvirtd restarts; the reconnection dies
    wait_until(lambda: not thread.is_alive(), 30, message="the event thread to die")
    monkeypatch.undo()
    with caplog.at_level(logging.ERROR, logger="vmcontroller.virsh"):
        controller.supervise()
    assert stream._thread is not thread and stream._thread.is_alive()
    assert any("event thread died" in r.getMessage() for r in caplog.records)
    wait_until(
        lambda: stream._proc is not None and stream._proc.poll() is None,
        30,
        message="a new virsh event process",
    )
    virsh("destroy", "--domain", domain.name)
    assert events.wait_for(REVERTED, 2, 60), events.events
    assert len(wait_for_outcome(api, VM_STOPPED)) == 1


# ------------------------------------------------------------------ post_revert_command


def test_a_post_revert_command_outliving_its_timeout_is_killed_with_its_children_and_logged(
    start_controller, domain, events, tmp_path, caplog
):
    pidfile = tmp_path / "pid"
    limit = 1.0
    script = f"sleep 600 & echo $$ $! > {pidfile}; wait"
    with caplog.at_level(logging.INFO, logger="vmcontroller.monitor"):
        controller, api = start_controller(
            post_revert_command=["sh", "-c", script], post_revert_timeout=limit
        )
        assert events.wait_for(REVERTED, 1, 30)
        wait_until(
            lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2,
            30,
            message="the command to start",
        )
        shell, child = (int(pid) for pid in pidfile.read_text().split())
        wait_until(
            lambda: not pid_alive(shell) and not pid_alive(child),
            limit + 30,
            message="the command and its child to be killed",
        )
        wait_until(
            lambda: any("killed after" in r.getMessage() for r in caplog.records),
            30,
            message="the kill to be logged",
        )
    killed = [r for r in caplog.records if "killed after" in r.getMessage()]
    assert len(killed) == 1 and killed[0].levelno == logging.ERROR
    assert "post_revert_command" in killed[0].getMessage()


# ------------------------------------------------------------------ vm.Domain on its own
# (issue 10, point 5: lines of vm.py no controller-level test reaches)

from libvirt_env import URI, TestDomain  # noqa: E402  (this section's own imports)

from vmcontroller.virsh import VirshError, VirshRunner  # noqa: E402
from vmcontroller.vm import NOT_FOUND, Domain, StartResult  # noqa: E402


@pytest.fixture
def bare_domain(libvirt):
    """A shut-off VM without snapshots: Domain.start() has to boot it as it is."""
    vm = TestDomain("bare").create(start=False, snapshot=None)
    yield vm
    vm.remove()


def test_an_undefined_vm_reads_as_not_found(libvirt):
    """libvirt's own 'no such domain' answer is a state ('not found'), not an error."""
    assert Domain(VirshRunner(URI), TestDomain("undefined").name, "ready").state() == NOT_FOUND


def test_a_vm_that_libvirt_cannot_boot_fails_the_start_with_libvirts_message(bare_domain):
    bare_domain.disk.unlink()
    with pytest.raises(VirshError) as caught:
        Domain(VirshRunner(URI, timeout=60), bare_domain.name, "ready").start()
    assert str(bare_domain.disk) in caught.value.message, caught.value.message
    assert bare_domain.state() == "shut off"


class StartedByOthers(VirshRunner):
    """Someone else (staff with virsh, libvirt-guests) starts the VM just before we do."""

    def start(self, domain: str) -> None:
        virsh("start", "--domain", domain)
        super().start(domain)  # fails for real: the domain is already active


def test_a_vm_started_by_someone_else_meanwhile_is_a_successful_start(bare_domain):
    with pytest.raises(VirshError, match="already active"):
        StartedByOthers(URI, timeout=60).start(bare_domain.name)  # the race is real...
    virsh("destroy", "--domain", bare_domain.name)
    result = Domain(StartedByOthers(URI, timeout=60), bare_domain.name, "ready").start()
    assert result == StartResult(reverted=False, was_running=False)  # ...and no failure
    assert bare_domain.state() == "running"
