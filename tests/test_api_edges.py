"""Edges of the API that only the fuzzer had touched, checked by name: the history's
`since`, a guest's `severity`, Referrer-Policy and the CORS preflight."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import quote

import pytest
from checked_http import checked_client
from fake_virsh import FakeRunner

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import build_config
from vmcontroller.monitor import Monitor
from vmcontroller.params import SEVERITIES
from vmcontroller.security import SecuritySettings
from vmcontroller.store import Store
from vmcontroller.vm import Domain

STAFF = "staff-token-0123456789abcdef"
KIOSK = "http://kiosk.example"


@pytest.fixture
def make_client(openapi, check_response):
    monitors: list[Monitor] = []

    def make(**security):
        runner = FakeRunner()
        config = build_config(
            {"vm_name": runner.domain, "heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 0}
        )
        monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        monitor.start()
        assert monitor.wait_initialised(5)
        monitors.append(monitor)
        return (
            checked_client(
                create_app(monitor, __version__, SecuritySettings(**security)),
                openapi,
                check_response,
            ),
            runner,
            monitor,
        )

    yield make
    for monitor in monitors:
        monitor.stop()


@pytest.mark.parametrize("severity", ["urgent", "HIGH", "1", "n\u00f6rmal", "x" * 40])
def test_a_severity_outside_the_list_is_a_400_naming_the_allowed_ones(make_client, severity):
    client, runner, monitor = make_client()
    response = client.get(
        "/api/v1/revert/request", query_string={"reason": "player crashed", "severity": severity}
    )
    assert response.status_code == 400, response.json
    detail = response.json["detail"]
    assert detail.startswith("Invalid parameter: severity"), detail
    if len(severity) <= 32:  # a longer one is refused for its length first
        assert all(word in detail for word in SEVERITIES), detail
    assert monitor.store.events(triggers=["guest_request"]) == [], "nothing was queued"


@pytest.mark.parametrize(
    "body, kind",
    [
        ({"reason": 5}, "int"),
        ({"reason": ["a"]}, "list"),
        ({"reason": "player crashed", "severity": True}, "bool"),
    ],
)
def test_a_json_value_that_is_not_a_string_is_a_400_naming_its_type(make_client, body, kind):
    client, runner, monitor = make_client()
    response = client.post("/api/v1/revert/request", json=body)
    assert response.status_code == 400, response.json
    name = "severity" if "severity" in body else "reason"
    assert response.json["detail"] == f"Invalid parameter: {name} must be a string (got {kind})"
    assert monitor.store.events(triggers=["guest_request"]) == [], "nothing was queued"


@pytest.mark.parametrize("severity", SEVERITIES)
def test_each_listed_severity_is_accepted_and_recorded(make_client, severity):
    client, runner, monitor = make_client()
    response = client.post(
        "/api/v1/revert/request", data={"reason": "player crashed", "severity": severity}
    )
    assert response.status_code == 202, response.json
    assert response.json["details"]["reason"] == f"player crashed (severity {severity})"


def test_referrer_policy_is_no_referrer_on_every_kind_of_answer(make_client):
    client, _, _ = make_client(api_token=STAFF)
    answers = [
        client.get("/api/v1/status", headers={"Authorization": f"Bearer {STAFF}"}),
        client.get("/api/v1/status"),  # 401
        client.get("/nothing-here"),  # 404
        client.get("/api/v1/vm/stop", headers={"Sec-Fetch-Site": "cross-site"}),  # 403
        client.get("/docs"),
        client.get("/openapi.json"),
        client.get("/"),
    ]
    assert [a.status_code for a in answers] == [200, 401, 404, 403, 200, 200, 200]
    for answer in answers:
        assert answer.headers["Referrer-Policy"] == "no-referrer", answer.request.path


def test_a_cors_preflight_from_an_allowed_origin_needs_no_token_and_changes_nothing(make_client):
    client, runner, monitor = make_client(api_token=STAFF, cors_origins=(KIOSK,))
    calls = len(runner.calls)
    preflight = client.options(
        "/api/v1/vm/stop",
        headers={
            "Origin": KIOSK,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200 and preflight.data == b""
    assert preflight.headers["Access-Control-Allow-Origin"] == KIOSK
    assert preflight.headers["Vary"] == "Origin"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert runner.calls[calls:] == [] and monitor.status()["vm_is_running"] is True
    # The request the preflight clears still needs the token.
    refused = client.post("/api/v1/vm/stop", headers={"Origin": KIOSK})
    assert refused.status_code == 401
    allowed = client.post(
        "/api/v1/vm/stop", headers={"Origin": KIOSK, "Authorization": f"Bearer {STAFF}"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == KIOSK


def test_a_cors_preflight_from_another_origin_gets_no_allowance(make_client):
    client, runner, _ = make_client(cors_origins=(KIOSK,))
    calls = len(runner.calls)
    preflight = client.options(
        "/api/v1/vm/stop",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers
    assert runner.calls[calls:] == []


@pytest.mark.libvirt
def test_events_since_returns_only_what_happened_after_it(start_controller, events):
    controller, api = start_controller(heartbeat_timeout=60)
    assert events.wait_for("Started Snapshot", 1, 30)
    first = api.get("/api/v1/events", "/api/v1/events")["events"]
    assert first, "the start-up revert is recorded"
    boundary = max(datetime.fromisoformat(e["time"]) for e in first)
    api.post("/api/v1/revert/disable")
    api.post("/api/v1/revert/enable")
    everything = api.get("/api/v1/events", "/api/v1/events")["events"]
    later = [e for e in everything if datetime.fromisoformat(e["time"]) > boundary]
    assert [e["action"] for e in later] == ["enable_auto_revert", "disable_auto_revert"]
    just_after = boundary.timestamp() + 1e-3
    for since in (
        datetime.fromtimestamp(just_after, timezone.utc).isoformat(),
        f"{just_after:.3f}",
    ):
        got = api.get(f"/api/v1/events?since={quote(since)}", "/api/v1/events")["events"]
        assert [e["id"] for e in got] == [e["id"] for e in later], since
    assert api.get("/api/v1/events?since=0", "/api/v1/events")["events"] == everything
    bad = api.call("GET", "/api/v1/events?since=yesterday", "/api/v1/events", expect=400).json()
    assert "since must be an ISO 8601 time" in bad["detail"]
