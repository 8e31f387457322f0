"""The guest side, for real: scripts/guest/posix/heartbeat.sh on this machine (curl, GNU
wget, busybox) and inside the project's tiny Linux guest under the controller.

The end-to-end test does what the README's demo shows a newcomer: a real guest
heartbeats through QEMU user-mode networking, staff take the 'ready' snapshot while
it does, the guest is frozen (virsh suspend), the controller reverts it, and the
heartbeats resume from the snapshot's memory: the sequence numbers jump back. What
the guest sent is read from its own serial console; libvirt's lifecycle events time
the revert independently of the controller.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from guest_env import BEAT, GuestDomain
from libvirt_env import EventRecorder, free_port, virsh, wait_until

from vmcontroller.config import build_config

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT_SH = REPO / "scripts" / "guest" / "posix" / "heartbeat.sh"


# ------------------------------------------------------------------ the script on this machine


class Recorder:
    """A controller stand-in that records each heartbeat's query and headers (or stays silent)."""

    def __init__(self, port: int = 0, silent: bool = False):
        self.hits: list[dict[str, Any]] = []
        recorder = self
        self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if silent:
                    recorder.release.wait(30)
                    return
                parts = urllib.parse.urlsplit(self.path)
                recorder.hits.append(
                    {
                        "path": parts.path,
                        "raw": parts.query,
                        "query": dict(urllib.parse.parse_qsl(parts.query)),
                        "auth": self.headers.get("Authorization"),
                    }
                )
                body = b'{"message": "Heartbeat received", "details": {}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Refuser:
    """A controller that is down: each connection is counted and closed without an answer,
    so a test can wait for failed tries instead of sleeping."""

    def __init__(self) -> None:
        import socket

        self.tries = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.tries += 1
            conn.close()

    def close(self) -> None:
        import socket

        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)


