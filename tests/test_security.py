"""Only staff change the exhibition, whatever the guest or the network sends.

Fast tests through Flask's test client over the fake runner, then the same
gate on a real server over a real VM: a page in the guest's browser (a
cross-site GET with browser headers) changes nothing in libvirt.
"""

from __future__ import annotations

import logging
import re
import socket

import pytest
from checked_http import checked_client, checked_session
from fake_virsh import FakeRunner
from libvirt_env import virsh, wait_until

from vmcontroller import __version__
from vmcontroller.app import create_app
from vmcontroller.config import ConfigError, build_config
from vmcontroller.monitor import Monitor
from vmcontroller.security import READ_ONLY_PATHS, SecuritySettings
from vmcontroller.store import Store
from vmcontroller.vm import Domain

STAFF = "staff-token-0123456789abcdef"
GUEST = "guest-token-0123456789abcdef"
QUIET = {"heartbeat_timeout": 60, "vm_startup_heartbeat_delay": 60}

# What an <img src="http://host:8000/api/v1/snapshot/delete/ready"> in a page
# opened by a modern browser sends (old browsers send no Sec-Fetch-* at all).
BROWSER_IMG = {
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36",
    "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "no-cors",
    "Sec-Fetch-Dest": "image",
    "Referer": "http://old-net-art.example/",
}


@pytest.fixture
def make_client(openapi, check_response):
    monitors: list[Monitor] = []

    def make(runner: FakeRunner | None = None, **security):
        runner = runner or FakeRunner()
        config = build_config({"vm_name": runner.domain, **QUIET})
        monitor = Monitor(Domain(runner, runner.domain, "ready"), config, Store(":memory:"))
        runner.listener = monitor.on_lifecycle_event
        monitor.start()
        assert monitor.wait_initialised(5)
        monitors.append(monitor)
        app = create_app(monitor, __version__, SecuritySettings(**security))
        return checked_client(app, openapi, check_response), runner

    yield make
    for monitor in monitors:
        monitor.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_configured_means_the_api_reference_behaviour(make_client):
    client, _ = make_client()
    assert client.get("/api/v1/status").status_code == 200
    assert client.post("/api/v1/revert/disable").status_code == 200
    assert client.get("/api/v1/heartbeat").status_code == 200


def test_staff_token_guards_everything_that_changes_or_reveals_state(make_client):
    client, runner = make_client(api_token=STAFF)
    for method, path in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/snapshots"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/heartbeat/status"),
        ("POST", "/api/v1/vm/stop"),
        ("GET", "/api/v1/snapshot/delete/ready"),
        ("DELETE", "/api/v1/snapshot/ready"),
        ("GET", "/api/v1/revert/disable"),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == 401, (method, path)
        assert response.json["detail"].startswith("Unauthorized: this endpoint needs the staff")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="exhibition-vm-controller"'
        wrong = client.open(path, method=method, headers=bearer(STAFF[:-1] + "X"))
        assert wrong.status_code == 401
    assert runner.snapshots == ["ready"] and runner.state == "running"
    assert client.get("/api/v1/status", headers=bearer(STAFF)).status_code == 200
    assert client.get(f"/api/v1/status?token={STAFF}").status_code == 200
    # The guest's endpoints stay open while no guest token is set.
    assert client.get("/api/v1/heartbeat").status_code == 200
    # The landing document and the docs never need a token.
    for path in ("/", "/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_guest_token_guards_the_guest_endpoints_and_opens_nothing_else(make_client):
    client, _ = make_client(api_token=STAFF, guest_token=GUEST)
    assert client.get("/api/v1/heartbeat").status_code == 401
    assert client.get("/api/v1/heartbeat", headers=bearer(GUEST)).status_code == 200
    assert client.get(f"/api/v1/heartbeat?token={GUEST}&seq=3").status_code == 200
    assert client.get("/api/v1/heartbeat", headers=bearer(STAFF)).status_code == 200
    assert client.get(f"/api/v1/idle/reset?token={GUEST}").status_code in (202, 409)
    # Known but not enough: 403, so that the dashboard can say so (tests/test_dashboard.py).
    assert client.get("/api/v1/status", headers=bearer(GUEST)).status_code == 403
    assert client.get(f"/api/v1/vm/stop?token={GUEST}").status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        BROWSER_IMG,
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://old-net-art.example"},
        {"Origin": "null"},
    ],
    ids=["img tag", "same-site", "foreign origin", "null origin"],
)
def test_cross_site_requests_cannot_change_state_even_with_the_token(make_client, headers):
    client, runner = make_client(api_token=STAFF)
    for method, path in [
        ("GET", f"/api/v1/snapshot/delete/ready?token={STAFF}"),
        ("GET", f"/api/v1/vm/stop?token={STAFF}"),
        ("POST", f"/api/v1/snapshot/create?snapshot_name=x&token={STAFF}"),
        ("GET", f"/api/v1/revert/disable?token={STAFF}"),
        ("GET", f"/api/v1/heartbeat?token={STAFF}"),
    ]:
        response = client.open(path, method=method, headers=headers)
        assert response.status_code == 403, (path, response.json)
        assert response.json["detail"].startswith("Cross-site request refused")
    assert runner.snapshots == ["ready"] and runner.state == "running"
    assert not [
        c for c in runner.calls if c[0] in ("snapshot-delete", "destroy", "snapshot-create-as")
    ]


