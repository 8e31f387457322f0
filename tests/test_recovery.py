"""Recovery you can trust for months, against a real libvirtd and real QEMU VMs.

Controllers run as real processes here (kill -9 and signals need them);
what happened is read from libvirt (lifecycle events, snapshot-current,
domstate) and from the controller's own history API.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import pytest
from libvirt_env import virsh, wait_until
from waits import ACTION_SLACK, enforcement_period, stays_false

from vmcontroller.config import load_config

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"


def config_of(ctl):
    """The configuration the controller process was started with (its own file)."""
    return load_config(ctl.config_path, env={})[0]


def ctl_timeout(ctl) -> float:
    """Long enough for anything the controller may still be doing: its longest virsh call."""
    return config_of(ctl).virsh_long_timeout + config_of(ctl).virsh_timeout


def history(api, **params) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return api.get(f"/api/v1/events?{query}", "/api/v1/events")["events"]


def virsh_reverting(domain_name: str) -> bool:
    """Whether a virsh snapshot-revert of this domain runs (whoever started it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended meanwhile
        if b"snapshot-revert" in argv and domain_name.encode() in argv:
            return True
    return False


def revert_in_progress(api) -> bool:
    return any(e["action"] == "revert" and e["outcome"] == "started" for e in history(api))


def restart_in_background(api) -> threading.Thread:
    def call():
        try:
            api.session.post(api.base + "/api/v1/vm/restart", timeout=60)
        except Exception:
            pass  # the controller may die under it: that is the test

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_kill_9_during_a_revert_loses_nothing_and_reverts_once(spawn_controller, domain, events):
    first = spawn_controller()
    assert events.wait_for(REVERTED, 1, 30)
    first.api.post("/api/v1/revert/disable")
    first.api.post("/api/v1/revert/enable")
    restart_in_background(first.api)
    wait_until(lambda: revert_in_progress(first.api), 30, 0.01, "a revert under way")
    first.proc.kill()  # SIGKILL, mid-revert
    first.proc.wait(10)
    # The revert itself is virsh's: the orphaned virsh finishes it without us (and
    # libvirt's event may come after the VM reads as running). Then count anew.
    wait_until(
        lambda: not virsh_reverting(domain.name),
        60,
        message="the killed controller's virsh snapshot-revert to end",
    )
    wait_until(lambda: domain.state() == "running", 30, message="virsh's revert to finish")
    before = events.count(REVERTED)

    second = spawn_controller(heartbeat_timeout=60)  # no timeout can revert meanwhile
    assert events.wait_for(REVERTED, before + 1, 30), "the restarted controller starts clean"
    wait_until(
        lambda: (
            ("startup", "revert", "succeeded")
            in [(e["trigger"], e["action"], e["outcome"]) for e in history(second.api)]
        ),
        30,
        message="the start-up revert to be recorded",
    )
    # A revert redone for the interrupted one would follow the start-up at once.
    stays_false(
        lambda: events.count(REVERTED) > before + 1,
        config_of(second).heartbeat_check_interval + ACTION_SLACK,
        "something reverted twice after the restart",
    )
    assert domain.state() == "running" and domain.current_snapshot() == "ready"
    events_after = history(second.api, limit=50)
    outcomes = [(e["trigger"], e["action"], e["outcome"]) for e in events_after]
    assert ("api", "revert", "interrupted") in outcomes, outcomes
    assert ("api", "disable_auto_revert", "succeeded") in outcomes
    assert ("startup", "revert", "succeeded") in outcomes
    assert "interrupted" in second.log()


def test_maintenance_survives_a_restart_and_prevents_reverts(spawn_controller, domain, events):
    first = spawn_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    assert events.wait_for(REVERTED, 1, 30)
    first.api.post("/api/v1/revert/disable")
    first.proc.kill()
    first.proc.wait(10)
    before = events.count(REVERTED)
    second = spawn_controller(heartbeat_timeout=1, vm_startup_heartbeat_delay=0.5)
    assert second.api.get("/api/v1/status")["auto_revert_enabled"] is False
    wait_until(
        lambda: "automatic revert is disabled" in second.log(),
        30,
        message="the silent guest's timeout to be logged in maintenance",
    )
    stays_false(
        lambda: events.count(REVERTED) > before,
        enforcement_period(config_of(second)),
        "maintenance: a revert at start or on timeout",
    )


def test_a_vm_stopped_by_staff_stays_stopped_across_a_restart(spawn_controller, domain, events):
    first = spawn_controller()
    assert events.wait_for(REVERTED, 1, 30)
    first.api.post("/api/v1/vm/stop")
    assert first.stop(signal.SIGTERM) == 0
    second = spawn_controller()
    assert second.api.get("/api/v1/status")["stopped_by_staff"] is True
    stays_false(
        lambda: domain.state() != "shut off" or events.count(REVERTED) > 1,
        enforcement_period(config_of(second)),
        "a VM stopped by staff was started",
    )
    status = second.api.get("/api/v1/status")
    assert status["stopped_by_staff"] is True and status["vm_is_running"] is False


def test_guard_trips_when_the_guest_never_heartbeats(spawn_controller, domain, events):
    ctl = spawn_controller(
        heartbeat_timeout=1, vm_startup_heartbeat_delay=0.2, max_recoveries=3, recovery_window=600
    )
    wait_until(
        lambda: ctl.api.get("/api/v1/status")["recovery"]["guard"]["state"] == "failed",
        60,
        0.2,
        "the guard to trip",
    )
    reverts = events.count(REVERTED)
    assert reverts == 1 + 3, "startup + max_recoveries"
    stays_false(
        lambda: events.count(REVERTED) > reverts,
        enforcement_period(config_of(ctl)),
        "failed: not left as it is",
    )
    assert domain.state() == "running"
    status = ctl.api.get("/api/v1/status")
    assert status["recovery"]["guard"]["detail"].startswith("3 automatic recoveries")
    assert "recovery guard tripped" in ctl.log() and " ERROR " in ctl.log()
    refused = history(ctl.api, limit=1)[0]
    assert (refused["trigger"], refused["outcome"]) == ("heartbeat_timeout", "refused")
    ctl.api.post("/api/v1/vm/restart")
    assert ctl.api.get("/api/v1/status")["recovery"]["guard"]["state"] == "ok"
    assert events.wait_for(REVERTED, reverts + 2, 30), "recovery resumes after a manual restart"


def test_a_snapshot_deleted_behind_our_back_fails_cleanly_with_backoff(
    spawn_controller, domain, events
):
    ctl = spawn_controller(
        heartbeat_timeout=1,
        vm_startup_heartbeat_delay=0.2,
        recovery_backoff_initial=1,
        recovery_backoff_max=4,
        max_recoveries=50,
    )
    assert events.wait_for(REVERTED, 1, 30)
    virsh("snapshot-delete", "--domain", domain.name, "--snapshotname", "ready")

    def failures():
        return [
            e
            for e in history(ctl.api, limit=100, trigger="heartbeat_timeout")
            if e["outcome"] == "failed"
        ]

    wait_until(lambda: len(failures()) >= 3, 60, 0.2, "three failed attempts")
    failed = failures()
    assert all("does not exist" in e["error"] for e in failed)
    # Attempts wait for a back-off (its growth is proven in test_monitor.py on the guard's
    # own delays; the spacing on real libvirt belongs to scripts/bench).
    wait_until(
        lambda: ctl.api.get("/api/v1/status")["recovery"]["guard"]["state"] == "backoff",
        60,
        0.1,
        "the guard to hold the next attempt back",
    )
    status = ctl.api.get("/api/v1/status")
    assert status["snapshot_exists"] is False and status["vm_is_running"] is True
    assert status["recovery"]["last_outcome"] == "failed"
    assert status["recovery"]["guard"]["consecutive_failures"] >= 3
    assert events.count(REVERTED) == 1


def test_guest_request_is_queued_executed_and_recorded(spawn_controller, domain, events):
    ctl = spawn_controller(heartbeat_timeout=30, vm_startup_heartbeat_delay=0.5)
    assert events.wait_for(REVERTED, 1, 30)
    ctl.api.get("/api/v1/heartbeat")
    wait_until(
        lambda: ctl.api.get("/api/v1/heartbeat/status")["enabled"],
        30,
        message="the grace period of the startup revert to end",
    )
    body = ctl.api.call(
        "GET",
        "/api/v1/revert/request?reason=player+crashed&severity=high",
        "/api/v1/revert/request",
        expect=202,
    ).json()
    assert body["details"]["queued"] is True
    again = ctl.api.call(
        "POST",
        "/api/v1/idle/reset",
        "/api/v1/idle/reset",
        expect=202,
        data={"idle_duration": "900"},
    ).json()
    assert again["details"]["queued"] is False, "not queued twice"
    assert events.wait_for(REVERTED, 2, 30)
    wait_until(
        lambda: history(ctl.api, trigger="guest_request")[0]["outcome"] != "started",
        30,
        message="the queued revert to be recorded",
    )
    assert events.count(REVERTED) == 2, "queued once, reverted once"
    recorded = history(ctl.api, trigger="guest_request")[0]
    assert recorded["reason"] == "player crashed (severity high)"
    assert recorded["outcome"] == "succeeded" and recorded["duration"] > 0
    ctl.api.post("/api/v1/revert/disable")
    refused = ctl.api.call(
        "GET", "/api/v1/idle/reset?idle_duration=60", "/api/v1/idle/reset", expect=409
    ).json()
    assert "maintenance" in refused["detail"]
    ctl.api.call("GET", "/api/v1/revert/request", "/api/v1/revert/request", expect=400)


@pytest.fixture
def gated_virsh(tmp_path):
    """A virsh stand-in first on PATH: while a gate file exists, each call waits for it to go,
    then runs the real one, so a revert is surely under way when the test acts."""
    real = next(p for p in ("/usr/bin/virsh", "/bin/virsh") if os.path.exists(p))
    folder = tmp_path / "gated-bin"
    folder.mkdir()
    gate = tmp_path / "gate"
    script = folder / "virsh"
    script.write_text(f'#!/bin/sh\nwhile [ -e {gate} ]; do sleep 0.05; done\nexec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}, gate


def test_sigterm_during_a_revert_finishes_it_and_exits_0(
    spawn_controller, domain, events, gated_virsh
):
    env, gate = gated_virsh
    ctl = spawn_controller(env=env)
    assert events.wait_for(REVERTED, 1, 30)
    gate.touch()  # the restart's virsh calls wait here: the revert stays under way
    restart_in_background(ctl.api)
    wait_until(lambda: revert_in_progress(ctl.api), 30, 0.01, "a revert under way")
    ctl.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "received SIGTERM" in ctl.log(), 10, 0.01, "the signal to land")
    gate.unlink()
    # A second signal would exit at once: wait for the first to finish the revert.
    assert ctl.proc.wait(ctl_timeout(ctl)) == 0
    ctl.stop()
    assert events.wait_for(REVERTED, 2, 10)
    assert domain.state() == "running"
    log = ctl.log()
    assert "received SIGTERM" in log and "Traceback" not in log
    assert "revert to snapshot 'ready'" in log and "done in" in log.split("received SIGTERM")[1]


@pytest.fixture
def hanging_virsh(tmp_path):
    """A virsh stand-in first on PATH: runs the real one, or hangs while a flag file exists."""
    real = next(p for p in ("/usr/bin/virsh", "/bin/virsh") if os.path.exists(p))
    folder = tmp_path / "bin"
    folder.mkdir()
    flag = tmp_path / "hang"
    script = folder / "virsh"
    script.write_text(f'#!/bin/sh\nif [ -e {flag} ]; then exec sleep 600; fi\nexec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}, flag


def test_a_hung_libvirt_never_hangs_a_request_and_recovery_resumes(
    spawn_controller, domain, events, hanging_virsh
):
    env, flag = hanging_virsh
    ctl = spawn_controller(
        env=env,
        virsh_timeout=2,
        virsh_long_timeout=2,
        heartbeat_timeout=2,
        vm_startup_heartbeat_delay=0.5,
        heartbeat_check_interval=0.5,
        state_poll_interval=1,
        recovery_backoff_initial=1,
        recovery_backoff_max=2,
        max_recoveries=50,
    )
    assert events.wait_for(REVERTED, 1, 30)
    ctl.api.get("/api/v1/heartbeat")
    flag.touch()  # libvirtd "hangs" from now on
    wait_until(
        lambda: ctl.api.get("/api/v1/status")["vm_state"] == "unknown",
        20,
        0.2,
        "status to report an unknown state",
    )
    # The virsh stand-in would sleep 600 s: an answer at all shows nothing waits for it
    # (how fast the answers come is measured by scripts/bench).
    for _ in range(10):
        status = ctl.api.get("/api/v1/status")
        ctl.api.get("/api/v1/heartbeat")
    assert "did not answer within 2 s" in status["vm_state_detail"]
    body = ctl.api.call("POST", "/api/v1/vm/restart", "/api/v1/vm/restart", expect=500).json()
    assert "did not answer" in body["detail"], "libvirt failed: 500 with virsh's message"
    # Heartbeats stop while libvirt is hung: recovery attempts fail and back off ...
    wait_until(
        lambda: any(
            e["outcome"] == "failed" for e in history(ctl.api, trigger="heartbeat_timeout")
        ),
        30,
        0.2,
        "a failed recovery attempt",
    )
    before = events.count(REVERTED)
    flag.unlink()  # ... until libvirtd answers again: recovery resumes by itself.
    assert events.wait_for(REVERTED, before + 1, 30), "recovery resumed"
    wait_until(
        lambda: ctl.api.get("/api/v1/status")["vm_state"] == "running",
        20,
        0.2,
        "status to show the VM running again",
    )
    assert "Traceback" not in ctl.log()


def test_post_revert_command_runs_after_a_real_revert(spawn_controller, domain, events, tmp_path):
    out = tmp_path / "after-revert.txt"
    ctl = spawn_controller(post_revert_command=["sh", "-c", f"echo {{vm_name}} >> {out}"])
    assert events.wait_for(REVERTED, 1, 30)
    ctl.api.post("/api/v1/vm/restart")
    wait_until(
        lambda: out.exists() and len(out.read_text().split()) == 2,
        10,
        0.1,
        "the command after both reverts",
    )
    assert out.read_text().split() == [domain.name, domain.name]
    assert "post_revert_command" in ctl.log() and "succeeded" in ctl.log()


def test_a_second_signal_exits_at_once(spawn_controller, domain, events, hanging_virsh):
    env, flag = hanging_virsh
    ctl = spawn_controller(env=env, virsh_timeout=30)
    assert events.wait_for(REVERTED, 1, 30)
    flag.touch()  # the next revert hangs for up to 30 s: shutdown would wait for it
    restart_in_background(ctl.api)
    wait_until(lambda: revert_in_progress(ctl.api), 30, 0.01, "a revert under way")
    ctl.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "received SIGTERM" in ctl.log(), 5, 0.01, "the first signal to land")
    ctl.proc.send_signal(signal.SIGTERM)
    # The revert hangs for virsh_timeout (30 s): exiting at all within that shows "at once".
    assert ctl.proc.wait(config_of(ctl).virsh_timeout / 2) == 128 + signal.SIGTERM
    assert "exiting at once" in ctl.log()
    flag.unlink()


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_the_event_stream_reconnects_after_it_dies(spawn_controller, domain, events):
    ctl = spawn_controller(heartbeat_timeout=60, state_poll_interval=600)
    assert events.wait_for(REVERTED, 1, 30)

    def stream_pids() -> list[int]:
        pids = []
        for pid in child_pids(ctl.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline") as f:
                    if "event\0--loop" in f.read():
                        pids.append(pid)
            except OSError:
                pass
        return pids

    wait_until(lambda: len(stream_pids()) == 1, 10, 0.1, "the event stream process")
    old = stream_pids()[0]
    os.kill(old, signal.SIGKILL)  # as when libvirtd restarts under it
    wait_until(lambda: stream_pids() not in ([], [old]), 20, 0.1, "a new event stream")
    wait_until(
        lambda: ctl.log().count("lifecycle event stream connected") >= 2,
        10,
        0.1,
        "the reconnection to be logged",
    )
    virsh("destroy", "--domain", domain.name)
    # The safety poll comes every 600 s: a recovery well within that came from the event.
    assert events.wait_for(REVERTED, 2, config_of(ctl).state_poll_interval / 10), (
        "a destroy after the reconnection is recovered"
    )
