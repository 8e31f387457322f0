"""systemd's notify protocol: READY=1, WATCHDOG=1 only while the monitor makes progress,
STOPPING=1; heard on a NOTIFY_SOCKET of the test's own (a path and an abstract name).

systemd is not running on this machine, so the tests play systemd: they bind
the unix datagram socket that systemd would, hand its name to the controller
in NOTIFY_SOCKET with WATCHDOG_USEC (and WATCHDOG_PID), and read what arrives.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml
from libvirt_env import wait_until
from waits import stays_false

from vmcontroller import notify
from vmcontroller.config import build_config
from vmcontroller.notify import Notifier, socket_address, stale_limit, watchdog_interval


class NotifyListener:
    """The systemd side: a datagram socket that records every message with its arrival time."""

    def __init__(self, name: str):
        self.name = name  # what goes into NOTIFY_SOCKET
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(name))
        self.sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def lines(self, since: float = 0.0) -> list[tuple[float, str]]:
        with self._cond:
            return [(t, line) for t, m in self.messages if t >= since for line in m.split("\n")]

    def times(self, line: str, since: float = 0.0) -> list[float]:
        return [t for t, text in self.lines(since) if text == line]

    def wait_for(self, line: str, count: int = 1, timeout: float = 30, since: float = 0.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times(line, since)) >= count, timeout)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        if not self.name.startswith("@"):
            Path(self.name).unlink(missing_ok=True)


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    name = (
        str(tmp_path / "notify.sock")
        if request.param == "path"
        else f"@vmctl-test-notify-{uuid.uuid4().hex[:8]}"
    )
    heard = NotifyListener(name)
    yield heard
    heard.close()


@pytest.fixture
def path_listener(tmp_path):
    heard = NotifyListener(str(tmp_path / "notify.sock"))
    yield heard
    heard.close()


@pytest.fixture
def abstract_listener():
    heard = NotifyListener(f"@vmctl-test-notify-{uuid.uuid4().hex[:8]}")
    yield heard
    heard.close()


def quiet(listener, line: str, since: float, notifier_interval: float) -> None:
    """No ``line`` after ``since``, watched for ten ping intervals (a ping is due in one)."""
    stays_false(
        lambda: bool(listener.times(line, since)), notifier_interval * 10, f"{line} was sent"
    )


# ------------------------------------------------------------------ the protocol itself


def test_socket_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == "\0abstract/name"
    assert socket_address(None) is None and socket_address("") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_send_reaches_path_and_abstract_sockets(listener):
    assert notify.send("READY=1\nSTATUS=hello", socket_address(listener.name))
    assert listener.wait_for("READY=1", timeout=5)
    assert listener.wait_for("STATUS=hello", timeout=5)


def test_send_never_raises(tmp_path, caplog):
    assert notify.send("READY=1", str(tmp_path / "nobody-listens")) is False
    assert notify.send("READY=1", None) is False
    assert "could not notify systemd" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec_and_honours_watchdog_pid():
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}, pid) == 15.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    ), "a watchdog meant for another process is not ours"
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_interval({}, pid) is None


def test_stale_limit_follows_from_the_longest_locked_operation():
    from vmcontroller.monitor import longest_locked_operation

    defaults = build_config({"vm_name": "eden"})
    longest = longest_locked_operation(defaults)
    assert longest == defaults.virsh_long_timeout + 2 * defaults.virsh_timeout == 180
    # Waiting for a staff action's operation, then running its own, plus a sleep.
    assert stale_limit(longest, 5) == 5 + 2 * 180
    assert stale_limit(1, 5) == 7


def test_from_environ_reads_and_removes_the_variables(tmp_path):
    env = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/bin",
    }
    notifier = Notifier.from_environ(FakeMonitor(), 10, env)
    assert notifier.enabled and notifier.address == "\0x" and notifier.interval == 1.0
    assert env == {"PATH": "/bin"}, "virsh and post_revert_command must not inherit them"
    idle = Notifier.from_environ(FakeMonitor(), 10, {"WATCHDOG_USEC": "2000000"})
    assert not idle.enabled and idle.interval is None
    idle.start("x")  # no socket: nothing happens, nothing fails
    idle.stopping()


# ------------------------------------------------------------------ the watchdog logic, fast


class FakeMonitor:
    """Stands in for Monitor: alive, initialised, and 'making progress' while told to."""

    def __init__(self) -> None:
        self.alive = True
        self.progressing = True
        self._progress = time.monotonic()
        self.initialised = threading.Event()
        self.initialised.set()
        self.waited_in_vain = 0

    @property
    def thread_alive(self) -> bool:
        return self.alive

    @property
    def last_progress(self) -> float:
        if self.progressing:
            self._progress = time.monotonic()
        return self._progress

    def wait_initialised(self, timeout: float | None = None) -> bool:
        done = self.initialised.wait(timeout)
        if not done:
            self.waited_in_vain += 1  # a sign that the notifier asked and was told to wait
        return done


def test_ready_waits_for_initialisation_then_pings_follow_progress(listener):
    monitor = FakeMonitor()
    monitor.initialised.clear()
    notifier = Notifier(socket_address(listener.name), 0.05, monitor, stale_after=0.3)
    notifier.start("serving")
    try:
        wait_until(
            lambda: monitor.waited_in_vain >= 1,
            5,
            message="the notifier to ask whether the monitor is initialised",
        )
        assert listener.lines() == [], "nothing before the monitor is initialised"
        monitor.initialised.set()
        assert listener.wait_for("READY=1", timeout=5)
        assert "STATUS=serving" in [line for _, line in listener.lines()]
        assert listener.wait_for("WATCHDOG=1", count=10, timeout=5)

        monitor.progressing = False  # stuck from now on
        stuck_at = time.monotonic()
        wait_until(
            lambda: any(
                line.startswith("STATUS=the monitor thread has made no progress")
                for _, line in listener.lines()
            ),
            5,
            message="stuck reported",
        )
        reported = max(t for t, line in listener.lines() if line.startswith("STATUS=the monitor"))
        # Pings go on while the lack of progress is within the stale limit (when exactly they
        # stop is a rule of liveness.py, tested there with a clock), then not at all.
        assert listener.times("WATCHDOG=1", since=stuck_at), "no ping within the stale limit"
        quiet(listener, "WATCHDOG=1", reported, notifier.interval)

        monitor.progressing = True
        resumed = time.monotonic()
        assert listener.wait_for("WATCHDOG=1", count=3, timeout=5, since=resumed)
        assert listener.times("STATUS=serving", since=resumed), "status restored"

        monitor.alive = False  # a dead thread gets no pings either
        wait_until(
            lambda: any(
                line == "STATUS=the monitor thread is not running" for _, line in listener.lines()
            ),
            5,
            message="death reported",
        )
        dead = max(
            t for t, line in listener.lines() if line == "STATUS=the monitor thread is not running"
        )
        quiet(listener, "WATCHDOG=1", dead, notifier.interval)
    finally:
        notifier.stopping()
    assert listener.wait_for("STOPPING=1", timeout=5)
    stopped = listener.times("STOPPING=1")[0]
    monitor.alive = True
    quiet(listener, "WATCHDOG=1", stopped, notifier.interval)
    notifier.stopping()
    stays_false(
        lambda: len(listener.times("STOPPING=1")) > 1,
        notifier.interval * 10,
        "STOPPING=1 was sent twice",
    )


def test_stopping_before_ready_sends_stopping_only(path_listener):
    monitor = FakeMonitor()
    monitor.initialised.clear()
    notifier = Notifier(socket_address(path_listener.name), 0.05, monitor, stale_after=1)
    notifier.start("serving")
    notifier.stopping()
    assert path_listener.wait_for("STOPPING=1", timeout=5)
    monitor.initialised.set()
    # READY=1 would follow within the notifier's 0.5 s wait for initialisation.
    stays_false(
        lambda: bool(path_listener.times("READY=1")),
        0.5 + notifier.interval * 10,
        "READY=1 was sent after STOPPING=1",
    )


def test_a_notify_socket_this_module_cannot_speak_is_warned_and_ignored(caplog):
    env = {"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "2000000"}
    with caplog.at_level(logging.WARNING, logger="vmcontroller.notify"):
        notifier = Notifier.from_environ(FakeMonitor(), 10, env)
    assert not notifier.enabled and notifier.interval is None
    assert [r.getMessage() for r in caplog.records] == [
        "NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path or @abstract name: "
        "systemd will not hear from the controller"
    ]
    assert env == {}, "removed all the same"


def test_without_a_watchdog_ready_is_the_only_message(path_listener):
    monitor = FakeMonitor()
    notifier = Notifier(socket_address(path_listener.name), None, monitor, stale_after=1)
    notifier.start("serving")
    assert path_listener.wait_for("READY=1", timeout=5)
    wait_until(lambda: not notifier._thread.is_alive(), 5, message="the notifier to finish")
    notifier.stopping()
    assert path_listener.wait_for("STOPPING=1", timeout=5)
    assert [line for _, line in path_listener.lines()] == [
        "READY=1",
        "STATUS=serving",
        "STOPPING=1",
        "STATUS=shutting down",
    ]


class GatedMonitor(FakeMonitor):
    """Initialised, but its wait_initialised answers only when the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.gate = threading.Event()

    def wait_initialised(self, timeout: float | None = None) -> bool:
        self.asked.set()
        self.gate.wait(10)
        return True


