"""The admin verbs of `vmcontroller`: what they send, what they print, and their exit status
(0 success, 1 the API refused or failed, 2 usage error, 3 controller unreachable).

First against a stand-in HTTP server that answers whatever a test needs (errors, garbage,
silence), to pin down the client's requests and the exit status of every case; then
against a real controller on a real VM, through click's CliRunner and as real processes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: an autouse fixture)
from libvirt_env import free_port

from vmcontroller.cli import main
from vmcontroller.client import Client, base_url_for, check_base_url

SCRIPT = str(Path(sys.executable).parent / "vmcontroller")


# ------------------------------------------------------------------ a stand-in server


class StandIn:
    """An HTTP server on 127.0.0.1 that records requests and answers from a table."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: dict[tuple[str, str], tuple[int, bytes, str]] = {}
        self.silent = threading.Event()
        self.release = threading.Event()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                stand_in.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": urllib.parse.parse_qsl(parts.query),
                        "headers": dict(self.headers),
                    }
                )
                if stand_in.silent.is_set():
                    stand_in.release.wait(10)
                    return
                status, body, ctype = stand_in.answers.get(
                    (self.command, parts.path),
                    (
                        200,
                        json.dumps(
                            {"message": f"{self.command} {parts.path} done", "details": None}
                        ).encode(),
                        "application/json",
                    ),
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(
        self, method: str, path: str, status: int, body: Any, ctype: str = "application/json"
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[(method, path)] = (status, raw, ctype)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


STATUS = {
    "vm_name": "eden",
    "vm_state": "running",
    "vm_is_running": True,
    "snapshot_name": "ready",
    "snapshot_exists": True,
    "heartbeat": {
        "enabled": True,
        "last_heartbeat": "2026-11-25T10:00:00+00:00",
        "seconds_since_last": 0.4,
        "is_healthy": True,
        "timeout": 10,
    },
    "auto_revert_enabled": True,
    "vm_state_detail": None,
    "stopped_by_staff": False,
    "recovery": {
        "count": 2,
        "last_time": "2026-11-25T09:00:00+00:00",
        "last_trigger": "heartbeat_timeout",
        "last_outcome": "succeeded",
        "guard": {
            "state": "ok",
            "detail": None,
            "recent_recoveries": 1,
            "max_recoveries": 5,
            "recovery_window": 600.0,
            "consecutive_failures": 0,
            "retry_in": None,
        },
    },
}


def report_day(day: str | None, **figures: Any) -> dict[str, Any]:
    body: dict[str, Any] = {} if day is None else {"date": day}
    body.update(
        {
            "healthy_seconds": 86321.5,
            "unhealthy_seconds": 78.5,
            "staff_seconds": 0.0,
            "unmonitored_seconds": 0.0,
            "healthy_share": 0.999092,
            "recoveries": {"heartbeat_timeout": 1},
            "recoveries_total": 1,
            "longest_outage_seconds": 78.5,
            **figures,
        }
    )
    return body


REPORT = {
    "vm": "eden",
    "since": "2026-11-01",
    "until": "2026-11-03",
    "days": [
        report_day("2026-11-01"),
        report_day(
            "2026-11-02",
            healthy_seconds=0.0,
            unhealthy_seconds=0.0,
            staff_seconds=7200.0,
            unmonitored_seconds=79200.0,
            healthy_share=None,
            recoveries={},
            recoveries_total=0,
            longest_outage_seconds=0.0,
        ),
        report_day("2026-11-03", recoveries={"heartbeat_timeout": 2, "vm_crashed": 1}),
    ],
    "total": report_day(
        None,
        healthy_seconds=2 * 86321.5,
        unhealthy_seconds=157.0,
        staff_seconds=7200.0,
        unmonitored_seconds=79200.0,
        healthy_share=0.999092,
        recoveries={"heartbeat_timeout": 3, "vm_crashed": 1},
        recoveries_total=4,
        # A long range's totals: days and hours.
        longest_outage_seconds=400 * 3600.0,
    ),
}

# verb arguments -> (method, path, query)
REQUESTS = {
    "status": (["status"], "GET", "/api/v1/status", []),
    "start": (["start"], "POST", "/api/v1/vm/start", []),
    "stop": (["stop"], "POST", "/api/v1/vm/stop", []),
    "restart": (["restart"], "POST", "/api/v1/vm/restart", []),
    "snapshots": (["snapshots"], "GET", "/api/v1/snapshots", []),
    "snapshot create": (["snapshot", "create"], "POST", "/api/v1/snapshot/create", []),
    "snapshot create NAME": (
        ["snapshot", "create", "backup-1"],
        "POST",
        "/api/v1/snapshot/create",
        [("snapshot_name", "backup-1")],
    ),
    "snapshot delete NAME": (
        ["snapshot", "delete", "old.one"],
        "DELETE",
        "/api/v1/snapshot/old.one",
        [],
    ),
    "revert enable": (["revert", "enable"], "POST", "/api/v1/revert/enable", []),
    "revert disable": (["revert", "disable"], "POST", "/api/v1/revert/disable", []),
    "heartbeat": (["heartbeat"], "POST", "/api/v1/heartbeat", []),
    "events": (["events"], "GET", "/api/v1/events", []),
    "events filtered": (
        [
            "events",
            "--limit",
            "5",
            "--since",
            "2026-11-01",
            "--trigger",
            "api",
            "--trigger",
            "vm_paused",
        ],
        "GET",
        "/api/v1/events",
        [("limit", "5"), ("since", "2026-11-01"), ("trigger", "api"), ("trigger", "vm_paused")],
    ),
    "report": (["report"], "GET", "/api/v1/report", []),
    "report of a month": (
        ["report", "--since", "2026-11-01", "--until", "2026-11-30", "--format", "csv"],
        "GET",
        "/api/v1/report",
        [("since", "2026-11-01"), ("until", "2026-11-30")],
    ),
}


@pytest.mark.parametrize("args, method, path, query", REQUESTS.values(), ids=REQUESTS.keys())
def test_each_verb_sends_its_request(stand_in, args, method, path, query):
    stand_in.answer("GET", "/api/v1/status", 200, STATUS)
    stand_in.answer("GET", "/api/v1/snapshots", 200, {"vm_name": "eden", "snapshots": ["ready"]})
    stand_in.answer("GET", "/api/v1/events", 200, {"vm_name": "eden", "events": []})
    stand_in.answer("GET", "/api/v1/report", 200, REPORT)
    stand_in.answer(
        "POST",
        "/api/v1/heartbeat",
        200,
        {"message": "Heartbeat received", "details": STATUS["heartbeat"]},
    )
    result = invoke(*args, "--url", stand_in.url)
    assert result.exit_code == 0, shown(result)
    assert result.stderr == ""
    assert len(stand_in.requests) == 1
    sent = stand_in.requests[0]
    assert (sent["method"], sent["path"], sent["query"]) == (method, path, query)
    assert "Authorization" not in sent["headers"]
    assert sent["headers"]["Accept"] == "application/json"


def test_a_snapshot_name_is_one_path_segment(stand_in):
    """A name with a slash or space reaches the API as one segment, for its 400."""
    assert invoke("snapshot", "delete", "a b/../c", "--url", stand_in.url).exit_code == 0
    assert stand_in.requests[0]["path"] == "/api/v1/snapshot/a%20b%2F..%2Fc"
    assert Client(stand_in.url + "/").base_url == stand_in.url


def test_token_from_option_or_environment_is_a_bearer_header(stand_in):
    assert invoke("status", "--url", stand_in.url, "--token", "s3cret").exit_code == 0
    assert invoke("status", "--url", stand_in.url, env={"VMCTL_TOKEN": "fr0m-env"}).exit_code == 0
    assert [r["headers"].get("Authorization") for r in stand_in.requests] == [
        "Bearer s3cret",
        "Bearer fr0m-env",
    ]


def test_json_prints_the_api_answer_as_is(stand_in):
    stand_in.answer("GET", "/api/v1/status", 200, STATUS)
    result = invoke("status", "--json", "--url", stand_in.url)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == STATUS


def test_status_text_is_readable(stand_in):
    stand_in.answer("GET", "/api/v1/status", 200, STATUS)
    text = invoke("status", "--url", stand_in.url).stdout
    assert "eden: running" in text
    assert "healthy, last 0.4 s ago (timeout 10 s" in text
    assert "Auto-revert  enabled" in text
    assert "2 automatic, last 2026-11-25T09:00:00+00:00 (heartbeat_timeout: succeeded)" in text
    assert "ok: 1 of 5 recoveries within 600 s" in text
    trouble = {
        **STATUS,
        "auto_revert_enabled": False,
        "snapshot_exists": False,
        "stopped_by_staff": True,
        "vm_state": "shut off",
        "heartbeat": {
            **STATUS["heartbeat"],
            "is_healthy": False,
            "seconds_since_last": None,
            "enabled": False,
        },
    }
    stand_in.answer("GET", "/api/v1/status", 200, trouble)
    text = invoke("status", "--url", stand_in.url).stdout
    assert "DISABLED (maintenance mode)" in text and "MISSING" in text
    assert "by staff" in text and "NOT healthy, none received yet" in text


def test_status_text_shows_why_the_state_is_unknown_and_why_the_guard_tripped(stand_in):
    detail = "libvirt error: failed to connect to the hypervisor"
    why = "3 recoveries in a row failed: staff must start or restart the VM"
    broken = {
        **STATUS,
        "vm_state": "unknown",
        "vm_is_running": False,
        "vm_state_detail": detail,
        "recovery": {
            **STATUS["recovery"],
            "guard": {**STATUS["recovery"]["guard"], "state": "failed", "detail": why},
        },
    }
    stand_in.answer("GET", "/api/v1/status", 200, broken)
    text = invoke("status", "--url", stand_in.url).stdout
    assert f"eden: unknown ({detail})" in text
    assert f"failed: 1 of 5 recoveries within 600 s; {why}" in text


def test_status_fields_for_shell_scripts(stand_in):
    stand_in.answer("GET", "/api/v1/status", 200, STATUS)
    result = invoke(
        "status",
        "--url",
        stand_in.url,
        "--field",
        "vm_state",
        "--field",
        "heartbeat.is_healthy",
        "--field",
        "heartbeat.seconds_since_last",
        "--field",
        "vm_state_detail",
        "--field",
        "recovery.guard.state",
    )
    assert result.exit_code == 0, shown(result)
    assert result.stdout.splitlines() == ["running", "true", "0.4", "null", "ok"]
    result = invoke("status", "--url", stand_in.url, "--field", "heartbeat.pulse")
    assert result.exit_code == 2
    assert "no field 'heartbeat.pulse'" in result.stderr


def test_lists_print_one_item_per_line(stand_in):
    stand_in.answer(
        "GET", "/api/v1/snapshots", 200, {"vm_name": "eden", "snapshots": ["ready", "backup-1"]}
    )
    assert invoke("snapshots", "--url", stand_in.url).stdout == "ready\nbackup-1\n"
    stand_in.answer(
        "GET",
        "/api/v1/events",
        200,
        {
            "vm_name": "eden",
            "events": [
                {
                    "id": 2,
                    "time": "2026-11-25T10:00:00+00:00",
                    "vm": "eden",
                    "trigger": "api",
                    "action": "revert",
                    "reason": "restart requested",
                    "outcome": "failed",
                    "duration": 1.234,
                    "error": "disk full",
                },
                {
                    "id": 1,
                    "time": "2026-11-25T09:00:00+00:00",
                    "vm": "eden",
                    "trigger": "vm_crashed",
                    "action": "revert",
                    "reason": "VM found shut off",
                    "outcome": "succeeded",
                    "duration": 0.5,
                    "error": None,
                },
                {
                    "id": 0,
                    "time": "2026-11-25T08:00:00+00:00",
                    "vm": "eden",
                    "trigger": "idle_reset",
                    "action": "revert",
                    "reason": "idle",
                    "outcome": "refused",
                    "duration": None,
                    "error": "maintenance",
                    "count": 12,
                },
            ],
        },
    )
    lines = invoke("events", "--url", stand_in.url).stdout.splitlines()
    assert lines == [
        "2026-11-25T10:00:00+00:00  api  revert failed in 1.23 s: restart requested "
        "[error: disk full]",
        "2026-11-25T09:00:00+00:00  vm_crashed  revert succeeded in 0.50 s: VM found shut off",
        "2026-11-25T08:00:00+00:00  idle_reset  revert refused x12: idle [error: maintenance]",
    ]
    stand_in.answer("GET", "/api/v1/events", 200, {"vm_name": "eden", "events": []})
    assert invoke("events", "--url", stand_in.url).stdout == "no events for VM eden\n"


# ------------------------------------------------------------------ exit status

FAILURES = {
    "409 refused": (
        409,
        {"detail": "Revert not queued: automatic revert is disabled"},
        "application/json",
        "Revert not queued: automatic revert is disabled (HTTP 409)",
    ),
    "500 libvirt": (
        500,
        {"detail": "Error restarting VM: error: Domain not found"},
        "application/json",
        "Error restarting VM: error: Domain not found (HTTP 500)",
    ),
    "503 starting": (
        503,
        {"detail": "VM manager not initialized"},
        "application/json",
        "VM manager not initialized (HTTP 503)",
    ),
    "404 html": (
        404,
        b"<html>Not here</html>",
        "text/html",
        "HTTP 404 without an API error body: <html>Not here</html> (HTTP 404)",
    ),
    "200 garbage": (200, b"hello", "text/plain", "is not JSON: hello (HTTP 200)"),
}


@pytest.mark.parametrize("status, body, ctype, message", FAILURES.values(), ids=FAILURES.keys())
def test_an_api_refusal_or_failure_exits_1_with_its_detail_on_stderr(
    stand_in, status, body, ctype, message
):
    stand_in.answer("POST", "/api/v1/vm/restart", status, body, ctype)
    result = invoke("restart", "--url", stand_in.url)
    assert result.exit_code == 1, shown(result)
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("vmcontroller: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    json_result = invoke("restart", "--json", "--url", stand_in.url)
    assert json_result.exit_code == 1 and json_result.stdout == ""


def test_nothing_listening_exits_3():
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("status", "--url", url)
    assert result.exit_code == 3
    assert (
        result.stderr == f"vmcontroller: cannot connect to {url}: connection refused "
        f"(is the controller running?)\n"
    )


def test_a_silent_controller_exits_3_after_the_timeout(stand_in):
    stand_in.silent.set()
    result = invoke("status", "--url", stand_in.url, "--timeout", "0.5")
    assert result.exit_code == 3, shown(result)
    assert f"no answer from {stand_in.url} within 0.5 s" in result.stderr


def test_a_connection_closed_without_an_answer_exits_3():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        result = invoke("status", "--url", url)
    assert result.exit_code == 3, shown(result)
    assert "closed the connection without answering" in result.stderr


def serve_once_raw(handle) -> str:
    """A loopback listener whose single connection ``handle`` treats as it likes; its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                handle(conn)

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_connection_reset_exits_3_with_the_systems_reason():
    def reset(conn: socket.socket) -> None:
        # Linger 0: close() sends RST instead of FIN, as a crashing peer's kernel does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    url = serve_once_raw(reset)
    result = invoke("status", "--url", url)
    assert result.exit_code == 3, shown(result)
    assert result.stderr == f"vmcontroller: cannot reach {url}: Connection reset by peer\n"


def test_a_server_that_does_not_speak_http_exits_3_saying_so():
    """--url pointing at another service (here one that greets like SSH) is not 'unreachable'."""
    url = serve_once_raw(lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n"))
    result = invoke("status", "--url", url)
    assert result.exit_code == 3, shown(result)
    assert result.stderr.startswith(f"vmcontroller: {url} answered, but not in HTTP: "), (
        result.stderr
    )
    assert "SSH-2.0-OpenSSH_9.2p1" in result.stderr and "Traceback" not in result.stderr


def test_a_host_name_that_does_not_resolve_exits_3_naming_it():
    url = "http://exhibition-pc.invalid:8000"  # .invalid never resolves (RFC 6761)
    result = invoke("status", "--url", url)
    assert result.exit_code == 3, shown(result)
    assert result.stderr.startswith(f"vmcontroller: cannot resolve the host of {url}: "), (
        result.stderr
    )


def test_the_report_as_a_table_fits_80_columns(stand_in):
    stand_in.answer("GET", "/api/v1/report", 200, REPORT)
    result = invoke("report", "--url", stand_in.url)
    assert result.exit_code == 0, shown(result)
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0] == "VM eden: 2026-11-01 to 2026-11-03 (local days)"
    assert lines[1].split() == [
        "date",
        "share",
        "healthy",
        "unhealthy",
        "staff",
        "unmonitored",
        "longest",
        "recoveries",
    ]
    assert lines[2].split() == [
        "2026-11-01",
        "99.9%",
        "23:58:42",
        "0:01:19",
        "0:00:00",
        "0:00:00",
        "0:01:19",
        "1",
    ]
    assert lines[3].split()[:2] == ["2026-11-02", "-"], "no share without healthy or unhealthy time"
    assert lines[5].split() == [
        "total",
        "99.9%",
        "47:57:23",
        "0:02:37",
        "2:00:00",
        "22:00:00",
        "16d",
        "16h",
        "4",
    ]
    assert lines[6].startswith("share = healthy / (healthy + unhealthy)")
    assert lines[7] == "recoveries by trigger: heartbeat_timeout 3, vm_crashed 1"


def test_the_report_as_csv_has_a_header_and_a_line_per_day(stand_in):
    stand_in.answer("GET", "/api/v1/report", 200, REPORT)
    result = invoke("report", "--format", "csv", "--url", stand_in.url)
    assert result.exit_code == 0, shown(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["date"] for row in rows] == ["2026-11-01", "2026-11-02", "2026-11-03", "total"]
    assert rows[0]["healthy_seconds"] == "86321.5" and rows[0]["healthy_share"] == "0.999092"
    assert rows[1]["healthy_share"] == "", "null is an empty cell"
    assert rows[2]["recoveries_heartbeat_timeout"] == "2"
    assert rows[2]["recoveries_vm_crashed"] == "1" and rows[2]["recoveries_api"] == "0"
    assert rows[3]["recoveries_total"] == "4"


@pytest.mark.parametrize("args", [["--format", "json"], ["--json"]])
def test_the_report_as_json_is_the_apis_answer(stand_in, args):
    stand_in.answer("GET", "/api/v1/report", 200, REPORT)
    result = invoke("report", *args, "--url", stand_in.url)
    assert result.exit_code == 0, shown(result)
    assert json.loads(result.stdout) == REPORT


@pytest.mark.parametrize(
    "option, value",
    [("--since", "2026-13-01"), ("--until", "yesterday"), ("--since", "0001-01-01")],
)
def test_a_bad_report_date_is_a_one_line_usage_error_before_any_request(stand_in, option, value):
    result = invoke("report", option, value, "--url", stand_in.url)
    assert result.exit_code == 2, shown(result)
    assert result.stdout == "" and stand_in.requests == []
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"vmcontroller: {option} must be"), result.stderr
    assert repr(value) in result.stderr


def test_a_report_range_the_api_refuses_exits_1_with_its_detail(stand_in):
    detail = "Invalid parameter: since (2026-12-01) must not be after until (2026-11-01)"
    stand_in.answer("GET", "/api/v1/report", 400, {"detail": detail})
    result = invoke(
        "report", "--since", "2026-12-01", "--until", "2026-11-01", "--url", stand_in.url
    )
    assert result.exit_code == 1, shown(result)
    assert detail in result.stderr and len(result.stderr.splitlines()) == 1


USAGE = {
    "bad url": ["status", "--url", "ftp://example"],
    "url with a query": ["status", "--url", "http://127.0.0.1:8000/?x=1"],
    "unknown option": ["status", "--verbose"],
    "delete without a name": ["snapshot", "delete"],
    "limit out of range": ["events", "--limit", "0"],
    "report in another format": ["report", "--format", "xml"],
    "bad timeout": ["status", "--timeout", "0"],
    "unknown verb": ["reboot"],
    "revert without enable/disable": ["revert", "maybe"],
}


@pytest.mark.parametrize("args", USAGE.values(), ids=USAGE.keys())
def test_usage_errors_exit_2(args):
    result = invoke(*args)
    assert result.exit_code == 2, shown(result)
    assert "Traceback" not in shown(result)


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, prefix + (name,))
        else:
            found.append(prefix + (name,))
    return found


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "main")
def test_every_verb_has_help(path):
    for flag in ("--help", "-h"):
        result = invoke(*path, flag)
        assert result.exit_code == 0, shown(result)
        assert result.stdout.startswith("Usage: ")
    words = invoke(*path, "--help").stdout
    if (
        path
        # The verbs that work on this machine, not through a controller's API.
        and path[0] not in ("serve", "check-config", "schedule", "notify", "screen", "vm")
        and path not in (("snapshot",), ("revert",))
    ):
        for option in ("--url", "--token", "--json", "--timeout"):
            assert option in words, (path, option)


# ------------------------------------------------------------------ where the controller is


def test_url_from_vmctl_url(stand_in):
    assert invoke("status", env={"VMCTL_URL": stand_in.url}).exit_code == 0
    assert len(stand_in.requests) == 1


def test_url_from_the_config_with_the_wildcard_address_mapped_to_loopback(stand_in, tmp_path):
    port = int(stand_in.url.rsplit(":", 1)[1])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"vm_name": "eden", "api_host": "0.0.0.0", "api_port": port}))
    assert invoke("status", "--config", str(config)).exit_code == 0
    assert invoke("status", env={"VMCTL_CONFIG": str(config)}).exit_code == 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"api_port": port}))  # no vm_name
    assert invoke("status").exit_code == 0, "./config.yaml, even without a vm_name"
    assert invoke("status", env={"VMCTL_API_PORT": "1"}).exit_code == 3, "overrides apply"
    assert len(stand_in.requests) == 3


def test_a_broken_config_is_a_usage_error_unless_the_url_is_given(stand_in, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("api_port: [\n")
    result = invoke("status", "--config", str(config))
    assert result.exit_code == 2
    assert result.stderr.startswith("vmcontroller: configuration error: ")
    assert "--url" in result.stderr and len(result.stderr.splitlines()) == 1
    assert invoke("status", "--config", str(config), "--url", stand_in.url).exit_code == 0


def test_the_configs_api_token_goes_only_to_the_configs_address(stand_in, monkeypatch):
    """An admin on the exhibition PC needs no --token: the config has it. But a token from
    the local config is never sent to an address typed by hand."""
    from types import SimpleNamespace

    from vmcontroller import clibase

    port = int(stand_in.url.rsplit(":", 1)[1])
    config = SimpleNamespace(api_host="0.0.0.0", api_port=port, api_token="from-the-config-file")
    monkeypatch.setattr(clibase, "load_config", lambda path, env=None: (config, None))
    assert invoke("status").exit_code == 0
    assert invoke("status", "--token", "given").exit_code == 0
    assert invoke("status", "--url", stand_in.url).exit_code == 0
    assert [r["headers"].get("Authorization") for r in stand_in.requests] == [
        "Bearer from-the-config-file",
        "Bearer given",
        None,
    ]


def test_base_urls():
    assert base_url_for("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert base_url_for("127.0.0.1", 80) == "http://127.0.0.1:80"
    assert base_url_for("::", 8000) == "http://[::1]:8000"
    assert base_url_for("fe80::1", 8000) == "http://[fe80::1]:8000"
    assert base_url_for("gallery-pc.local", 8000) == "http://gallery-pc.local:8000"
    assert check_base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://", "http://x:99999", "http://x/?q=1"):
        with pytest.raises(ValueError):
            check_base_url(bad)


def test_proxy_variables_are_ignored(stand_in, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    assert invoke("status", "--url", stand_in.url).exit_code == 0


# ------------------------------------------------------------------ a real controller

pytestmark_libvirt = pytest.mark.libvirt


@pytestmark_libvirt
def test_the_verbs_against_a_real_controller(start_controller, domain):
    controller, api = start_controller(heartbeat_timeout=30)
    url = api.base

    def run(*args: str, code: int = 0):
        result = invoke(*args, "--url", url)
        assert result.exit_code == code, (args, shown(result))
        return result

    beat = run("heartbeat")
    assert beat.stdout.startswith("Heartbeat received: healthy, last 0 s ago")
    status = json.loads(run("status", "--json").stdout)
    assert status["vm_name"] == domain.name and status["heartbeat"]["is_healthy"] is True
    assert f"{domain.name}: running" in run("status").stdout
    assert run("status", "--field", "vm_is_running").stdout == "true\n"

    assert (
        run("snapshot", "create", "backup-cli").stdout
        == f"Snapshot 'backup-cli' created successfully for VM '{domain.name}'\n"
    )
    assert "backup-cli" in domain.snapshots()
    assert run("snapshots").stdout.split() == sorted(
        domain.snapshots(), key=domain.snapshots().index
    )
    run("snapshot", "delete", "backup-cli")
    assert "backup-cli" not in domain.snapshots()
    missing = run("snapshot", "delete", "backup-cli", code=1)
    assert "not found" in missing.stderr and "(HTTP 404)" in missing.stderr
    bad = invoke("snapshot", "create", "--url", url, "--", "-x")
    assert bad.exit_code == 1 and "(HTTP 400)" in bad.stderr
    assert "(HTTP 400)" in run("snapshot", "delete", "../ready", code=1).stderr
    assert "ready" in domain.snapshots()

    assert run("revert", "disable").stdout.startswith("Automatic revert disabled")
    assert "DISABLED (maintenance mode)" in run("status").stdout
    run("revert", "enable")
    assert run("status", "--field", "auto_revert_enabled").stdout == "true\n"

    run("stop")
    assert domain.state() == "shut off"
    assert run("status", "--field", "stopped_by_staff").stdout == "true\n"
    run("start")
    assert domain.state() == "running"
    assert run("restart").stdout == f"VM '{domain.name}' restarted successfully\n"
    assert domain.current_snapshot() == "ready"

    lines = run("events", "--trigger", "api", "--limit", "3").stdout.splitlines()
    assert len(lines) == 3 and all("  api  " in line for line in lines)
    assert " revert succeeded in " in lines[0]
    history = json.loads(run("events", "--json", "--trigger", "api").stdout)["events"]
    assert [e["action"] for e in history][:3] == ["revert", "start", "stop"]
    bogus = run("events", "--trigger", "bogus", code=1)
    assert "trigger must be among" in bogus.stderr and "(HTTP 400)" in bogus.stderr


@pytestmark_libvirt
def test_the_installed_command_exit_status_as_a_real_process(start_controller, tmp_path):
    _, api = start_controller(heartbeat_timeout=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [SCRIPT, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, **extra},
            cwd=tmp_path,
        )

    ok = run("heartbeat", VMCTL_URL=api.base)
    assert ok.returncode == 0 and ok.stdout.startswith("Heartbeat received"), ok.stderr
    refused = run("snapshot", "delete", "no-such-snapshot", VMCTL_URL=api.base)
    assert refused.returncode == 1 and "(HTTP 404)" in refused.stderr
    usage = run("snapshot", "delete", VMCTL_URL=api.base)
    assert usage.returncode == 2
    gone = run("status", VMCTL_URL=f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 3 and "connection refused" in gone.stderr
    assert all("Traceback" not in p.stderr for p in (ok, refused, usage, gone))


STAFF = "staff-token-0123456789abcdef"
GUEST_TOKEN = "guest-token-0123456789abcdef"


@pytestmark_libvirt
def test_tokens_against_a_real_controller(start_controller, tmp_path):
    """With api_token and guest_token set (README, Security): the staff token from --token,
    VMCTL_TOKEN or the controller's own config; the guest token only for the heartbeat."""
    controller, api = start_controller(
        heartbeat_timeout=30, api_token=STAFF, guest_token=GUEST_TOKEN
    )
    url = api.base
    refused = invoke("status", "--url", url)
    assert refused.exit_code == 1
    assert "Unauthorized" in refused.stderr and "(HTTP 401)" in refused.stderr
    assert invoke("status", "--url", url, "--token", STAFF).exit_code == 0
    assert invoke("status", "--url", url, env={"VMCTL_TOKEN": STAFF}).exit_code == 0
    assert invoke("heartbeat", "--url", url, "--token", GUEST_TOKEN).exit_code == 0
    assert invoke("revert", "disable", "--url", url, "--token", GUEST_TOKEN).exit_code == 1

    config = tmp_path / "admin.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vm_name": "whatever",
                "api_host": "127.0.0.1",
                "api_port": controller.port,
                "api_token": STAFF,
            }
        )
    )
    mine = invoke("status", "--config", str(config), "--field", "auto_revert_enabled")
    assert mine.exit_code == 0 and mine.stdout == "true\n", shown(mine)
    checked = invoke("check-config", "--config", str(config))
    assert STAFF not in checked.stdout and "api_token: '********'" in checked.stdout
