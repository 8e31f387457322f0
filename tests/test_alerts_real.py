"""Notifications and the dead man's switch of a controller keeping a real guest.

The heartbeat guest (scripts/build-guest.sh) heartbeats every second. Receivers
are real and on loopback (tests/receivers.py): an HTTP receiver checking the
webhook's HMAC and taking pings, an SMTP server requiring STARTTLS and a login.
The first test runs the controller in this process; the second runs it as
`vmcontroller serve` processes, so that it can be killed with SIGKILL while a
message waits for a receiver that is down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import requests
from guest_env import GuestDomain, start_exhibit
from libvirt_env import free_port, virsh, wait_until
from receivers import PASSWORD, USER, HttpReceiver, start_smtp

from vmcontroller.store import Store
from vmcontroller.vocab import (
    ALERT_CRASH_RESTART,
    ALERT_GUARD_TRIPPED,
    ALERT_RESOLVED,
    VM_STOPPED,
)

pytestmark = pytest.mark.libvirt

TIMEOUT = GRACE = 5.0
SECRET = "the museum's webhook secret"
REPO = Path(__file__).resolve().parent.parent


def healthy(base: str, since: float = 0.0) -> bool:
    status = requests.get(f"{base}/api/v1/heartbeat/status", timeout=10).json()
    last = status["last_heartbeat"]
    return bool(status["is_healthy"]) and last is not None and _ts(last) > since


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_tripped_guard_is_one_webhook_and_one_mail_then_resolved_and_the_ping_stops(
    libvirt, guest_build, tmp_path, check_response, monkeypatch
):
    port = free_port()
    vm = GuestDomain("alerts", guest_build.path, port, hb_timeout=2).define()
    base = f"http://127.0.0.1:{port}"
    receiver = HttpReceiver(SECRET, port=free_port())  # down until the guard trips
    smtp = start_smtp(tmp_path, free_port())
    # The mail server's certificate is trusted as a site's own CA would be: OpenSSL's
    # default verify paths, which STARTTLS's default context loads, honour SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp.cert))
    controller = None
    try:
        controller = start_exhibit(
            vm,
            tmp_path / "state.db",
            TIMEOUT,
            GRACE,
            extra={
                "max_recoveries": 1,
                "notify_webhook_url": receiver.url + "/hook",
                "notify_webhook_secret": SECRET,
                "notify_email_to": ["technician@museum.example"],
                "notify_email_from": "vm@museum.example",
                "notify_smtp_host": "127.0.0.1",
                "notify_smtp_port": smtp.port,
                "notify_smtp_user": USER,
                "notify_smtp_password": PASSWORD,
                "notify_min_interval": 2,
                "notify_unhealthy_minutes": 60,
                "ping_url": receiver.url + "/ping",
                "ping_interval": 1,
            },
        )
        wait_until(lambda: healthy(base), 60, 0.2, "heartbeats with automatic revert on")

        # One recovery is allowed; the second destroy trips the guard.
        def reverted() -> bool:
            found = requests.get(f"{base}/api/v1/events?trigger={VM_STOPPED}", timeout=10)
            return any(e["outcome"] == "succeeded" for e in found.json()["events"])

        virsh("destroy", vm.name)
        wait_until(reverted, 90, 0.2, "the revert after a destroy")
        done = time.time()
        wait_until(lambda: healthy(base, done), 60, 0.2, "heartbeats after the revert")
        virsh("destroy", vm.name)

        def status() -> dict:
            response = requests.get(f"{base}/api/v1/status", timeout=10)
            check_response("/api/v1/status", "get", response.status_code, response.json())
            return response.json()

        wait_until(lambda: status()["recovery"]["guard"]["state"] == "failed", 60, 0.2, "trip")
        wait_until(lambda: smtp.mailbox.messages, 30, 0.2, "the e-mail of the trip")
        wait_until(
            lambda: status()["notifications"]["channels"]["webhook"]["last_error"],
            30,
            0.2,
            "the webhook's failure while its receiver is down",
        )
        # The webhook's receiver was down: it comes up, the message arrives on a retry.
        receiver.start()
        wait_until(lambda: receiver.posts, 30, 0.2, "the webhook of the trip, on a retry")
        [post] = receiver.posts
        assert post["kinds"] == [ALERT_GUARD_TRIPPED]
        assert receiver.refused == 0
        assert len(smtp.mailbox.messages) == 1
        assert b"guard tripped" in smtp.mailbox.messages[0]

        # The VM is down: no ping now (the receiver's silence is the alarm).
        pings = len(receiver.gets)
        quiet_until = time.time() + 3
        wait_until(lambda: time.time() > quiet_until, 10, 0.5, "three ping intervals")
        assert len(receiver.gets) == pings

        # Staff start it; once healthy, one "resolved" by each channel, and pings again.
        response = requests.post(f"{base}/api/v1/vm/start", timeout=120)
        assert response.status_code == 200, response.text
        wait_until(lambda: len(receiver.posts) == 2, 60, 0.2, "the webhook's resolved")
        wait_until(lambda: len(smtp.mailbox.messages) == 2, 30, 0.2, "the mail's resolved")
        assert receiver.posts[1]["kinds"] == [ALERT_RESOLVED]
        wait_until(lambda: len(receiver.gets) >= pings + 2, 30, 0.2, "pings while healthy")
        notifications = status()["notifications"]
        assert notifications["queued"] == 0
        assert notifications["channels"]["webhook"]["last_error"] is None
        assert notifications["ping"]["last_ping"] is not None
    finally:
        if controller is not None:
            controller.stop()
        receiver.stop()
        smtp.stop()
        vm.remove()


def serve(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "vmcontroller", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env=env,
    )


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def test_messages_wait_in_the_state_file_through_a_kill_and_arrive_once(
    libvirt, guest_build, tmp_path
):
    port = free_port()
    vm = GuestDomain("outbox", guest_build.path, port, hb_timeout=2).define()
    base = f"http://127.0.0.1:{port}"
    state = tmp_path / "state.db"
    log = tmp_path / "controller.log"
    receiver = HttpReceiver(SECRET, port=free_port())  # refuses connections until started
    settings = {
        "notify_webhook_url": receiver.url + "/hook",
        "notify_webhook_secret": SECRET,
        "notify_min_interval": 1,
    }
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "vm_name": vm.name,
                "api_host": "127.0.0.1",
                "api_port": port,
                "heartbeat_timeout": TIMEOUT,
                "vm_startup_heartbeat_delay": GRACE,
                "state_path": str(state),
                **settings,
            }
        )
    )
    processes: list[subprocess.Popen] = []
    try:
        start_exhibit(vm, state, TIMEOUT, GRACE, extra=settings).stop()

        # A controller killed while healthy: the next one tells of the crash, and its
        # message waits in the state file while the receiver refuses connections.
        processes.append(serve(config, log))
        wait_until(lambda: _answers(base) and healthy(base), 60, 0.2, "the first controller")
        kill(processes.pop())
        processes.append(serve(config, log))
        wait_until(lambda: _answers(base), 60, 0.2, "the second controller")

        def failing() -> bool:
            found = requests.get(f"{base}/api/v1/status", timeout=10).json()["notifications"]
            return found["queued"] > 0 and found["channels"]["webhook"]["last_error"]

        wait_until(failing, 60, 0.2, "a message waiting for the receiver")
        kill(processes.pop())
        store = Store(state)
        try:
            waiting = {data["id"] for _, _, _, data in store.outbox()}
        finally:
            store.close()
        assert waiting

        # The receiver is up; a third controller delivers what waited, and its own news.
        receiver.start()
        processes.append(serve(config, log))
        wait_until(lambda: waiting <= {p["id"] for p in receiver.posts}, 60, 0.2, "delivery")
        wait_until(
            lambda: sum(ALERT_RESOLVED in p["kinds"] for p in receiver.posts) >= 2,
            60,
            0.2,
            "the third controller's crash message and its resolution",
        )
        wait_until(
            lambda: (
                requests.get(f"{base}/api/v1/status", timeout=10).json()["notifications"]["queued"]
                == 0
            ),
            30,
            0.2,
            "an empty outbox",
        )
        counts = Counter(p["id"] for p in receiver.posts)
        assert set(counts.values()) == {1}, counts
        crashes = [p for p in receiver.posts if ALERT_CRASH_RESTART in p["kinds"]]
        assert len(crashes) == 2  # the second controller's (it waited) and the third's
        assert receiver.refused == 0
    finally:
        for process in processes:
            kill(process)
        receiver.stop()
        vm.remove()


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/api/v1/status", timeout=5).status_code == 200
    except requests.RequestException:
        return False