class Script:
    """heartbeat.sh running in the background, its output collected."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path, shell: str = "sh"):
        self.out = tmp_path / f"heartbeat-{time.monotonic_ns()}.log"
        self._file = self.out.open("w")
        self.proc = subprocess.Popen(
            [shell, str(HEARTBEAT_SH), *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out.read_text()

    def beats(self) -> list[tuple[int, str, bool]]:
        return [
            (int(m.group(1)), m.group(2), m.group(3) == "ok") for m in BEAT.finditer(self.text())
        ]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()


def busybox_env(guest_build, tmp_path: Path) -> tuple[dict[str, str], str]:
    """A PATH with nothing but busybox applets, as in the guest (no curl, busybox wget)."""
    bindir = tmp_path / "busybox-bin"
    bindir.mkdir(exist_ok=True)
    busybox = guest_build.path / "busybox"
    applets = (
        "sh",
        "wget",
        "timeout",
        "sleep",
        "cut",
        "sed",
        "date",
        "grep",
        "cat",
        "od",
        "mktemp",
        "rm",
    )
    for applet in applets:
        link = bindir / applet
        if not link.exists():
            link.symlink_to(busybox)
    return {"PATH": str(bindir)}, str(bindir / "sh")


CLIENTS = ["curl", "wget", "busybox"]


def script_env(client: str, guest_build, tmp_path: Path) -> tuple[dict[str, str], str]:
    if client == "busybox":
        return busybox_env(guest_build, tmp_path)
    env = {"PATH": os.environ["PATH"], "HEARTBEAT_CLIENT": client}
    return env, "sh"


@pytest.fixture
def scripts(tmp_path):
    started: list[Script] = []

    def start(args: list[str], env: dict[str, str], shell: str = "sh") -> Script:
        script = Script(args, env, tmp_path, shell)
        started.append(script)
        return script

    yield start
    for script in started:
        script.stop()


@pytest.mark.parametrize("client", CLIENTS)
def test_the_script_survives_a_controller_that_is_down_then_comes_back(
    client, guest_build, tmp_path, scripts
):
    env, shell = script_env(client, guest_build, tmp_path)
    down = Refuser()  # the port answers nothing: closed at once
    port = down.port
    script = scripts(
        ["-k", "guest-token-0123456789", f"http://127.0.0.1:{port}/", "0.2"], env, shell
    )
    wait_until(lambda: len(script.text().splitlines()) >= 2, 10, message="a first failure")
    wait_until(lambda: down.tries >= 4, 30, message="the script to try again and again")
    down.close()
    assert script.alive(), script.text()
    lines = script.text().splitlines()
    assert lines[0].startswith(
        f"heartbeat: sending to http://127.0.0.1:{port}/api/v1/heartbeat "
        f"every 0.2 s with {client if client != 'busybox' else 'wget'}"
    )

    recorder = Recorder(port)  # the controller comes back
    try:
        wait_until(lambda: len(recorder.hits) >= 3, 15, message="heartbeats after the outage")
        back = re.search(r"answers again after (\d+) failed heartbeat", script.text())
        assert back, script.text()
        first = recorder.hits[0]
        seqs = [int(hit["query"]["seq"]) for hit in recorder.hits]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert int(back.group(1)) == seqs[0] - 1 >= 1, "every refused one was counted"
        failures = [line for line in script.text().splitlines() if " FAIL: " in line]
        assert len(failures) == 1 and "seq=1 " in failures[0], (
            "without -v only the first failure of an outage is logged"
        )
        assert {hit["query"]["boot"] for hit in recorder.hits} == {first["query"]["boot"]}
        assert all(hit["path"] == "/api/v1/heartbeat" for hit in recorder.hits)
        assert all(hit["auth"] == "Bearer guest-token-0123456789" for hit in recorder.hits)
        assert all(set(hit["query"]) == {"seq", "boot"} for hit in recorder.hits), (
            "without -p no progress"
        )
    finally:
        recorder.close()
    assert script.alive()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_silent_controller_cannot_stall_the_loop(client, guest_build, tmp_path, scripts):
    env, shell = script_env(client, guest_build, tmp_path)
    silent = Recorder(silent=True)  # accepts connections, never answers
    try:
        script = scripts(["-v", "-t", "1", f"http://127.0.0.1:{silent.port}", "0.2"], env, shell)
        wait_until(
            lambda: len(script.beats()) >= 3,
            15,
            message="three heartbeats, each given up after 1 s",
        )
        assert all(not ok for _, _, ok in script.beats())
        assert "no answer within 1 s" in script.text(), script.text()
        assert script.alive()
    finally:
        silent.close()


def test_usage_errors_exit_2(tmp_path):
    for args in (
        [],
        ["ftp://host"],
        ["http://host", "0"],
        ["http://host", "soon"],
        ["-t", "x", "http://host"],
        ["-q", "http://host"],
        ["http://a", "1", "extra"],
        ["-p", "", "http://host"],
        ["-p"],
    ):
        proc = subprocess.run(
            ["sh", str(HEARTBEAT_SH), *args], capture_output=True, text=True, timeout=10
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage: heartbeat.sh" in proc.stderr


# ------------------------------------------------------------------ progress (-p COMMAND)

MAX_PROGRESS = 128  # vocab.PROGRESS_MAX_LENGTH: the script has its own copy (it runs in guests)


def progress_script(scripts, client, guest_build, tmp_path, command: str, *options: str):
    """heartbeat.sh -v -p COMMAND against a fresh Recorder, every 0.2 s."""
    env, shell = script_env(client, guest_build, tmp_path)
    recorder = Recorder()
    script = scripts(
        ["-v", *options, "-p", command, f"http://127.0.0.1:{recorder.port}", "0.2"], env, shell
    )
    return recorder, script


def hit_with(recorder: Recorder, value: str) -> dict[str, Any] | None:
    return next((h for h in recorder.hits if h["query"].get("progress") == value), None)


@pytest.mark.parametrize("client", CLIENTS)
def test_the_progress_goes_percent_encoded_and_follows_the_command(
    client, guest_build, tmp_path, scripts
):
    frame = tmp_path / "frame"
    value = "frame 1 & 50% done/ü 日本 ~-._"
    frame.write_bytes(f"{value}\r\nthe second line is not sent\n".encode())
    recorder, script = progress_script(scripts, client, guest_build, tmp_path, f"cat '{frame}'")
    try:
        wait_until(lambda: hit_with(recorder, value), 15, message="a heartbeat with the progress")
        hit = hit_with(recorder, value)
        assert hit is not None
        # Every byte but the unreserved ones (RFC 3986) percent-encoded, hex in capitals,
        # UTF-8; the line's CR dropped.
        assert hit["raw"].endswith(
            "&progress=frame%201%20%26%2050%25%20done%2F%C3%BC%20%E6%97%A5%E6%9C%AC%20~-._"
        ), hit["raw"]
        assert hit["path"] == "/api/v1/heartbeat" and set(hit["query"]) == {
            "seq",
            "boot",
            "progress",
        }
        assert f"ok progress={urllib.parse.quote(value, safe='~')}" in script.text()

        frame.write_text("frame 2\n")  # the command runs before each heartbeat
        wait_until(lambda: hit_with(recorder, "frame 2"), 15, message="the new progress value")
    finally:
        recorder.close()


@pytest.mark.parametrize("client", ["curl", "busybox"])
def test_a_long_or_broken_progress_is_cut_to_128_characters_as_the_controller_counts_them(
    client, guest_build, tmp_path, scripts
):
    values = tmp_path / "value"
    cases = [
        ("x" * 300).encode(),
        ("é" * 200).encode(),  # two bytes each: cut at characters, not at bytes
        ("x" * 127 + "日本").encode(),  # the 128th character is three bytes long
        b"ok\xff\xc3(\xe0\x80end\xed\xa0\x80\xf0\x9f\x98",  # not UTF-8 (overlong, surrogate, cut)
        b"\xe2\x82\xac" * 127 + b"\xc3",  # 127 euros and a lone lead byte: 128 characters
    ]
    values.write_bytes(cases[0] + b"\n")
    recorder, _ = progress_script(scripts, client, guest_build, tmp_path, f"cat '{values}'")
    try:
        for raw in cases:
            values.write_bytes(raw + b"\n")
            # What the controller will see: the value decoded as UTF-8, each broken
            # sequence one replacement character, which the script sends as '?'.
            expected = raw.decode("utf-8", "replace").replace("\ufffd", "?")[:MAX_PROGRESS]
            wait_until(
                lambda: hit_with(recorder, expected),  # noqa: B023 (waited on here)
                15,
                message=f"progress {expected!r}",
            )
        assert hit_with(recorder, "ok??(??end???" + "?")  # 0xE0 0x80: two; 0xED 0xA0 0x80: three
        assert all(len(h["query"]["progress"]) <= MAX_PROGRESS for h in recorder.hits)
        assert all(h["raw"].isascii() and " " not in h["raw"] for h in recorder.hits)
    finally:
        recorder.close()


@pytest.mark.parametrize("client", ["curl", "busybox"])
def test_no_progress_is_sent_when_the_command_fails_or_prints_nothing(
    client, guest_build, tmp_path, scripts
):
    flag = tmp_path / "flag"
    # Prints nothing while the flag is missing, fails with output while it says
    # "fail", hangs while it says "hang", else prints its contents.
    command = (
        f"[ -e '{flag}' ] || exit 0; "
        f"case $(cat '{flag}') in fail) echo partial; exit 3 ;; hang) sleep 30 ;; esac; "
        f"cat '{flag}'"
    )
    recorder, script = progress_script(scripts, client, guest_build, tmp_path, command, "-t", "1")
    try:

        def after(mark: int, count: int) -> list[dict[str, Any]]:
            wait_until(
                lambda: len(recorder.hits) >= mark + count,
                20,
                message=f"{count} more heartbeats",
            )
            return recorder.hits[mark:]

        assert all("progress" not in h["query"] for h in after(0, 3)), "empty output"
        assert "progress: the command printed nothing" in script.text()

        flag.write_text("fail\n")
        wait_until(lambda: "the command failed (exit status 3)" in script.text(), 15)
        assert all("progress" not in h["query"] for h in after(len(recorder.hits), 3))

        flag.write_text("hang\n")
        wait_until(lambda: "the command failed (no output within 1 s)" in script.text(), 15)
        assert all("progress" not in h["query"] for h in after(len(recorder.hits), 2))

        flag.write_text("\n")  # an empty first line is no value either
        wait_until(lambda: script.text().count("the command printed nothing") == 2, 15)
        assert all("progress" not in h["query"] for h in after(len(recorder.hits), 3))

        flag.write_text("playing\n")
        wait_until(lambda: hit_with(recorder, "playing"), 15, message="the progress back")
        assert "progress: the command prints a value again" in script.text()
        assert script.alive()
        seqs = [int(h["query"]["seq"]) for h in recorder.hits]
        assert seqs == list(range(1, len(seqs) + 1)), "no heartbeat was skipped meanwhile"
    finally:
        recorder.close()


@pytest.mark.libvirt
def test_a_real_controller_takes_heartbeats_with_the_longest_progress(
    start_controller, guest_build, tmp_path, scripts
):
    _, api = start_controller(heartbeat_timeout=2, vm_startup_heartbeat_delay=0.5)
    value = tmp_path / "value"
    value.write_text("é & 日本/%" * 40 + "\n")  # far over the limit: cut to 128 characters
    for client in ("curl", "busybox"):
        env, shell = script_env(client, guest_build, tmp_path)
        script = scripts(["-v", "-p", f"cat '{value}'", api.base, "0.2"], env, shell)
        wait_until(
            lambda: sum(ok for _, _, ok in script.beats()) >= 3,  # noqa: B023 (waited on here)
            20,
            message=f"heartbeats with progress answered through {client}",
        )
        script.stop()
        assert "progress=" in script.text()
        assert api.get("/api/v1/status")["heartbeat"]["is_healthy"] is True, client


@pytest.mark.libvirt
def test_the_script_keeps_a_real_controller_healthy(
    start_controller, guest_build, tmp_path, scripts
):
    controller, api = start_controller(heartbeat_timeout=2, vm_startup_heartbeat_delay=0.5)
    for client in CLIENTS:
        env, shell = script_env(client, guest_build, tmp_path)
        script = scripts(["-v", api.base, "0.2"], env, shell)
        wait_until(
            lambda: sum(ok for _, _, ok in script.beats()) >= 5,  # noqa: B023 (waited on here)
            20,
            message=f"five heartbeats answered through {client}",
        )
        script.stop()
        status = api.get("/api/v1/status")
        assert status["heartbeat"]["is_healthy"] is True, client
    # The controller never had to revert: 2 s timeout, heartbeats every 0.2 s.
    history = api.get("/api/v1/events?trigger=heartbeat_timeout")["events"]
    assert history == []


@pytest.mark.libvirt
def test_the_script_sends_the_guest_token(start_controller, guest_build, tmp_path, scripts):
    token = "guest-token-0123456789abcdef"
    _, api = start_controller(
        heartbeat_timeout=30, guest_token=token, api_token="staff-token-0123456789abcdef"
    )
    for client in ("curl", "busybox"):
        env, shell = script_env(client, guest_build, tmp_path)
        refused = scripts(["-v", api.base, "0.2"], env, shell)
        wait_until(
            lambda: len(refused.beats()) >= 2,  # noqa: B023 (waited on here)
            15,
            message="refused heartbeats",
        )
        refused.stop()
        assert not any(ok for _, _, ok in refused.beats())
        assert "401" in refused.text(), refused.text()
        accepted = scripts(["-v", "-k", token, api.base, "0.2"], env, shell)
        wait_until(
            lambda: sum(ok for _, _, ok in accepted.beats()) >= 2,  # noqa: B023 (waited on here)
            15,
            message=f"heartbeats with the token through {client}",
        )
        accepted.stop()
    staff = {"Authorization": "Bearer staff-token-0123456789abcdef"}
    assert api.get("/api/v1/status", headers=staff)["heartbeat"]["is_healthy"] is True


# ------------------------------------------------------------------ the Windows scripts

GUEST = REPO / "scripts" / "guest"


def query_parameters(openapi: dict, path: str) -> set[str]:
    item = openapi["paths"][path]
    found = [p for p in item.get("parameters", [])]
    found += [p for p in item["get"].get("parameters", [])]
    return {p["name"] for p in found if p.get("in") == "query"}


def test_the_windows_scripts_call_the_api_as_documented(openapi):
    """They cannot run here (no Windows); check what they send against the OpenAPI document."""
    au3 = (GUEST / "autoit" / "exhibition-guest.au3").read_bytes()
    ini = (GUEST / "autoit" / "exhibition-guest.ini").read_bytes()
    vbs = (GUEST / "vbscript" / "heartbeat.vbs").read_bytes()
    for name, data in (("au3", au3), ("ini", ini), ("vbs", vbs)):
        assert b"\n" not in data.replace(b"\r\n", b""), f"{name}: CRLF line ends for Notepad"
        assert data.isascii(), name
    autoit, settings, vbscript = au3.decode(), ini.decode(), vbs.decode()

    calls = dict(re.findall(r'_Get\("(/api/v1/[a-z/]+)\?([^"]*)"', autoit))
    assert set(calls) == {"/api/v1/heartbeat", "/api/v1/revert/request", "/api/v1/idle/reset"}
    for path, query in calls.items():
        assert "get" in openapi["paths"][path], f"{path} answers GET"
        sent = set(re.findall(r"(?:^|&)(\w+)=", query))
        if path != "/api/v1/heartbeat":
            assert sent <= query_parameters(openapi, path), (path, sent)
    assert re.findall(r"(?:^|&)(\w+)=", calls["/api/v1/heartbeat"]) == ["seq"]
    assert '"&boot=" & $sBoot' in autoit
    assert "&severity=" in autoit
    severities = set(re.findall(r'_RequestRevert\(.+, "(\w+)"\)', autoit))
    enum = next(
        p["schema"]["enum"]
        for p in openapi["paths"]["/api/v1/revert/request"].get("parameters", [])
        if p["name"] == "severity"
    )
    assert severities and severities <= set(enum), (severities, enum)
    assert '"Authorization", "Bearer " & $sToken' in autoit
    assert "SetTimeouts($iTimeout, $iTimeout, $iTimeout, $iTimeout)" in autoit

    read = set(re.findall(r'IniRead\(\$INI, "(\w+)", "(\w+)"', autoit))
    written: set[tuple[str, str]] = set()
    section = None
    for line in settings.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith(";"):
            written.add((section, line.split("=", 1)[0]))
    assert read == written, "every setting the script reads is in the .ini, and no other"

    assert re.findall(r'"(/api/v1/[a-z/]+)\?', vbscript) == ["/api/v1/heartbeat"]
    assert 'CreateObject("MSXML2.XMLHTTP")' in vbscript
    assert 'http.open "GET", target, True' in vbscript, "asynchronous, so it can be bounded"
    assert "http.abort" in vbscript
    assert '"Authorization", "Bearer " & Token' in vbscript
    assert '"&boot=" & Boot' in vbscript


def code_lines(text: str, comment: str) -> list[str]:
    """The lines of a script without string literals and comments (AutoIt: ';', VBScript: "'"),
    continuation lines (" _" at the end) joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r'"[^"]*"', '""', raw)
        if comment == ";":
            line = re.sub(r"'[^']*'", "''", line)
        line = line.split(comment, 1)[0].rstrip()
        if lines and lines[-1].endswith(" _"):
            lines[-1] = lines[-1][:-2] + " " + line.strip()
        else:
            lines.append(line)
    return lines