CHANGES = ("snapshot-delete", "destroy", "snapshot-create-as", "snapshot-revert", "start")


def state_changing_get_paths(client) -> list[str]:
    """Every GET route under the API that is not read-only, from the app's own url_map."""
    paths = []
    for rule in client.application.url_map.iter_rules():
        path = re.sub(r"<[^<>]+>", "ready", rule.rule)
        if "GET" in rule.methods and path.startswith("/api/") and path not in READ_ONLY_PATHS:
            paths.append(path)
    return sorted(paths)


def test_cross_site_head_is_judged_like_get(make_client):
    """Flask serves HEAD with the GET view: the view runs, only the body is dropped."""
    client, runner = make_client(api_token=STAFF)
    paths = state_changing_get_paths(client)
    assert {"/api/v1/vm/stop", "/api/v1/snapshot/delete/ready"} <= set(paths)
    before = len(runner.calls)
    for path in paths:
        for headers in (BROWSER_IMG, {"Origin": "http://old-net-art.example"}):
            response = client.head(f"{path}?token={STAFF}", headers=headers)
            assert response.status_code == 403, (path, headers)
    assert runner.snapshots == ["ready"] and runner.state == "running"
    assert not [c for c in runner.calls[before:] if c[0] in CHANGES]
    assert client.get("/api/v1/status", headers=bearer(STAFF)).json["auto_revert_enabled"]
    # Not cross-site, HEAD does what GET does (as before).
    assert client.head("/api/v1/revert/disable", headers=bearer(STAFF)).status_code == 200
    assert not client.get("/api/v1/status", headers=bearer(STAFF)).json["auto_revert_enabled"]


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8000",
    "EVIL.example.",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "[::1].evil.example",
    "::1",
    "[::1",
    "127.0.0.1:x",
    "127.0.0.1:8000:80",
    "a b",
    "",
    "evil.example@127.0.0.1",
    "0x7f.1",
    # brackets hold IPv6 literals only, never a name or an IPv4 address
    "[evil.example]",
    "[127.0.0.1]:8000",
]


@pytest.mark.parametrize("token", [None, STAFF], ids=["no token", "token"])
def test_a_host_header_that_names_another_host_is_refused_and_changes_nothing(make_client, token):
    """DNS rebinding: a page on evil.example, its name pointed at this machine, is same-origin
    to the browser; only the Host header still carries the attacker's name."""
    security = {"api_token": token} if token else {}
    client, runner = make_client(**security)
    query = f"?token={token}" if token else ""
    before = len(runner.calls)
    for host in FOREIGN_HOSTS:
        for method, path in [
            ("GET", "/api/v1/vm/stop"),
            ("POST", "/api/v1/revert/disable"),
            ("HEAD", "/api/v1/snapshot/delete/ready"),
            ("DELETE", "/api/v1/snapshot/ready"),
            ("GET", "/api/v1/status"),
            ("GET", "/api/v1/events"),
            ("GET", "/"),
            ("GET", "/openapi.json"),
        ]:
            response = client.open(path + query, method=method, headers={"Host": host})
            assert response.status_code == 400, (host, method, path, response.status_code)
            assert response.mimetype == "application/json"
            if method != "HEAD":
                detail = response.json["detail"]
                assert detail.startswith(f"Host {host!r} is not a name of this controller"), detail
                assert "allowed_hosts" in detail
    assert runner.snapshots == ["ready"] and runner.state == "running"
    assert not [c for c in runner.calls[before:] if c[0] in CHANGES]
    status = client.get("/api/v1/status" + query)
    assert status.status_code == 200 and status.json["auto_revert_enabled"]


def test_ip_literals_localhost_and_the_machines_own_names_are_accepted(make_client):
    client, _ = make_client()
    hosts = [
        "127.0.0.1",
        "127.0.0.1:8000",
        "10.0.2.2:8000",
        "192.168.122.1",
        "[::1]",
        "[::1]:8000",
        "[fe80::1]:80",
        "[::ffff:127.0.0.1]:8000",
        "localhost",
        "localhost:8000",
        "LocalHost.",
        socket.gethostname(),
        f"{socket.getfqdn()}:8000",
    ]
    for host in hosts:
        assert client.get("/api/v1/status", headers={"Host": host}).status_code == 200, host
        assert client.post("/api/v1/revert/enable", headers={"Host": host}).status_code == 200