def test_stopping_while_initialisation_completes_never_sends_ready(path_listener):
    """STOPPING=1 lands while the monitor's answer 'initialised' is on its way: READY=1 after
    STOPPING=1 would tell systemd a stopping service had just become ready."""
    monitor = GatedMonitor()
    notifier = Notifier(socket_address(path_listener.name), 0.05, monitor, stale_after=1)
    notifier.start("serving")
    assert monitor.asked.wait(5)
    stopper = threading.Thread(target=notifier.stopping, daemon=True)
    stopper.start()
    assert path_listener.wait_for("STOPPING=1", timeout=5)
    monitor.gate.set()  # "initialised", answered after the stop
    stopper.join(10)
    assert not stopper.is_alive() and not notifier._thread.is_alive()
    # A datagram of ours after the notifier's last one: once heard, all of its were too.
    notify.send("TEST=done", notifier.address)
    assert path_listener.wait_for("TEST=done", timeout=5)
    assert not path_listener.times("READY=1") and not path_listener.times("WATCHDOG=1")


# ------------------------------------------------------------------ a real controller


@contextmanager
def holding(lock) -> Iterator[None]:
    """Hold the VM's lock, as a long operation (or a hung libvirtd) would."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def assert_pings_resume(listener, why: str) -> None:
    released = time.monotonic()
    assert listener.wait_for("WATCHDOG=1", count=3, timeout=60, since=released), (
        f"pings resume {why}"
    )


def _controller_under_watchdog(domain, tmp_path, monkeypatch, listener, **overrides):
    from vmcontroller.server import Controller

    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    controller = Controller(
        build_config(
            {
                "vm_name": domain.name,
                "api_host": "127.0.0.1",
                "api_port": 0,
                "heartbeat_timeout": 600,
                "vm_startup_heartbeat_delay": 0.5,
                "heartbeat_check_interval": 0.5,
                "state_path": str(tmp_path / "state.db"),
                **overrides,
            }
        )
    )
    assert controller.probe is not None, "probed only under systemd's watchdog"
    return controller


@pytest.mark.libvirt
def test_a_controller_pings_while_its_monitor_works_and_not_when_it_is_stuck(
    domain, path_listener, tmp_path, monkeypatch
):
    """In-process controller on a real VM: READY=1 when the API answers, WATCHDOG=1 at half
    of WATCHDOG_USEC, no pings once the monitor thread is stuck (it waits for the VM's lock,
    held here, to carry out a recovery), pings again once it moves, STOPPING=1 at stop."""
    controller = _controller_under_watchdog(
        domain, tmp_path, monkeypatch, path_listener, heartbeat_timeout=2, virsh_timeout=30
    )
    assert "NOTIFY_SOCKET" not in os.environ, "not passed on to virsh"
    assert controller.notifier.interval == 0.1
    assert controller.notifier.stale_after == stale_limit(120 + 2 * 30, 5)
    controller.notifier.stale_after = 2.0  # the formula is tested above; keep this test short
    lock = controller.domain.locked()
    try:
        controller.start()
        assert path_listener.wait_for("READY=1", timeout=60)
        ready_at = path_listener.times("READY=1")[0]
        assert controller.monitor.initialised, "READY=1 means the API answers 200"
        assert path_listener.wait_for("WATCHDOG=1", count=10, timeout=10)
        pings = path_listener.times("WATCHDOG=1")
        assert pings[0] >= ready_at

        # No heartbeat arrives: the monitor sets out to revert the VM and waits for its
        # lock, which the test holds: the thread is alive but stuck.
        with holding(lock):
            wait_until(
                lambda: any(
                    line.startswith("STATUS=the monitor thread has made no progress")
                    for _, line in path_listener.lines()
                ),
                30,
                message="pings withheld",
            )
            stuck_since = controller.monitor.last_progress  # its last visit to the wait loop
            reported = max(
                t
                for t, line in path_listener.lines()
                if line.startswith("STATUS=the monitor thread has made no progress")
            )
            assert path_listener.times("WATCHDOG=1", since=stuck_since), (
                "pings go on within the stale limit"
            )
            assert controller.monitor.thread_alive
            quiet(path_listener, "WATCHDOG=1", reported, controller.notifier.interval)
        assert_pings_resume(path_listener, "once the monitor moves again")
    finally:
        controller.stop()
    assert path_listener.wait_for("STOPPING=1", timeout=5)


FAKE_VIRSH = """#!/bin/sh
# A virsh whose libvirtd hangs: every call blocks until the controller's timeout kills it.
exec sleep 3600
"""


def test_serve_under_a_hanging_virsh_is_ready_pings_and_says_stopping(abstract_listener, tmp_path):
    """The real `vmcontroller serve`, told through an abstract socket: every virsh call
    hangs until virsh_timeout (1 s), which is slow but progress: READY=1 still comes, pings
    keep coming beyond the stale limit (11 s), and SIGTERM sends STOPPING=1."""
    listener = abstract_listener
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "virsh").write_text(FAKE_VIRSH)
    (bindir / "virsh").chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vm_name": "vmctl-test-hanging",
                "api_host": "127.0.0.1",
                "api_port": 0,
                "virsh_timeout": 1,
                "virsh_long_timeout": 1,
                "heartbeat_timeout": 60,
                "state_path": str(tmp_path / "s.db"),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env.update(PATH=f"{bindir}:{env['PATH']}", NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="500000")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcontroller", "serve", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert listener.wait_for("READY=1", timeout=30), (tmp_path / "serve.log").read_text()
        ready_at = listener.times("READY=1")[0]
        limit = stale_limit(3, 5)
        # Slow is not stuck: pings go on past the stale limit, and no problem is reported.
        wait_until(
            lambda: any(t > ready_at + limit for t in listener.times("WATCHDOG=1")),
            limit + 10,
            0.1,
            "a ping after the stale limit",
        )
        assert not [line for _, line in listener.lines() if "no progress" in line]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert listener.wait_for("STOPPING=1", timeout=1)
    output = (tmp_path / "serve.log").read_text()
    assert "systemd watchdog: a ping every 0.25 s" in output
    assert "withholding" not in output, output


def _withheld_for_http(listener) -> bool:
    return any(
        line.startswith("STATUS=the HTTP server has not answered") for _, line in listener.lines()
    )


@pytest.mark.libvirt
def test_pings_stop_while_every_http_worker_is_stuck_and_resume_after(
    domain, path_listener, tmp_path, monkeypatch
):
    """The monitor is fine, but no heartbeat could get in: the four workers all wait for the
    VM's lock (held here) on behalf of staff requests. The pings stop; they resume when the
    workers are free again."""
    controller = _controller_under_watchdog(
        domain, tmp_path, monkeypatch, path_listener, api_threads=4, api_busy_timeout=120
    )
    controller.notifier.stale_after = 2.0  # the formula is tested above; keep this test short
    controller.probe.interval = 0.2
    lock = controller.domain.locked()
    try:
        controller.start()
        assert path_listener.wait_for("WATCHDOG=1", count=5, timeout=60)
        base = f"http://127.0.0.1:{controller.port}"
        with holding(lock):
            for _ in range(6):
                threading.Thread(
                    target=lambda: requests.post(f"{base}/api/v1/vm/stop", timeout=120), daemon=True
                ).start()
            wait_until(lambda: _withheld_for_http(path_listener), 30, message="pings withheld")
            assert controller.monitor.thread_alive
            assert controller.notifier.check().startswith("the HTTP server has not answered")
        assert_pings_resume(path_listener, "once the workers answer again")
    finally:
        controller.stop()


@pytest.mark.libvirt
def test_pings_stop_when_the_http_server_loop_is_gone(domain, path_listener, tmp_path, monkeypatch):
    controller = _controller_under_watchdog(domain, tmp_path, monkeypatch, path_listener)
    controller.notifier.stale_after = 2.0
    controller.probe.interval = 0.2
    try:
        controller.start()
        assert path_listener.wait_for("WATCHDOG=1", count=5, timeout=60)
        controller._close_http()  # the server's loop ends; the monitor goes on
        wait_until(lambda: _withheld_for_http(path_listener), 30, message="pings withheld")
        assert controller.monitor.thread_alive
    finally:
        controller.stop()