def block_balance(lines: list[str], pairs: dict[str, str]) -> None:
    """Every block opened is closed by its own keyword, in order."""
    stack: list[tuple[str, int]] = []
    for number, line in enumerate(lines, 1):
        for opener, pattern in pairs.items():
            if re.match(pattern, line.strip(), re.IGNORECASE):
                stack.append((opener, number))
        for opener, closer in CLOSERS.items():
            if re.match(closer, line.strip(), re.IGNORECASE):
                assert stack and stack[-1][0] == opener, (number, line, stack[-3:])
                stack.pop()
    assert stack == [], stack


CLOSERS = {
    "func": r"EndFunc\b",
    "if": r"(EndIf|End If)\b",
    "for": r"Next\b",
    "while": r"WEnd\b",
    "do": r"Loop\b",
    "function": r"End Function\b",
    "sub": r"End Sub\b",
}
BLOCK_IF = r"(If|ElseIf) .* Then$"


def test_the_windows_scripts_send_progress_as_heartbeat_sh_does():
    """Point 2 of issue 16 on Windows: AutoIt reads the artwork's window, VBScript a file.
    Neither runs here, so what can be checked without Windows is: the heartbeat carries
    &progress= URL-encoded and cut to the controller's limit, the settings and the
    examples for Flash and Director projectors are in the .ini, and the scripts are
    well formed (blocks closed, every variable declared, every function defined)."""
    from vmcontroller import vocab

    autoit = (GUEST / "autoit" / "exhibition-guest.au3").read_text()
    settings = (GUEST / "autoit" / "exhibition-guest.ini").read_text()
    vbscript = (GUEST / "vbscript" / "heartbeat.vbs").read_text()
    posix = HEARTBEAT_SH.read_text()
    assert f"$PROGRESS_MAX_LENGTH = {vocab.PROGRESS_MAX_LENGTH} " in autoit
    assert f"Const PROGRESS_MAX_LENGTH = {vocab.PROGRESS_MAX_LENGTH} " in vbscript
    assert f"PROGRESS_MAX={vocab.PROGRESS_MAX_LENGTH} " in posix

    assert '"&boot=" & $sBoot & _ProgressQuery(), $sWhy)' in autoit
    assert "StringLeft(_Progress(), $PROGRESS_MAX_LENGTH)" in autoit
    assert '"&progress=" & _UrlEncode($sValue)' in autoit
    assert 'Return "gone"' in autoit, "a crashed projector: a value that no longer changes"
    methods = re.search(r'StringRegExp\(\$sProgressMethod, "\^\(([\w|]+)\)\$"\)', autoit)
    assert methods and set(methods.group(1).split("|")) == {"off", "title", "pixels", "both"}
    assert "\nmethod=off\n" in settings, "opt-in"
    assert "; method: off, pixels, title or both." in settings
    assert "[CLASS:ShockwaveFlash]" in settings, "the Flash projector's window"
    assert "[REGEXPCLASS:ImlWinCls]" in settings, "Director projectors: ImlWinCls(Sw10)"
    assert "PixelChecksum(" in autoit and "ClientToScreen" in autoit

    assert '"&boot=" & Boot & ProgressQuery())' in vbscript
    assert 'ProgressQuery = "&progress=" & UrlEncode(line)' in vbscript
    assert "line = Left(line, PROGRESS_MAX_LENGTH)" in vbscript
    assert "ProgressFile = WScript.Arguments(3)" in vbscript

    au3 = code_lines(autoit, ";")
    block_balance(
        au3,
        {"func": r"Func ", "if": r"If .* Then$", "for": r"For ", "while": r"While "},
    )
    declared = set()
    for line in au3:
        head = re.match(r"\s*(Global|Local)( Const)? (.*)", line)
        if head:
            declared |= set(re.findall(r"\$(\w+)\s*(?:=|,|$)", head.group(3)))
        func = re.match(r"Func \w+\((.*)\)", line)
        if func:
            declared |= set(re.findall(r"\$(\w+)", func.group(1)))
        loop = re.match(r"\s*For \$(\w+)", line)
        if loop:
            declared.add(loop.group(1))
    used = {name for line in au3 for name in re.findall(r"\$(\w+)", line)}
    assert used <= declared, used - declared  # Opt("MustDeclareVars", 1)
    defined = {m for line in au3 for m in re.findall(r"^Func (\w+)\(", line)}
    called = {m for line in au3 for m in re.findall(r"\b(_\w+)\(", line)}
    from_includes = {"_Singleton", "_Timer_GetIdleTime"}  # Misc.au3, Timers.au3
    assert called - from_includes <= defined, called - from_includes - defined
    assert all(name in called or name in {"_ComError"} for name in defined)

    vbs = code_lines(vbscript, "'")
    block_balance(
        vbs,
        {
            "function": r"Function ",
            "sub": r"Sub ",
            "if": BLOCK_IF.replace("ElseIf", "ElseIf_never"),
            "do": r"Do\b",
        },
    )
    dims = set()
    for line in vbs:
        dim = re.match(r"\s*(?:Dim|Const) (.*)", line)
        if dim:
            dims |= set(re.findall(r"(\w+)\s*(?:=.*)?(?:,|$)", dim.group(1)))
        proc = re.match(r"(?:Function|Sub) (\w+)\((.*)\)", line)
        if proc:
            dims.add(proc.group(1))
            dims |= set(re.findall(r"\w+", proc.group(2)))
    assigned = {
        m.group(1)
        for line in vbs
        for m in [re.match(r"\s*(?:Set )?(\w+)\s*=", line.split(" Then ", 1)[-1])]
        if m
    }
    assert assigned <= dims, assigned - dims  # Option Explicit


