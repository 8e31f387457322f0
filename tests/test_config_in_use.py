"""Configuration keys that change what a running controller does, proven on a running one.

test_config.py proves that every key is read and validated; these tests prove
that the keys nobody had watched at work (api_threads, post_revert_timeout,
guest_token_file, history_max_*, a libvirt_uri other than the default) reach
the part of the controller that uses them, against the real libvirtd.
"""

from __future__ import annotations

import socket

import pytest
from libvirt_env import wait_until
from waits import pid_alive

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"
GUEST_TOKEN = "guest-token-from-a-file-0123456789"


def test_api_threads_and_api_stream_clients_size_the_http_worker_pool(start_controller):
    controller, api = start_controller(api_threads=5, api_stream_clients=3)
    api.get("/api/v1/status")
    dispatcher = controller.http.task_dispatcher
    assert len(dispatcher.threads) == 5, "no stream: api_threads alone"
    assert controller.hub.max_clients == 3
    # Each event stream holds a thread of its own, added while it lasts, so that
    # api_threads stay free for the rest.
    streams = [
        socket.create_connection(("127.0.0.1", controller.port), timeout=5) for _ in range(2)
    ]
    for conn in streams:
        conn.sendall(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    wait_until(lambda: len(dispatcher.threads) - dispatcher.stop_count == 7, 5, message="two more")
    for conn in streams:
        conn.close()
    # A stream learns that its client left at its next write: a heartbeat event.
    wait_until(
        lambda: api.post("/api/v1/heartbeat") and controller.hub.clients == 0,
        10,
        message="streams end",
    )
    wait_until(lambda: len(dispatcher.threads) == 5, 10, message="the pool shrinks back")


def test_history_max_events_and_age_from_the_config_prune_the_history(start_controller):
    controller, api = start_controller(history_max_events=100, history_max_age_days=1)
    old = controller.store.begin(controller.config.vm_name, "api", "stop", "long ago", when=0.0)
    controller.store.finish(old, "succeeded", 0.1)
    for i in range(150):
        controller.store.record(controller.config.vm_name, "api", "stop", f"n{i}", "succeeded")
    controller.store.prune()
    left = api.get("/api/v1/events?limit=1000", "/api/v1/events")["events"]
    assert len(left) == 100, "history_max_events"
    assert "long ago" not in [e["reason"] for e in left], "history_max_age_days"
    assert left[0]["reason"] == "n149"


def test_guest_token_file_from_the_config_guards_the_heartbeat(spawn_controller, tmp_path):
    secret = tmp_path / "guest-token"
    secret.write_text(GUEST_TOKEN + "\n")
    secret.chmod(0o600)
    ctl = spawn_controller(guest_token_file=str(secret), heartbeat_timeout=60)
    refused = ctl.api.call("GET", "/api/v1/heartbeat", "/api/v1/heartbeat", expect=401).json()
    assert refused["detail"].startswith("Unauthorized"), refused
    ctl.api.call(
        "GET",
        "/api/v1/heartbeat",
        "/api/v1/heartbeat",
        expect=401,
        headers={"Authorization": "Bearer wrong-token-0123456789"},
    )
    body = ctl.api.get("/api/v1/heartbeat", headers={"Authorization": f"Bearer {GUEST_TOKEN}"})
    assert body["message"] == "Heartbeat received"
    assert GUEST_TOKEN not in ctl.log(), "the token read from its file is never logged"


def test_post_revert_timeout_from_the_config_kills_a_command_that_outlives_it(
    start_controller, domain, events, tmp_path, caplog
):
    pidfile = tmp_path / "hook.pid"
    with caplog.at_level("INFO", logger="vmcontroller.monitor"):
        controller, api = start_controller(
            heartbeat_timeout=60,
            post_revert_timeout=1,
            post_revert_command=["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"],
        )
        assert events.wait_for(REVERTED, 1, 30)
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip(),
            30,
            message="the command to start after the start-up revert",
        )
        pid = int(pidfile.read_text())
        # Without the timeout it would sleep 600 s: waited for well short of that.
        wait_until(
            lambda: not pid_alive(pid),
            controller.config.post_revert_timeout + 30,
            message="the command to be killed at post_revert_timeout",
        )
        wait_until(
            lambda: any("killed after 1 s" in r.getMessage() for r in caplog.records),
            10,
            message="the kill to be logged",
        )


def test_libvirt_uri_spelled_another_way_reaches_the_same_libvirtd(
    start_controller, domain, events
):
    # qemu+unix:// names the transport the default qemu:///system uses implicitly.
    controller, api = start_controller(libvirt_uri="qemu+unix:///system")
    assert events.wait_for(REVERTED, 1, 30), "the VM is reverted through that URI"
    status = api.get("/api/v1/status")
    assert status["vm_state"] == "running" and status["snapshot_exists"] is True


def test_an_unreachable_libvirt_uri_is_reported_with_virshs_message(
    start_controller, domain, tmp_path
):
    socket = tmp_path / "no-libvirtd.sock"
    controller, api = start_controller(
        libvirt_uri=f"qemu+unix:///system?socket={socket}", virsh_timeout=10
    )
    status = api.get("/api/v1/status")
    assert status["vm_state"] == "unknown" and status["vm_is_running"] is False
    assert "Failed to connect socket" in status["vm_state_detail"], status
    assert str(socket) in status["vm_state_detail"], "the message names what was tried"
    body = api.call("POST", "/api/v1/vm/restart", "/api/v1/vm/restart", expect=500).json()
    assert body["detail"].startswith("Error restarting VM: ") and str(socket) in body["detail"]