def test_names_from_the_configuration_are_accepted(make_client):
    client, _ = make_client(allowed_hosts=("kiosk.museum.example", "Gallery-PC.local"))
    for host in (
        "kiosk.museum.example",
        "kiosk.museum.example:8443",
        "KIOSK.museum.example.",
        "gallery-pc.local:8000",
    ):
        assert client.post("/api/v1/revert/enable", headers={"Host": host}).status_code == 200
    for host in ("other.museum.example", "museum.example", "x.kiosk.museum.example"):
        assert client.get("/api/v1/status", headers={"Host": host}).status_code == 400, host


def test_same_origin_and_non_browser_clients_are_not_cross_site(make_client):
    client, _ = make_client()
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/v1/revert/disable", headers=own).status_code == 200
    assert (
        client.get("/api/v1/revert/enable", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    )
    # A cross-site page cannot read answers (no CORS), so reads are not refused.
    assert client.get("/api/v1/status", headers=BROWSER_IMG).status_code == 200


def test_cors_is_off_unless_an_origin_is_allowed(make_client):
    client, _ = make_client()
    response = client.get("/api/v1/status", headers={"Origin": "http://kiosk.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    client, _ = make_client(cors_origins=("http://kiosk.example",))
    allowed = client.post(
        "/api/v1/heartbeat",
        headers={"Origin": "http://kiosk.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://kiosk.example"
    other = client.post("/api/v1/heartbeat", headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and "Access-Control-Allow-Origin" not in other.headers


def test_limits_answer_json(make_client):
    client, runner = make_client()
    big = client.post("/api/v1/snapshot/create", data={"snapshot_name": "x" * (64 * 1024)})
    assert big.status_code == 413 and big.json["detail"].startswith("Request body too large")
    long_query = client.get("/api/v1/heartbeat?seq=" + "1" * 9000)
    assert long_query.status_code == 414 and "Query string too long" in long_query.json["detail"]
    assert "snapshot-create-as" not in [c[0] for c in runner.calls]


def test_security_headers(make_client):
    client, _ = make_client()
    assert client.get("/api/v1/status").headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/docs", "/redoc"):
        headers = client.get(path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_tokens_never_reach_the_logs(make_client, caplog):
    client, _ = make_client(api_token=STAFF, guest_token=GUEST)
    with caplog.at_level(logging.DEBUG):
        client.get(f"/api/v1/heartbeat?token={GUEST}")
        client.get(f"/api/v1/status?token={STAFF}")
        client.get(f"/api/v1/vm/stop?token={STAFF}x")
        client.get("/api/v1/events", headers=bearer(STAFF))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/v1/status" in text, "the requests were logged..."
    assert STAFF not in text and GUEST not in text, "...without their tokens"


def test_a_refused_cross_site_path_cannot_forge_a_log_line(make_client, caplog):
    client, _ = make_client()
    with caplog.at_level(logging.INFO):
        refused = client.get(
            "/api/v1/vm/stop%0A2026-01-01%20INFO%20forged%1B[2K", headers=BROWSER_IMG
        )
    assert refused.status_code == 403
    lines = [r.getMessage() for r in caplog.records if "cross-site" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "\x1b" not in lines[0], lines
    assert "/api/v1/vm/stop\\n2026-01-01 INFO forged\\x1b[2K" in lines[0], lines


def test_token_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "x", "api_token": "too-short"})
    assert "too-short" not in str(info.value) and "<hidden, 9 characters>" in str(info.value)
    secret = tmp_path / "token"
    secret.write_text(STAFF + "\n")
    assert build_config({"vm_name": "x", "api_token_file": str(secret)}).api_token == STAFF
    with pytest.raises(ConfigError, match="both set"):
        build_config({"vm_name": "x", "api_token_file": str(secret), "api_token": STAFF})


# ------------------------------------------------------------------ real server, real VM


@pytest.fixture
def raw(openapi, check_response):
    """requests, raw (any header, any Host), with every answer checked against the schema."""
    return checked_session(openapi, check_response)


@pytest.mark.libvirt
def test_the_guests_browser_changes_nothing(start_controller, domain, events, raw):
    """A page in the guest's browser embeds <img> tags pointing at the API."""
    controller, api = start_controller(heartbeat_timeout=60)
    assert events.wait_for("Started Snapshot", 1, 30)
    virsh("snapshot-create-as", "--domain", domain.name, "--name", "backup", "--atomic")
    before = (domain.snapshot_tree(), domain.state())
    for path in (
        "/api/v1/snapshot/delete/ready",
        "/api/v1/vm/stop",
        "/api/v1/vm/restart",
        "/api/v1/snapshot/create?snapshot_name=ready",
        "/api/v1/revert/disable",
        "/api/v1/snapshot/delete/backup",
    ):
        for method in ("GET", "HEAD"):  # HEAD runs the GET handler: judged the same
            response = raw.request(method, api.base + path, headers=BROWSER_IMG, timeout=10)
            assert response.status_code == 403, (method, path, response.text)
            if method == "HEAD":  # waitress 2.1.2 hangs up after it: the client must know
                assert response.headers["Connection"] == "close"
        # DNS rebinding: the attacker's page is same-origin, only Host gives it away.
        rebound = raw.get(
            api.base + path,
            headers={
                "Host": f"evil.example:{controller.port}",
                "Origin": f"http://evil.example:{controller.port}",
            },
            timeout=10,
        )
        assert rebound.status_code == 400 and "allowed_hosts" in rebound.json()["detail"]
    # Handlers act before they answer: a refused request has done all it ever will.
    assert (domain.snapshot_tree(), domain.state()) == before
    assert events.count("Started Snapshot") == 1 and events.count("Stopped Destroyed") == 0
    assert api.get("/api/v1/status")["auto_revert_enabled"] is True
    assert api.get("/api/v1/events?trigger=api", "/api/v1/events")["events"] == []


@pytest.mark.libvirt
def test_no_server_banner_and_waitress_errors_are_json(start_controller, raw):
    controller, api = start_controller()
    response = raw.get(api.base + "/api/v1/status", timeout=10)
    assert "Server" not in response.headers
    huge = raw.get(api.base + "/api/v1/heartbeat", headers={"X-Big": "a" * 20000}, timeout=10)
    assert huge.status_code == 431
    assert huge.headers["Content-Type"] == "application/json"
    assert "Request Header Fields Too Large" in huge.json()["detail"]
    assert huge.headers["Connection"] == "close"


@pytest.mark.libvirt
def test_idle_and_slow_connections_are_closed_without_disturbing_heartbeats(start_controller, raw):
    controller, api = start_controller(api_channel_timeout=2, heartbeat_timeout=60)
    port = controller.port
    slow = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slow.append(s)
    # While they hang on, heartbeats are answered (their latency is a figure for scripts/bench).
    for _ in range(20):
        assert raw.get(api.base + "/api/v1/heartbeat", timeout=30).status_code == 200

    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1024) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    for s in slow:
        s.settimeout(0.1)
    wait_until(
        lambda: all(closed(s) for s in slow),
        controller.config.api_channel_timeout * 5,
        0.2,
        "the slow connections to close",
    )
    assert raw.get(api.base + "/api/v1/heartbeat", timeout=30).status_code == 200
    for s in slow:
        s.close()


def test_the_gate_judges_the_path_flask_routes_even_spelt_oddly(make_client):
    """The gate reads the WSGI environ, Flask its own parse of it: a doubled slash or
    a percent-encoded letter must not route to a view the gate judged as another path."""
    client, runner = make_client(api_token=STAFF)

    def get(raw_path: str, **kw):
        # As a server hands it over; the test client would read "//api" as a host name.
        return client.get("/", environ_overrides={"PATH_INFO": raw_path}, **kw)

    for path in ("//api/v1/vm/stop", "///api/v1/vm/stop", "//api/v1/snapshot/delete/ready"):
        response = get(path)
        assert response.status_code == 401, (path, response.status_code)
    assert runner.count("destroy") == 0 and runner.count("snapshot-delete") == 0
    assert get("//api/v1/status", headers=bearer(STAFF)).status_code == 200
    assert get("//api/v1/heartbeat/status", headers=bearer(STAFF)).get_json()["timeout"] == 60


def test_only_a_parameter_named_token_carries_a_token(make_client):
    """The gate reads the query string itself: a name that merely contains 'token', or an
    empty token, is no token."""
    client, runner = make_client(api_token=STAFF)
    for query in (f"tokens={STAFF}", f"my_token={STAFF}", "token=", f"x=token{STAFF}"):
        assert client.post(f"/api/v1/vm/stop?{query}").status_code == 401, query
    assert runner.count("destroy") == 0
    assert client.get(f"/api/v1/status?x=1&token={STAFF}&token=wrong").status_code == 200


def test_a_chunked_body_has_no_declared_length_for_the_gate_as_for_flask():
    """werkzeug ignores Content-Length when the body is chunked; so must the gate, or it
    would judge a different body size than the one Flask reads."""
    from vmcontroller.wsgi import content_length

    assert content_length({"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "999999"}) is None
    assert content_length({"CONTENT_LENGTH": "70000"}) == 70000
    assert content_length({"CONTENT_LENGTH": "-5"}) is None
    assert content_length({"CONTENT_LENGTH": "٣"}) is None  # a digit, but not ASCII