# ------------------------------------------------------------------ the real guest, end to end

TIMEOUT = 5.0  # heartbeat_timeout of the controller under test
REVERT_ALLOWANCE = 6.0  # a revert of a paused TCG guest takes ~1-2 s here; room for a busy machine


def seqs(beats) -> list[int]:
    return [b.seq for b in beats]


@pytest.mark.libvirt
def test_a_real_guest_heartbeats_freezes_is_reverted_and_resumes_from_its_snapshot(
    libvirt, guest_build, tmp_path, check_response, openapi
):
    from checked_http import checked_session

    from vmcontroller.server import Controller

    port = free_port()
    vm = GuestDomain("guest", guest_build.path, port, hb_timeout=2).define()
    recorder = EventRecorder(vm.name)
    controller = None
    figures: dict[str, float] = {"build (this session)": guest_build.seconds}
    base = f"http://127.0.0.1:{port}"

    http = checked_session(openapi, check_response)

    def status() -> dict:
        return http.get(f"{base}/api/v1/status", timeout=10).json()

    def post(path: str, expect: int = 200) -> dict:
        response = http.post(base + path, timeout=60)
        assert response.status_code == expect, response.text
        return response.json()

    try:
        # The staff's order of work: maintenance first, then the guest, then the snapshot.
        controller = Controller(
            build_config(
                {
                    "vm_name": vm.name,
                    "api_host": "127.0.0.1",
                    "api_port": port,
                    "heartbeat_timeout": TIMEOUT,
                    "vm_startup_heartbeat_delay": 8,
                    "heartbeat_check_interval": 0.5,
                    "virsh_timeout": 60,
                    "auto_revert_enabled": False,
                    "state_path": str(tmp_path / "state.db"),
                }
            )
        )
        controller.start()
        assert controller.monitor.wait_initialised(60)
        started = time.monotonic()
        vm.start()

        # 1. Heartbeats arrive: on the guest's console and in the controller's status.
        wait_until(
            lambda: status()["heartbeat"]["last_heartbeat"] is not None,
            120,
            0.05,
            "the guest's first heartbeat",
        )
        figures["start to first heartbeat"] = time.monotonic() - started
        wait_until(lambda: sum(b.ok for b in vm.beats()) >= 3, 30, message="three heartbeats")
        assert status()["heartbeat"]["is_healthy"] is True
        boot = vm.beats()[0].boot
        assert all(b.ok and b.boot == boot for b in vm.beats()), vm.console_text()
        assert seqs(vm.beats()) == list(range(1, len(vm.beats()) + 1))

        # 2. The 'ready' snapshot, taken while the guest heartbeats; then out of maintenance.
        before = vm.beats()[-1].seq
        post("/api/v1/snapshot/create")
        after = vm.beats()[-1].seq
        assert "ready" in virsh("snapshot-list", "--domain", vm.name, "--name").split()
        post("/api/v1/revert/enable")
        wait_until(lambda: vm.beats()[-1].seq >= after + 5, 30, message="more heartbeats")

        # 3. Freeze the guest.
        last_before = vm.beats()[-1].seq
        offset = vm.console_size()
        heard_before = status()["heartbeat"]["last_heartbeat"]
        frozen = time.monotonic()
        virsh("suspend", "--domain", vm.name)
        assert recorder.wait_for("Suspended Paused", 1, 10)

        # 4. Nothing arrives while it is frozen: watched from the pause until the revert.
        def frozen_so_far() -> bool:
            quiet = (
                vm.console_size() == offset
                and status()["heartbeat"]["last_heartbeat"] == heard_before
            )
            if recorder.count("Started Snapshot"):
                return True  # reverted: what was read may postdate it, so it proves nothing
            assert quiet, "a frozen guest writes nothing and sends nothing"
            looks.append(1)
            return False

        looks: list[int] = []
        wait_until(
            lambda: frozen_so_far(),
            TIMEOUT + REVERT_ALLOWANCE + 10,
            0.2,
            "the controller to revert the frozen guest",
        )
        assert looks, "the frozen guest was looked at before the revert"

        # 5. The controller reverts it (how soon is a figure, printed below, for scripts/bench).
        reverted = next(t for t, e in recorder.events if e == "Started Snapshot")
        figures["suspend to revert"] = reverted - frozen
        wait_until(lambda: vm.state() == "running", 30, message="the VM running again")

        # 6. Heartbeats resume, from the snapshot's memory: seq jumps back, boot is the same.
        wait_until(
            lambda: any(b.ok for b in vm.beats(offset)), 30, 0.05, "a heartbeat after the revert"
        )
        figures["revert to next heartbeat"] = time.monotonic() - reverted
        wait_until(
            lambda: sum(b.ok for b in vm.beats(offset)) >= 3,
            30,
            message="heartbeats going on after the revert",
        )
        resumed = vm.beats(offset)
        assert {b.boot for b in resumed} == {boot}, "the same boot: memory restored, not rebooted"
        assert before <= resumed[0].seq <= after + 2, (before, after, seqs(resumed))
        assert resumed[0].seq < last_before, "the sequence jumped back"
        assert seqs(resumed) == list(range(resumed[0].seq, resumed[0].seq + len(resumed)))
        now = status()
        assert now["heartbeat"]["is_healthy"] is True
        assert now["heartbeat"]["last_heartbeat"] != heard_before

        # 7. The controller's own account agrees.
        # A frozen guest is both paused and silent for TIMEOUT: either trigger is right.
        history = http.get(
            f"{base}/api/v1/events?trigger=heartbeat_timeout,vm_paused", timeout=10
        ).json()["events"]
        assert [(e["action"], e["outcome"]) for e in history] == [("revert", "succeeded")], history
        assert history[0]["trigger"] in ("heartbeat_timeout", "vm_paused")
        figures["revert (controller's history)"] = history[0]["duration"]
    finally:
        if controller is not None:
            controller.stop()
        recorder.close()
        vm.remove()
    print("\nreal guest figures: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
    assert vm.name not in virsh("list", "--all", "--name").split(), "the test VM is gone"
    assert not vm.disk.exists() and not vm.console.exists(), "and so are its files"
