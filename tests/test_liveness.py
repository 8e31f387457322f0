"""The HTTP probe behind the systemd watchdog (liveness.py): where it knocks, and what it
reports when something answers GET / with anything but 200.

The probe's life inside a real controller under systemd is tested in test_notify.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vmcontroller.liveness import HttpProbe, probe_host


@pytest.mark.parametrize(
    "api_host, expected",
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "::1"),  # every interface: knock on loopback
        ("127.0.0.1", "127.0.0.1"),
        ("192.168.122.1", "192.168.122.1"),
        ("::1", "::1"),
        ("kiosk.local", "kiosk.local"),  # a name resolves to where we listen
    ],
)
def test_the_probe_knocks_where_the_server_listens(api_host, expected):
    assert probe_host(api_host) == expected


@pytest.fixture
def answering_503() -> Iterator[int]:
    """A loopback server whose GET / answers 503, as a server that has lost its app would."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_an_answer_other_than_200_counts_as_no_answer_and_is_named(answering_503):
    now = [100.0]
    probe = HttpProbe(
        "127.0.0.1", lambda: answering_503, interval=1, timeout=5, clock=lambda: now[0]
    )
    assert probe.probe_once() is False
    assert probe.problem(stale_after=30) is None, "within the limit: no problem yet"
    now[0] += 31
    assert probe.problem(stale_after=30) == (
        "the HTTP server has not answered for 31 s (limit 30 s; GET / answered 503)"
    )
