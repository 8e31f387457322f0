"""GET /api/v1/events/stream: Server-Sent Events of status, heartbeats and history.

First what the hub decides, as pure functions (what a look at the monitor
calls for, the resume cursor); then the route on a Monitor over the fake
virsh (refusals, the bound, a HEAD that takes no place); then a real
controller on the heartbeating test guest, read with http.client and raw
sockets as a dashboard would: status on connect, coalesced heartbeats,
``virsh destroy`` appearing live in the history, a reconnect with
Last-Event-ID that loses nothing, keep-alive, 503 past the bound, a client
that never reads cut off while heartbeats go on, and the token rules.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from fake_virsh import FakeRunner
from libvirt_env import free_port, virsh, wait_until

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.errors import NotInitialised
from vmcontroller.monitor import Monitor
from vmcontroller.store import Event, Store
from vmcontroller.stream import (
    CHANGEABLE_FOR,
    Hub,
    Snapshot,
    Subscription,
    cursor,
    fan_out_gap,
    history_events,
    resume_floor,
    sse,
    what_to_send,
    without_age,
)
from vmcontroller.vm import Domain
from vmcontroller.vocab import EVENTS_STREAM_PATH

QUIET = {"heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 60}
STATUS = {
    "vm_name": "eden",
    "vm_state": "running",
    "heartbeat": {
        "enabled": True,
        "last_heartbeat": "2026-01-01T10:00:00+00:00",
        "seconds_since_last": 0.4,
        "is_healthy": True,
        "timeout": 10,
    },
    "auto_revert_enabled": True,
}


def snapshot(beats: int = 0, **changes: Any) -> Snapshot:
    status = json.loads(json.dumps(STATUS))
    heartbeat = changes.pop("heartbeat", {})
    status.update(changes)
    status["heartbeat"].update(heartbeat)
    return Snapshot(status, status["heartbeat"], beats)


# ------------------------------------------------------------------ what a look calls for


def test_the_first_look_sends_the_status_and_no_heartbeat():
    assert what_to_send(None, snapshot()) == ["status"]


def test_the_heartbeat_age_alone_is_no_status_change_but_a_new_heartbeat_is_an_event():
    before = snapshot(beats=5)
    later = snapshot(
        beats=6, heartbeat={"seconds_since_last": 0.1, "last_heartbeat": "2026-01-01T10:00:01"}
    )
    assert what_to_send(before, later) == ["heartbeat"]
    assert what_to_send(before, snapshot(beats=5, heartbeat={"seconds_since_last": 3.0})) == []


@pytest.mark.parametrize(
    "change",
    [
        {"vm_state": "shut off"},
        {"auto_revert_enabled": False},
        {"heartbeat": {"is_healthy": False}},
        {"stopped_by_staff": True},
    ],
)
def test_anything_else_that_changes_is_a_status_event(change):
    assert what_to_send(snapshot(beats=1), snapshot(beats=1, **change)) == ["status"]
    assert what_to_send(snapshot(beats=1), snapshot(beats=2, **change)) == ["status", "heartbeat"]


def test_without_age_leaves_the_status_itself_alone():
    status = snapshot().status
    assert "seconds_since_last" not in without_age(status)["heartbeat"]
    assert status["heartbeat"]["seconds_since_last"] == 0.4


# ------------------------------------------------------------------ the resume cursor

NOW = 1_000_000.0


def row(id: int, outcome: str = "succeeded", age: float = 3600.0) -> Event:
    return Event(id, NOW - age, "eden", "api", "restart", "r", outcome, 1.0, None)


def test_the_cursor_is_the_oldest_row_that_may_still_change():
    rows = [row(9), row(8, "started"), row(7), row(6, "refused", age=10.0), row(5)]
    assert resume_floor(rows, NOW) == 6
    assert cursor(9, 6) == 6 and cursor(5, 6) == 5
    assert resume_floor([row(3), row(2)], NOW) is None and cursor(3, None) == 3
    # A refused request counts repeats while it is young; then it is final.
    assert resume_floor([row(6, "refused", age=CHANGEABLE_FOR + 1)], NOW) is None


def test_a_replay_is_every_row_from_the_cursor_oldest_first_each_with_its_cursor():
    rows = [row(9), row(8, "started"), row(7), row(6)]
    chunks = history_events(rows, 7, NOW)
    assert [c.decode().split("\n")[0] for c in chunks] == ["id: 7", "id: 8", "id: 8"]
    data = json.loads(chunks[0].decode().split("data: ")[1])
    assert data == row(7).as_json()


def test_an_event_is_one_data_line_of_compact_json():
    assert sse("status", {"a": [1, "x\ny"]}, 4) == (
        b'id: 4\nevent: status\ndata: {"a":[1,"x\\ny"]}\n\n'
    )


def test_a_client_whose_queue_fills_is_cut_off_and_the_hub_never_waits():
    client = Subscription(2)
    for n in range(3):
        client.offer(b"%d" % n)
    assert client.ended is not None and "2 events" in client.ended
    assert client.take(0) == []


def test_a_fan_out_to_many_clients_wakes_them_one_after_another_within_the_spread():
    assert fan_out_gap(0) == fan_out_gap(1) == 0.0
    assert fan_out_gap(200, spread=0.25) == pytest.approx(0.25 / 200)
    assert fan_out_gap(3, spread=0.25) == 0.002, "a few clients: at most 2 ms apart"


class CountingSource:
    """A monitor that counts how often the hub reads it."""

    heartbeats_received = 0

    def __init__(self) -> None:
        self.looks = 0

    def status(self) -> dict[str, Any]:
        self.looks += 1
        return json.loads(json.dumps(STATUS))

    def heartbeat_status(self) -> dict[str, Any]:
        return self.status()["heartbeat"]

    def history(self, limit: int = 100, since: Any = None, triggers: Any = ()) -> list[Event]:
        return [row(1)]


def test_a_hub_without_clients_does_not_read_the_monitor_and_tells_the_pool_its_clients():
    source, sizes = CountingSource(), []
    hub = Hub(source, 2, tick=0.01, on_clients=sizes.append)
    hub.start()
    try:
        wait_until(lambda: hub._top_id is not None, 5, message="the hub primes its history")
        time.sleep(0.1)  # ten ticks with nobody listening (a negative check: no deadline)
        assert source.looks == 0, "no client, no look at the monitor"
        client = hub.subscribe()
        assert sizes == [1]
        wait_until(lambda: client.take(0.05), 5, message="the first look's status event")
        hub.unsubscribe(client)
        hub.unsubscribe(client)  # twice: told once
        assert sizes == [1, 0]
    finally:
        hub.stop()


class StartingSource:
    """A monitor that is still starting, then answers; or one whose reads fail."""

    def __init__(self, failure: Exception):
        self.failure: Exception | None = failure
        self.heartbeats_received = 0
        self.refused = 0

    def status(self) -> dict[str, Any]:
        if self.failure is not None:
            self.refused += 1
            raise self.failure
        return json.loads(json.dumps(STATUS))

    def heartbeat_status(self) -> dict[str, Any]:
        return self.status()["heartbeat"]

    def history(self, limit: int = 100, since: Any = None, triggers: Any = ()) -> list[Event]:
        if self.failure is not None:
            raise self.failure
        return [row(1)]


@pytest.mark.parametrize("failure", [NotInitialised("starting"), RuntimeError("bug")])
def test_the_hub_waits_for_a_starting_monitor_and_outlives_a_failing_read(failure, caplog):
    source = StartingSource(failure)
    hub = Hub(source, 1, tick=0.01)
    client = hub.subscribe()
    hub.start()
    hub.start()  # already running: nothing more
    try:
        wait_until(lambda: source.refused >= 2, 5, message="the hub to ask in vain")
        if isinstance(failure, RuntimeError):
            assert "failed to read the controller" in caplog.text
        source.failure = None
        wait_until(lambda: client.take(0.05) != [], 5, message="the status once it answers")
    finally:
        hub.stop()
    client.offer(b"late")  # a stream that has ended takes nothing more
    assert client.take(0) == []


# ------------------------------------------------------------------ the route, fake virsh


@pytest.fixture
def make_stream_app():
    monitors: list[Monitor] = []

    def make(start: bool = True, **hub_options: Any):
        runner = FakeRunner()
        config = build_config({"vm_name": runner.domain, **QUIET})
        monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        if start:
            monitor.on_events_connection(True)
            monitor.start()
            monitors.append(monitor)
            assert monitor.wait_initialised(5)
        hub = Hub(monitor, **{"max_clients": 2, **hub_options})
        monitor.add_history_listener(hub.on_history)  # as server.Controller wires it
        app = create_app(monitor, __version__, stream=hub)
        return app.test_client(), hub, monitor

    yield make
    for monitor in monitors:
        monitor.stop()


def test_the_stream_starts_with_retry_and_the_status(make_stream_app):
    client, hub, monitor = make_stream_app()
    response = client.get(EVENTS_STREAM_PATH, buffered=False)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    first = next(iter(response.response)).decode()
    assert first.startswith("retry: 3000\n\nevent: status\ndata: ")
    assert json.loads(first.split("data: ")[1])["vm_name"] == monitor.vm_name
    assert hub.clients == 1
    response.close()
    assert hub.clients == 0, "a closed stream gives its place back"


def test_past_the_bound_a_stream_is_refused_with_a_json_503(make_stream_app):
    client, hub, _ = make_stream_app()
    held = [client.get(EVENTS_STREAM_PATH, buffered=False) for _ in range(2)]
    refused = client.get(EVENTS_STREAM_PATH)
    assert refused.status_code == 503
    assert "at most 2" in refused.get_json()["detail"]
    for response in held:
        response.close()
    assert client.get(EVENTS_STREAM_PATH, buffered=False).status_code == 200


def test_a_stopped_hub_ends_its_streams_and_lets_no_new_one_in(make_stream_app):
    client, hub, _ = make_stream_app()
    response = client.get(EVENTS_STREAM_PATH, buffered=False)
    chunks = iter(response.response)
    next(chunks)
    stopper = threading.Timer(0.1, hub.stop)  # while the stream waits for its next event
    stopper.start()
    assert list(chunks) == [], "the stream ends: its thread is free for the shutdown"
    stopper.join()
    refused = client.get(EVENTS_STREAM_PATH)
    assert refused.status_code == 503 and "stopping" in refused.get_json()["detail"]


def test_a_head_takes_no_place_and_a_bad_last_event_id_is_a_400(make_stream_app):
    client, hub, _ = make_stream_app()
    head = client.head(EVENTS_STREAM_PATH)
    assert head.status_code == 200 and head.headers["Content-Type"] == "text/event-stream"
    assert hub.clients == 0
    for bad in ("-1", "x", "１", "1.5", "9" * 19):
        answer = client.get(EVENTS_STREAM_PATH, headers={"Last-Event-ID": bad})
        assert answer.status_code == 400, bad
        assert "Last-Event-ID" in answer.get_json()["detail"]
    assert hub.clients == 0


def test_before_the_monitor_has_started_the_stream_is_a_503_and_holds_no_place(make_stream_app):
    client, hub, _ = make_stream_app(start=False)
    answer = client.get(EVENTS_STREAM_PATH)
    assert answer.status_code == 503 and answer.get_json()["detail"]
    assert hub.clients == 0


def test_the_hub_sends_history_rows_as_the_history_route_shows_them(make_stream_app):
    client, hub, monitor = make_stream_app(tick=0.05, keep_alive=0.05)
    hub.start()
    try:
        wait_until(lambda: hub._top_id is not None, 10, message="the hub's first read")
        response = client.get(EVENTS_STREAM_PATH, buffered=False)
        chunks = iter(response.response)
        assert client.post("/api/v1/vm/restart").status_code == 200
        history = client.get("/api/v1/events").get_json()["events"]
        restart = next(e for e in history if e["trigger"] == "api")
        seen: list[dict[str, Any]] = []

        def finished_row_seen() -> bool:
            for line in next(chunks).decode().splitlines():
                if line.startswith("data: ") and '"action"' in line:
                    seen.append(json.loads(line[6:]))
            return restart in seen

        wait_until(finished_row_seen, 10, 0, message="the finished restart on the stream")
        # The fake restart is over at once: its begun form may be folded into the finished one.
        assert [r for r in seen if r["id"] == restart["id"]][-1] == restart
        response.close()
    finally:
        hub.stop()


# ------------------------------------------------------------------ a real controller


@dataclass
class Message:
    event: str | None = None
    id: str | None = None
    data: Any = None
    comment: str | None = None
    at: float = field(default_factory=time.monotonic)


class Reader:
    """An SSE client over http.client, as a dashboard's fetch() reader would be."""

    def __init__(self, port: int, headers: dict[str, str] | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", EVENTS_STREAM_PATH, headers=headers or {})
        self.response = self.conn.getresponse()
        self.retry: str | None = None
        self.seen: list[Message] = []

    def next(self) -> Message:
        message = Message()
        while True:
            line = self.response.readline().decode()
            assert line, "the server ended the stream"
            line = line.rstrip("\n")
            if not line:
                if message.event or message.comment:
                    message.at = time.monotonic()
                    self.seen.append(message)
                    return message
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                message.comment = value
            elif name == "retry":
                self.retry = value
            elif name == "event":
                message.event = value
            elif name == "id":
                message.id = value
            elif name == "data":
                message.data = json.loads(value)

    def until(self, predicate, timeout: float, what: str) -> Message:
        found: list[Message] = []

        def seen() -> bool:
            message = self.next()
            if predicate(message):
                found.append(message)
                return True
            return False

        wait_until(seen, timeout, 0, message=what)
        return found[0]

    def history(self) -> list[Message]:
        return [m for m in self.seen if m.event == "history"]

    def close(self) -> None:
        self.conn.close()


def latest_rows(*readers: Reader) -> dict[int, dict[str, Any]]:
    """The client's view of the history: the last version of each row, by id."""
    rows: dict[int, dict[str, Any]] = {}
    for reader in readers:
        for message in reader.history():
            rows[message.data["id"]] = message.data
    return rows


@pytest.mark.libvirt
def test_a_real_stream_follows_a_guest_and_resumes_without_losing_a_row(
    libvirt, guest_build, tmp_path, caplog
):
    from guest_env import GuestDomain, start_exhibit

    port = free_port()
    vm = GuestDomain("sse", guest_build.path, port, hb_timeout=2).define()
    controller = None
    readers: list[Reader] = []
    raw: socket.socket | None = None
    base = f"http://127.0.0.1:{port}"
    try:
        controller = start_exhibit(vm, tmp_path / "state.db", 10.0, 10.0)
        hub = controller.hub
        hub.keep_alive = 0.3  # the hub's constructor default is 15 s

        # Status on connect, exactly what GET /status says but for the heartbeat's age:
        # compared when GET /status says the same just before and just after the connect
        # (right after start the VM may still pass through 'paused' or the grace end).
        def status() -> dict[str, Any]:
            return without_age(requests.get(f"{base}/api/v1/status", timeout=10).json())

        deadline = time.monotonic() + 30
        while True:
            before = status()
            first = Reader(port)
            readers.append(first)
            opening = first.next()
            if before == status() or time.monotonic() > deadline:
                break
            first.close()
        assert first.retry == "3000"
        assert opening.event == "status" and opening.id is None
        assert without_age(opening.data) == before

        # Heartbeats, coalesced: the guest beats every second, one event a second at most.
        began = time.monotonic()
        first.until(lambda m: m.event == "heartbeat", 10, "a heartbeat event")
        beats = [first.until(lambda m: m.event == "heartbeat", 10, "heartbeats") for _ in range(4)]
        assert set(beats[-1].data) == set(
            requests.get(f"{base}/api/v1/heartbeat/status", timeout=10).json()
        )
        heartbeat_events = [m for m in first.seen if m.event == "heartbeat"]
        assert len(heartbeat_events) <= (time.monotonic() - began) / hub.tick + 1
        assert any(m.comment == "keep-alive" for m in first.seen), "keep-alive comments"

        # virsh destroy: the revert appears live, begun then finished, with a resume id.
        virsh("destroy", "--domain", vm.name)
        started = first.until(
            lambda m: m.event == "history" and m.data["outcome"] == "started", 60, "begun"
        )
        assert started.data["trigger"] in ("vm_stopped", "vm_crashed")
        first.until(
            lambda m: (
                m.event == "history"
                and m.data["id"] == started.data["id"]
                and m.data["outcome"] != "started"
            ),
            120,
            "the revert finished",
        )
        resume_id = first.history()[-1].id
        assert resume_id is not None and resume_id.isdigit()
        first.close()

        # Gone while staff restart the VM; back with Last-Event-ID: nothing is missing.
        seen_before = max(latest_rows(first))
        restart = requests.post(f"{base}/api/v1/vm/restart", timeout=120)
        assert restart.status_code == 200, restart.text
        second = Reader(port, {"Last-Event-ID": resume_id})
        readers.append(second)
        assert second.next().event == "status"
        history = requests.get(f"{base}/api/v1/events?limit=1000", timeout=10).json()["events"]
        missed = [e for e in history if e["id"] > seen_before]
        assert missed and any(e["trigger"] == "api" for e in missed)

        def nothing_missing() -> bool:
            rows = latest_rows(first, second)
            if all(rows.get(e["id"]) == e for e in history if e["id"] >= int(resume_id)):
                return True
            second.next()
            return False

        wait_until(nothing_missing, 30, 0, message="every missed row replayed")

        # The bound: one more stream than api_stream_clients is refused.
        hub.max_clients = hub.clients
        refused = requests.get(f"{base}{EVENTS_STREAM_PATH}", timeout=10)
        assert refused.status_code == 503 and "at most" in refused.json()["detail"]
        hub.max_clients = 32

        # A client that never reads: cut off, while the guest's heartbeats are answered.
        caplog.set_level(logging.INFO, logger="vmcontroller.stream")
        hub.keep_alive = 0.001
        hub.unsent_max = 32 * 1024
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        raw.connect(("127.0.0.1", port))
        raw.sendall(f"GET {EVENTS_STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        beats_before = controller.monitor.heartbeats_received
        wait_until(lambda: "unread" in caplog.text, 120, 0.2, message="the non-reader cut off")
        wait_until(
            lambda: controller.monitor.heartbeats_received >= beats_before + 2,
            30,
            message="heartbeats answered meanwhile",
        )
        assert requests.get(f"{base}/api/v1/heartbeat", timeout=10).status_code == 200
    finally:
        for reader in readers:
            reader.close()
        if raw is not None:
            raw.close()
        if controller is not None:
            controller.stop()
        vm.remove()


@pytest.mark.libvirt
def test_the_stream_is_guarded_like_status(start_controller):
    staff, guest = "staff-token-0123456789abcdef", "guest-token-0123456789abcdef"
    controller, api = start_controller(api_token=staff, guest_token=guest)
    url = f"{api.base}{EVENTS_STREAM_PATH}"
    for headers in ({}, {"Authorization": f"Bearer {guest}"}):
        answer = requests.get(url, headers=headers, timeout=10)
        # No token: 401; the guest token, known but not enough: 403 (as for status).
        assert answer.status_code == (403 if headers else 401), headers
        assert "staff token" in answer.json()["detail"]
    assert controller.hub.clients == 0
    reader = Reader(controller.port, {"Authorization": f"Bearer {staff}"})
    try:
        assert reader.next().event == "status"
        assert controller.hub.clients == 1
    finally:
        reader.close()


def test_unsent_bytes_of_a_closed_socket_is_what_waitress_holds():
    """A client gone between two writes: its socket answers no more, waitress's buffer counts."""
    from types import SimpleNamespace

    from vmcontroller.server import unsent_bytes

    closed = socket.socket()
    closed.close()
    channel = SimpleNamespace(total_outbufs_len=1234, socket=closed)
    assert unsent_bytes(channel) == 1234  # type: ignore[arg-type]
