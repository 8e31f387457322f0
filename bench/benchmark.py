"""The benchmark: ``scripts/bench [--quick] [--out FILE] [--compare FILE]``.

It creates two identical VMs of its own (``vmctl-bench-ctl-<random>`` for the controller,
``vmctl-bench-raw-<random>`` for libvirt's own floor, timed with virsh right after each
controller sample) on the real libvirtd, starts the controller as a separate process
(``python -m vmcontroller serve`` on 127.0.0.1, a free port, its own state file in a
temporary directory, a counting ``virsh`` stand-in first on its PATH), measures detection,
recovery, API latency, throughput (against a bare Flask app on waitress answering the same
bytes, bench/bare_app.py: the limit row), mixed load, concurrent restarts and the idle
cost, then removes everything it made, also on Ctrl-C, SIGTERM or an error. It prints a table
(each figure with how it was measured and its target) and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import load as loadgen
from bench import probes, screen_cost, stats
from bench.load import Client, Paced

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT = "/api/v1/heartbeat"
STATUS = "/api/v1/status"
RESTART = "/api/v1/vm/restart"


@dataclass(frozen=True)
class Plan:
    """How many samples each figure gets, and how long the load phases last."""

    mode: str
    raw_calls: int  # domstate, snapshot-list, ...
    deadline: int  # heartbeat-timeout samples
    destroy: int
    suspend: int
    api_requests: int  # sequential requests per endpoint
    throughput_s: float  # per concurrency level
    mixed_s: float
    concurrent_rounds: int
    idle_s: float
    heartbeat_timeout: float = 2.0  # > 1 s: the idle phase heartbeats at 1 Hz
    grace: float = 1.0  # vm_startup_heartbeat_delay: short, so samples are quick
    guest_hz: float = 4.0  # the simulated guest between phases
    mixed_heartbeat_hz: float = 50.0
    restart_every: float = 10.0
    concurrent_requests: int = 20
    throughput_clients: tuple[int, ...] = stats.LIMIT_LEVELS
    stream_clients: int = 200  # event streams that never read, in i.
    streams_s: float = 20.0  # heartbeats timed with them, and without them before
    screen_span_s: float = 30.0  # j.: each span with the screen watcher, and each without
    screen_pairs: int = 2  # so 60 s with it and 60 s without
    screen_shots: int = 30  # screenshots timed one by one
    screen_detect: int = 5  # frozen screens detected


# The idle window spans three of the controller's 60 s safety polls in a full run, so that
# virsh processes per minute is a rate between polls, not one call in a window of one poll.
FULL = Plan(
    "full",
    raw_calls=60,
    deadline=20,
    destroy=20,
    suspend=15,
    api_requests=3000,
    throughput_s=10,
    mixed_s=60,
    concurrent_rounds=5,
    idle_s=180,
)
QUICK = Plan(
    "quick",
    raw_calls=20,
    deadline=3,
    destroy=4,
    suspend=3,
    api_requests=400,
    throughput_s=2,
    mixed_s=13,
    concurrent_rounds=2,
    idle_s=15,
    streams_s=5,
    screen_span_s=8,
    screen_pairs=1,
    screen_shots=8,
    screen_detect=1,
)


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class PhaseFailed(Exception):
    pass


def running_again(
    watcher: probes.EventWatcher, since: int, after_time: float | None = None, timeout: float = 10
) -> probes.LifecycleEvent | None:
    """libvirt's 'Resumed' event after ``since``: a revert to a running snapshot reports
    'Started Snapshot' and, a millisecond later, 'Resumed Snapshot' once the CPUs run."""
    return watcher.wait_for(
        "Resumed",
        since=since,
        timeout=timeout,
        after_time=None if after_time is None else after_time - 0.002,
    )


class Benchmark:
    def __init__(
        self,
        plan: Plan,
        stack: ExitStack,
        keep: bool = False,
        load_tool: str = "auto",
        only: str | None = None,
    ):
        self.plan = plan
        self.only = only  # one phase alone ("screen"), for working on it
        self.settings: dict[str, Any] = {}
        self.use_wrk = load_tool == "wrk" or (
            load_tool == "auto" and loadgen.wrk_available() is not None
        )
        self.stack = stack
        self.keep = keep
        self.figures: dict[str, dict[str, Any]] = {}
        self.detail: dict[str, Any] = {}
        self.errors: list[str] = []
        self.phases: dict[str, float] = {}
        self.children: list[subprocess.Popen] = []
        self.controller: subprocess.Popen | None = None
        self.guest: Paced | None = None
        self.bare: subprocess.Popen | None = None  # the limit row's app, in e. only
        self.bare_port = 0
        self.rss_bare: int | None = None
        self.event_rss: dict[str, dict[str, int]] = {}

    # ============================================================ helpers

    def cleanup(self, what: str, action: Callable[[], Any]) -> None:
        """Register a clean-up step; run in reverse order, each one even if another fails."""

        def safe() -> None:
            try:
                action()
            except Exception as exc:  # clean-up goes on with the next step
                say(f"clean-up: {what} failed: {exc}")

        self.stack.callback(safe)

    def fig(self, name: str, figure: dict[str, Any]) -> None:
        self.figures[name] = figure

    @property
    def pid(self) -> int:
        assert self.controller is not None
        return self.controller.pid

    def api(self, method: str, path: str) -> tuple[int, Any]:
        return self.ctl.json(method, path)

    def last_event_id(self) -> int:
        status, body = self.api("GET", "/api/v1/events?limit=1")
        if status != 200:
            raise PhaseFailed(f"GET /api/v1/events answered {status}: {body}")
        return body["events"][0]["id"] if body["events"] else 0

    def wait_action(
        self, after_id: int, triggers: set[str], timeout: float, action: str = "revert"
    ) -> dict[str, Any]:
        """The first finished action of these triggers recorded after ``after_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api("GET", "/api/v1/events?limit=50")
            if status == 200:
                found = [
                    e
                    for e in body["events"]
                    if e["id"] > after_id and e["trigger"] in triggers and e["action"] == action
                ]
                if found:
                    first = min(found, key=lambda e: e["id"])
                    if first["outcome"] != "started":
                        return first
            time.sleep(0.1)
        raise PhaseFailed(f"no {action} with trigger {sorted(triggers)} within {timeout:g} s")

    def wait_quiet(self, settle: float = 0.4, timeout: float = 60) -> None:
        """VM running, no action under way; then a moment for the monitor's own re-check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            s1, status = self.api("GET", STATUS)
            s2, events = self.api("GET", "/api/v1/events?limit=1")
            if (
                s1 == 200
                and s2 == 200
                and status["vm_state"] == "running"
                and (not events["events"] or events["events"][0]["outcome"] != "started")
            ):
                time.sleep(settle)
                return
            time.sleep(0.1)
        raise PhaseFailed(
            f"the VM did not settle (running, no action under way) within {timeout:g} s"
        )

    def wait_enforced(self, timeout: float = 30) -> None:
        """Until the start-up grace after the last revert is over (timeout enforced)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api("GET", STATUS)
            if status == 200 and body["heartbeat"]["enabled"]:
                return
            time.sleep(0.1)
        raise PhaseFailed("the heartbeat timeout was not enforced again after the grace period")

    def check_alive(self) -> None:
        if self.controller is not None and self.controller.poll() is not None:
            raise PhaseFailed(
                f"the controller exited with status {self.controller.returncode}; "
                f"its log:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def event_stream_rss(self) -> dict[str, int]:
        """VmRSS in KiB of each `virsh event --loop` child of the controller, by command."""
        found = {}
        for child in probes.children(self.pid):
            argv = probes.cmdline(child)
            if {"event", "--loop"} <= set(argv.split()):
                try:
                    found[f"{child} {argv}"] = probes.vm_rss_kib(child)
                except (OSError, RuntimeError):  # it ended meanwhile
                    continue
        return found

    def log_size(self) -> int:
        return self.stderr_path.stat().st_size

    def phase(self, name: str, body: Callable[[], None], needs_controller: bool = True) -> None:
        say(f"{name} ...")
        started = time.monotonic()
        try:
            if needs_controller:
                self.check_alive()
            body()
        except Exception as exc:
            message = f"{name}: {type(exc).__name__}: {exc}"
            self.errors.append(message)
            say(f"FAILED {message}")
            traceback.print_exc(file=sys.stderr)
        else:
            say(f"{name} done in {time.monotonic() - started:.0f} s")
        finally:
            self.phases[name] = round(time.monotonic() - started, 1)

    # ============================================================ set-up

    def setup_work(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="vmctl-bench-"))
        if self.keep:
            say(f"keeping the work directory {self.work}")
        else:
            self.cleanup(
                "remove the work directory",
                lambda: subprocess.run(["rm", "-rf", str(self.work)], check=False),
            )

    def setup(self) -> None:
        self.setup_work()
        self.virsh_log = self.work / "virsh-calls.log"
        self.stand_in = probes.write_stand_in(self.work / "bin", self.virsh_log)
        # Two identical VMs: the controller watches the first; the raw virsh floor is
        # measured on the second, interleaved with the controller's samples, so that the
        # load of this shared machine weighs on both alike.
        self.domain = probes.BenchDomain("ctl")
        self.raw_domain = probes.BenchDomain("raw")
        for vm in (self.domain, self.raw_domain):
            self.cleanup(f"remove VM {vm.name}", vm.remove)
            say(f"creating VM {vm.name}")
            vm.create()
        self.detail["vms"] = [self.domain.name, self.raw_domain.name]
        self.raw: dict[str, list[float]] = {
            k: [] for k in ("running", "shutoff", "paused", "destroy", "suspend")
        }
        # From the start of the raw revert to libvirt's 'Resumed' event of the second VM;
        # None where that event did not come (kept, so that samples stay paired).
        self.raw_to_running: dict[str, list[float | None]] = {
            k: [] for k in ("running", "shutoff", "paused")
        }
        self.watcher = probes.EventWatcher(self.domain.name)
        self.cleanup("stop the event watcher", self.watcher.close)
        self.raw_watcher = probes.EventWatcher(self.raw_domain.name)
        self.cleanup("stop the second event watcher", self.raw_watcher.close)
        self.cleanup("stop helper processes", self._stop_children)

    def _stop_children(self) -> None:
        for proc in self.children:
            probes.stop_process(proc, timeout=5)

    def start_controller(self) -> None:
        self.port = free_port()
        self.settings = {
            "vm_name": self.domain.name,
            "snapshot_name": self.domain.snapshot,
            "api_host": "127.0.0.1",
            "api_port": self.port,
            "heartbeat_timeout": self.plan.heartbeat_timeout,
            "vm_startup_heartbeat_delay": self.plan.grace,
            "heartbeat_check_interval": 1.0,
            "state_poll_interval": 60.0,
            "log_level": "INFO",
            "libvirt_uri": probes.URI,
            "virsh_timeout": 30,
            "state_path": str(self.work / "state.db"),
            # The benchmark reverts the VM on purpose, over and over: the restart-loop
            # guard must not stop it (its own cost is the same either way).
            "max_recoveries": 1000,
            "recovery_window": 60,
            # i. opens this many event streams; each has a thread of its own.
            "api_stream_clients": max(32, self.plan.stream_clients),
        }
        config = self.work / "config.yaml"
        config.write_text(json.dumps(self.settings, indent=2))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
        env["PATH"] = f"{self.stand_in.parent}:{env.get('PATH', '/usr/bin:/bin')}"
        python = REPO / ".venv" / "bin" / "python"
        self.python = str(python if python.exists() else Path(sys.executable))
        self.stderr_path = self.work / "controller.log"
        say(f"starting the controller on 127.0.0.1:{self.port}")
        self.controller = probes.spawn(
            [self.python, "-m", "vmcontroller", "serve", "--config", str(config)],
            stdout=open(self.work / "controller.out", "wb"),  # noqa: SIM115 (the child's)
            stderr=open(self.stderr_path, "wb"),  # noqa: SIM115
            env=env,
            cwd=str(self.work),
        )
        self.cleanup("stop the controller", self.stop_controller)
        self.ctl = Client(self.port, timeout=60)
        began = time.monotonic()
        while True:
            self.check_alive()
            status, _ = self.api("GET", STATUS)
            if status == 200:
                break
            if time.monotonic() - began > 120:
                raise PhaseFailed("the controller did not answer within 120 s:\n" + self.log_tail())
            time.sleep(0.05)
        self.wait_quiet()
        self.detail["controller_ready_s"] = round(time.monotonic() - began, 2)
        self.rss_after_start = probes.vm_rss_kib(self.pid)
        self.event_rss["after_start"] = self.event_stream_rss()
        self.guest = Paced(self.port, HEARTBEAT, self.plan.guest_hz)
        self.guest.start()
        self.cleanup("stop the simulated guest", self.guest.stop)

    def stop_controller(self) -> None:
        if self.controller is None or self.controller.poll() is not None:
            return
        began = time.monotonic()
        code = probes.stop_process(self.controller, timeout=15)
        self.detail["controller_shutdown"] = {
            "exit_status": code,
            "seconds": round(time.monotonic() - began, 2),
        }

    # ============================================================ a. raw libvirt

    def raw_revert(self, kind: str) -> None:
        """One raw sample on the second VM: bring it to the state, time the revert."""
        name, snap = self.raw_domain.name, self.raw_domain.snapshot
        if kind == "shutoff":
            self.raw["destroy"].append(
                probes.timed(probes.virsh_argv("destroy", "--domain", name)) * 1000
            )
        elif kind == "paused":
            self.raw["suspend"].append(
                probes.timed(probes.virsh_argv("suspend", "--domain", name)) * 1000
            )
        since = self.raw_watcher.mark()
        began = time.time()
        self.raw[kind].append(
            probes.timed(
                probes.virsh_argv(
                    "snapshot-revert", "--domain", name, "--snapshotname", snap, "--running"
                )
            )
            * 1000
        )
        running = running_again(self.raw_watcher, since)
        self.raw_to_running[kind].append(None if running is None else (running.time - began) * 1000)

    RAW_HOW = (
        "wall time of the virsh process run by the benchmark (spawn to exit, the same "
        "`virsh -q -c URI ...` argv as the controller) on the benchmark's second VM, "
        "identical to the controller's; one sample right after each controller sample "
        "of b. (controller quiet), so both see the same machine load"
    )

    def raw_figure(self, kind: str) -> None:
        labels = {
            "running": "snapshot-revert --running, VM running",
            "shutoff": "snapshot-revert --running, VM shut off",
            "paused": "snapshot-revert --running, VM paused",
            "destroy": "destroy",
            "suspend": "suspend",
        }
        self.fig(
            f"raw_{kind}", stats.sampled("a", labels[kind], "ms", self.raw[kind], self.RAW_HOW)
        )
        if kind in self.raw_to_running:
            self.fig(
                f"raw_{kind}_to_running",
                stats.sampled(
                    "a",
                    f"{labels[kind]}: start -> libvirt 'Resumed'",
                    "ms",
                    [v for v in self.raw_to_running[kind] if v is not None],
                    "from the moment the benchmark starts `virsh snapshot-revert --running` on its "
                    "second VM to libvirt's 'Resumed' lifecycle event of that VM (the benchmark's "
                    "own `virsh event --loop --timestamp` on it): libvirt's own time to a running "
                    "VM, the floor of any recovery; the pairs with b. alternate which goes first",
                ),
            )

    def raw_floor(self) -> None:
        name = self.raw_domain.name
        for kind in ("running", "shutoff", "paused"):  # warm-up, not kept
            self.raw_revert(kind)
        for samples in (*self.raw.values(), *self.raw_to_running.values()):
            samples.clear()
        domstate, snaplist, poll, through = [], [], [], []
        stand_in = str(self.stand_in)
        for i in range(self.plan.raw_calls + 3):
            w = probes.timed(probes.virsh_argv("domstate", "--domain", name))
            x = probes.timed(probes.virsh_argv("snapshot-list", "--domain", name, "--name"))
            y = probes.timed(
                probes.virsh_argv(f"domstate --domain {name}; snapshot-list --domain {name} --name")
            )
            z = probes.timed(probes.virsh_argv("domstate", "--domain", name, binary=stand_in))
            if i >= 3:
                for samples, value in ((domstate, w), (snaplist, x), (poll, y), (through, z)):
                    samples.append(value * 1000)
        how = (
            "wall time of the virsh process (spawn to exit, `virsh -q -c URI ...` as the "
            "controller runs it), before the controller starts; kinds interleaved, first "
            "3 rounds discarded"
        )
        self.fig("raw_domstate", stats.sampled("a", "domstate", "ms", domstate, how))
        self.fig(
            "raw_snapshot_list", stats.sampled("a", "snapshot-list --name", "ms", snaplist, how)
        )
        self.fig(
            "raw_poll",
            stats.sampled(
                "a",
                "'domstate; snapshot-list' (one process)",
                "ms",
                poll,
                how + "; this is the controller's safety poll",
            ),
        )
        self.fig(
            "raw_domstate_stand_in",
            stats.sampled(
                "a",
                "domstate through the counting stand-in",
                "ms",
                through,
                "as above, through the /bin/sh stand-in put first on the controller's PATH to "
                "count its virsh calls; the difference to 'domstate' is what the stand-in adds to "
                "each of the controller's virsh calls in this run",
            ),
        )

    # ============================================================ b/c. detection, recovery

    def _paired(self, samples: int, controller: Callable[[], None], kind: str) -> None:
        """``samples`` pairs of one controller sample and one raw revert of the same kind on
        the second VM; which goes first alternates, so neither always meets the machine
        warmer or later in a load swing."""
        for i in range(samples):
            if i % 2 == 0:
                controller()
                self.wait_quiet()
                self.raw_revert(kind)
            else:
                self.wait_quiet()
                self.raw_revert(kind)
                controller()

    def _running_after(self, since: int, failure: float) -> float | None:
        """ms from the failure (wall clock) to libvirt's 'Resumed' event that follows it."""
        event = running_again(self.watcher, since, after_time=failure)
        return None if event is None else (event.time - failure) * 1000

    def detect_deadline(self) -> None:
        timeout = self.plan.heartbeat_timeout
        detect, recovery, to_running, bad = [], [], [], []
        assert self.guest is not None

        def sample() -> None:
            self.wait_quiet()
            since = self.watcher.mark()
            self.guest.pause()
            try:
                hb = Client(self.port)
                self.wait_enforced()
                mark = self.last_event_id()
                status, body = hb.json("GET", HEARTBEAT)  # the last heartbeat
                hb.close()
                if status != 200:
                    raise PhaseFailed(f"heartbeat answered {status}")
                last = iso_to_epoch(body["details"]["last_heartbeat"])
                # Stay off the API until the revert should be over: a poll right at the
                # deadline would compete with the monitor thread for the interpreter.
                time.sleep(max(0.0, last + timeout + 0.9 - time.time()))
                event = self.wait_action(mark, {"heartbeat_timeout"}, timeout=30)
            finally:
                self.guest.resume()
            began = iso_to_epoch(event["time"])
            if event["outcome"] != "succeeded":
                bad.append(event)
            detect.append((began - (last + timeout)) * 1000)
            recovery.append(event["duration"] * 1000)
            to_running.append(self._running_after(since, last + timeout))

        self._paired(self.plan.deadline, sample, "running")
        self.raw_figure("running")
        self.fig(
            "detect_deadline",
            stats.sampled(
                "b",
                "heartbeat deadline -> revert start",
                "ms",
                detect,
                f"the benchmark stops heartbeating (timeout {timeout:g} s, after the grace period); "
                f"deadline = the controller's own time of the last heartbeat (its answer's "
                f"last_heartbeat) + heartbeat_timeout; revert start = the time the controller "
                f"records for the revert in GET /api/v1/events (trigger heartbeat_timeout); both "
                f"wall clock of the controller process",
                failed=bad,
            ),
        )
        self._recovery(
            "heartbeat_timeout", "VM running", "heartbeat deadline", recovery, to_running, "running"
        )

    def detect_destroy(self) -> None:
        detect, from_command, recovery, to_running, bad = [], [], [], [], []

        def sample() -> None:
            self.wait_quiet()
            mark, since = self.last_event_id(), self.watcher.mark()
            issued = time.time()
            probes.virsh("destroy", "--domain", self.domain.name)
            stopped = self.watcher.wait_for("Stopped", "Destroyed", since=since, timeout=10)
            if stopped is None:
                raise PhaseFailed("no 'Stopped Destroyed' lifecycle event within 10 s")
            time.sleep(0.6)  # off the API while the controller should be reverting
            event = self.wait_action(mark, {"vm_stopped", "vm_crashed"}, timeout=30)
            began = iso_to_epoch(event["time"])
            if event["outcome"] != "succeeded":
                bad.append(event)
            detect.append((began - stopped.time) * 1000)
            from_command.append((began - issued) * 1000)
            recovery.append(event["duration"] * 1000)
            to_running.append(self._running_after(stopped.index + 1, stopped.time))

        self._paired(self.plan.destroy, sample, "shutoff")
        self.raw_figure("shutoff")
        self.raw_figure("destroy")
        self.fig(
            "detect_destroy",
            stats.sampled(
                "b",
                "virsh destroy (event) -> revert start",
                "ms",
                detect,
                "an external `virsh destroy` by the benchmark; from libvirt's 'Stopped Destroyed' "
                "lifecycle event, as timestamped by the benchmark's own `virsh event --loop "
                "--timestamp` (ms resolution), to the revert start the controller records in "
                "GET /api/v1/events (trigger vm_stopped)",
                failed=bad,
            ),
        )
        self.fig(
            "detect_destroy_command",
            stats.sampled(
                "b",
                "`virsh destroy` started -> revert start",
                "ms",
                from_command,
                "as above, but from the moment the benchmark started `virsh destroy` (includes "
                "libvirt's destroy itself, see a.)",
            ),
        )
        self._recovery(
            "vm_stopped",
            "VM shut off",
            "'Stopped Destroyed' event",
            recovery,
            to_running,
            "shutoff",
        )

    def detect_suspend(self) -> None:
        timeout = self.plan.heartbeat_timeout
        detect, recovery, to_running, bad = [], [], [], []

        def sample() -> None:
            self.wait_quiet()
            mark, since = self.last_event_id(), self.watcher.mark()
            probes.virsh("suspend", "--domain", self.domain.name)
            suspended = self.watcher.wait_for("Suspended", "Paused", since=since, timeout=10)
            if suspended is None:
                raise PhaseFailed("no 'Suspended Paused' lifecycle event within 10 s")
            time.sleep(timeout + 0.9)
            event = self.wait_action(mark, {"vm_paused"}, timeout=30)
            began = iso_to_epoch(event["time"])
            if event["outcome"] != "succeeded":
                bad.append(event)
            detect.append((began - (suspended.time + timeout)) * 1000)
            recovery.append(event["duration"] * 1000)
            to_running.append(self._running_after(suspended.index + 1, suspended.time + timeout))

        self._paired(self.plan.suspend, sample, "paused")
        self.raw_figure("paused")
        self.raw_figure("suspend")
        self.fig(
            "detect_suspend",
            stats.sampled(
                "b",
                "(virsh suspend event + timeout) -> revert start",
                "ms",
                detect,
                f"an external `virsh suspend`; a pause is only acted on after heartbeat_timeout "
                f"({timeout:g} s) of pause, so this is the time from libvirt's 'Suspended Paused' "
                f"event (own `virsh event --loop --timestamp`) plus heartbeat_timeout to the revert "
                f"start recorded in GET /api/v1/events (trigger vm_paused); the simulated guest "
                f"keeps heartbeating meanwhile so that the pause, not a heartbeat timeout, is what "
                f"the controller acts on",
                failed=bad,
            ),
        )
        self._recovery(
            "vm_paused",
            "VM paused",
            "'Suspended Paused' event + heartbeat_timeout",
            recovery,
            to_running,
            "paused",
        )

    BOUND = (
        "the bound is 1.00x: libvirt's own revert of the same VM in the same state; a "
        "figure near it means that once the failure is there, the VM runs again about as "
        "soon as libvirt alone could make it, and what lies above 1.00x is the "
        "controller's detection and its own work"
    )

    def _recovery(
        self,
        trigger: str,
        state: str,
        failure: str,
        recovery: list[float],
        to_running: list[float | None],
        kind: str,
    ) -> None:
        raw = self.raw_to_running[kind]
        self.fig(
            f"recovery_{trigger}",
            stats.sampled(
                "c",
                f"{trigger} ({state}): failure -> running",
                "ms",
                [v for v in to_running if v is not None],
                f"from the failure ({failure}) to libvirt's 'Resumed' lifecycle event of the VM, "
                f"both from the benchmark's own `virsh event --loop --timestamp`: detection and "
                f"recovery as a visitor sees them; compare a. "
                f"'{self.figures.get(f'raw_{kind}_to_running', {}).get('label')}'",
            ),
        )
        self.fig(
            f"recovery_{trigger}_recorded",
            stats.sampled(
                "c",
                f"{trigger} ({state}): recorded revert duration",
                "ms",
                recovery,
                f"the duration the controller records for the revert (GET /api/v1/events): its "
                f"`virsh snapshot-revert --running`, whose exit status it trusts; compare a. "
                f"'{self.figures.get(f'raw_{kind}', {}).get('label')}'",
            ),
        )
        pairs = [c / r for c, r in zip(to_running, raw) if c is not None and r]
        spread = stats.spread(pairs)
        self.fig(
            f"recovery_ratio_{trigger}",
            stats.sampled(
                "c",
                f"{trigger}: failure -> running / raw, per pair (p25-p75 "
                f"{stats.fmt(spread['p25'], 'x')}-{stats.fmt(spread['p75'], 'x')}, min-max "
                f"{stats.fmt(spread['min'], 'x')}-{stats.fmt(spread['max'], 'x')})",
                "x",
                pairs,
                f"each controller sample of b. divided by the raw revert of a {state} on the "
                f"second VM timed next to it, from its start to libvirt's 'Resumed' event; the "
                f"pairs alternate which goes first; {len(pairs)} of {len(to_running)} pairs complete "
                f"(a pair without its 'Resumed' event is left out); {self.BOUND}",
                **spread,
            ),
        )
        ratios = [
            f["median"]
            for n, f in self.figures.items()
            if n.startswith("recovery_ratio_") and f.get("median") is not None
        ]
        self.figures.pop("recovery_event_ratio", None)  # printed after every trigger's
        self.fig(
            "recovery_event_ratio",
            stats.scalar(
                "c",
                "(failure -> running) / (raw revert -> running), worst trigger",
                "x",
                max(ratios) if ratios else None,
                f"the largest median of the per-trigger ratios above (heartbeat timeout: running "
                f"VM; destroy: shut off VM; suspend: paused VM); {self.BOUND}",
            ),
        )

    # ============================================================ d. API latency

    def api_latency(self) -> None:
        n = self.plan.api_requests
        status, status_errors = loadgen.sequential(self.port, "GET", STATUS, n)
        heartbeat, heartbeat_errors = loadgen.sequential(self.port, "GET", HEARTBEAT, n)
        how = (
            f"{n} back-to-back requests on one keep-alive HTTP/1.1 connection from the "
            f"benchmark (Python http.client), after 50 not counted; send to last byte; the "
            f"simulated guest heartbeats at {self.plan.guest_hz:g} Hz meanwhile"
        )
        self.fig(
            "api_status",
            stats.sampled(
                "d",
                "GET /api/v1/status",
                "ms",
                status,
                how,
                keep_samples=False,
                errors=status_errors,
            ),
        )
        self.fig(
            "api_heartbeat",
            stats.sampled(
                "d",
                "GET /api/v1/heartbeat",
                "ms",
                heartbeat,
                how,
                keep_samples=False,
                errors=heartbeat_errors,
            ),
        )

    # ============================================================ e. throughput

    def _load(
        self, path: str, clients: int, duration: float, port: int | None = None
    ) -> subprocess.Popen:
        port = self.port if port is None else port
        if self.use_wrk:
            argv = loadgen.wrk_argv(port, path, clients, duration)
        else:
            argv = [
                self.python,
                "-m",
                "bench.load",
                "--port",
                str(port),
                "--path",
                path,
                "--clients",
                str(clients),
                "--duration",
                str(duration),
            ]
        proc = probes.spawn(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO)
        )
        self.children.append(proc)
        return proc

    def _load_result(self, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
        out, _ = proc.communicate(timeout=timeout)
        self.children.remove(proc)
        if proc.returncode != 0:
            raise PhaseFailed(f"{proc.args[0]} failed: {out[-2000:]}")
        return loadgen.parse_wrk(out) if self.use_wrk else json.loads(out)

    def load_tool(self) -> str:
        if self.use_wrk:
            return f"wrk {loadgen.wrk_version()}"
        return "the bounded Python load generator (bench/load.py)"

    def start_bare_app(self, bodies: dict[str, bytes]) -> tuple[subprocess.Popen, int]:
        """The limit row's server (bench/bare_app.py) as a process of its own, answering
        ``bodies``; returns once it answers each path with its body."""
        path = self.work / "bare-bodies.json"
        path.write_text(json.dumps({k: v.decode("utf-8") for k, v in bodies.items()}))
        port = free_port()
        out = self.work / "bare-app.out"
        proc = probes.spawn(
            [self.python, "-m", "bench.bare_app", "--port", str(port), "--bodies", str(path)],
            stdout=open(out, "wb"),  # noqa: SIM115 (the child's)
            stderr=open(self.work / "bare-app.log", "wb"),  # noqa: SIM115
            cwd=str(REPO),
        )
        self.cleanup("stop the bare app", lambda: probes.stop_process(proc, timeout=5))
        client = Client(port, timeout=10)
        deadline = time.monotonic() + 60
        waiting = dict(bodies)
        while waiting:
            if proc.poll() is not None:
                raise PhaseFailed(
                    f"the bare app exited with status {proc.returncode}: "
                    f"{(self.work / 'bare-app.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise PhaseFailed("the bare app did not answer within 60 s")
            for route, body in list(waiting.items()):
                status, _, got = client.request("GET", route)
                if status == 200 and got != body:
                    raise PhaseFailed(
                        f"the bare app answers {route} with {got!r}, not the controller's {body!r}"
                    )
                if status == 200:
                    del waiting[route]
            if waiting:
                time.sleep(0.05)
        client.close()
        return proc, port

    def _run_load(self, side: str, path: str, clients: int) -> dict[str, Any]:
        """One closed-loop run against the controller or the bare app, with the CPU (and,
        for the controller, the log) it cost that server."""
        if side == "controller":
            pid, port = self.pid, self.port
        else:
            assert self.bare is not None
            pid, port = self.bare.pid, self.bare_port
        log_before = self.log_size() if side == "controller" else 0
        cpu_before = probes.cpu_sample(pid)
        proc = self._load(path, clients, self.plan.throughput_s, port=port)
        result = self._load_result(proc, self.plan.throughput_s + 60)
        result["cpu_s"] = round(probes.cpu_sample(pid).total - cpu_before.total, 3)
        if side == "controller":
            result["log_bytes_written"] = self.log_size() - log_before
            self.check_alive()
        return result

    LIMIT_HOW = (
        "{tool}: as many keep-alive connections as stated, each in a closed loop, {seconds:g} s "
        "per run, GET on the endpoint; in the same run, per endpoint and level, once against "
        "the controller and once against the limit row, a bare Flask app on waitress "
        "(bench/bare_app.py, its own process, waitress's default settings but host and port: "
        "4 threads) that answers the very bytes the controller answered at the start of the "
        "phase and does nothing else; one server at a time, the other without load (the "
        "simulated guest keeps heartbeating the controller at {hz:g} Hz throughout), and which "
        "goes first alternates from level to level; the tool shares the machine's {cores} cores "
        "with the server; p99 latency and errors (socket errors + non-2xx answers) as the tool "
        "reports them"
    )
    RATIO_HOW = (
        "the two runs of the same endpoint and level above: req/s of the controller / req/s of "
        "the bare app (higher is better, target >= {share:g}x) and p99 of the controller / p99 "
        "of the bare app (lower is better, target <= 1/{share:g}x); the bare app is the limit "
        "this stack (Flask, waitress, Python, this machine) sets in this very run, so the "
        "ratios hold across machines where absolute figures do not"
    )

    def throughput(self) -> None:
        bodies = {}
        for path in (HEARTBEAT, STATUS):
            status, _, body = self.ctl.request("GET", path)
            if status != 200:
                raise PhaseFailed(f"GET {path} answered {status}: {body[:500]!r}")
            bodies[path] = body
        self.bare, self.bare_port = self.start_bare_app(bodies)
        self.detail["limit_row"] = {
            "bodies_bytes": {k: len(v) for k, v in bodies.items()},
            "bare_app": json.loads((self.work / "bare-app.out").read_text().splitlines()[0]),
            "controller": probes.controller_waitress(
                self.python, self.settings, self.work, cwd=REPO
            ),
            "order": [],
        }
        tool = self.load_tool()
        how = self.LIMIT_HOW.format(
            tool=tool, seconds=self.plan.throughput_s, hz=self.plan.guest_hz, cores=os.cpu_count()
        )
        runs: dict[tuple[str, int, str], dict[str, Any]] = {}
        level = 0
        for endpoint, path in (("heartbeat", HEARTBEAT), ("status", STATUS)):
            for clients in self.plan.throughput_clients:
                sides = ("controller", "bare") if level % 2 == 0 else ("bare", "controller")
                level += 1
                self.detail["limit_row"]["order"].append(f"{endpoint} c{clients}: {sides[0]} first")
                for side in sides:
                    runs[endpoint, clients, side] = self._run_load(side, path, clients)
                    time.sleep(0.5)
        self.rss_bare = probes.vm_rss_kib(self.bare.pid)
        probes.stop_process(self.bare, timeout=5)
        self._throughput_figures(runs, how)
        self._web_layer_cost()

    def _web_layer_cost(self) -> None:
        """The web layer's work per request without HTTP (bench/wsgi_cost.py): a figure
        the machine's load hardly moves, to tell our work from the stack's."""
        out = subprocess.run(
            [self.python, "-m", "bench.wsgi_cost", "--bodies", str(self.work / "bare-bodies.json")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(REPO),
        )
        if out.returncode != 0:
            raise PhaseFailed(f"bench.wsgi_cost failed: {out.stderr[-2000:]}")
        found = json.loads(out.stdout)
        how = (
            "bench/wsgi_cost.py, a process of its own: the controller's Flask app (middleware, "
            "routes, errors) over a stub of its Controls protocol answering the bodies above, "
            "and the bare app, each called as a WSGI app in-process (no sockets, no waitress), "
            f"{found['rounds']} alternated rounds of {found['requests_per_round']} requests; "
            "the fastest round; the difference is the web layer's own work per request"
        )
        for endpoint, path in (("heartbeat", HEARTBEAT), ("status", STATUS)):
            mine, bare = found[path]["controller"], found[path]["bare"]
            self.fig(
                f"wsgi_{endpoint}",
                stats.scalar(
                    "e",
                    f"web layer, {endpoint}: controller app per request (bare app {bare:.1f} us)",
                    "us",
                    mine,
                    how,
                    bare_us=bare,
                    extra_us=round(mine - bare, 2),
                    rounds_us=found[path]["all_rounds_us"],
                ),
            )

    def _throughput_figures(
        self, runs: dict[tuple[str, int, str], dict[str, Any]], how: str
    ) -> None:
        names = {
            ("heartbeat", "controller"): "throughput_c{n}",
            ("heartbeat", "bare"): "throughput_bare_c{n}",
            ("status", "controller"): "status_throughput_c{n}",
            ("status", "bare"): "status_throughput_bare_c{n}",
        }
        for (endpoint, clients, side), result in runs.items():
            who = "controller" if side == "controller" else "limit row, bare app"
            plural = "s" if clients > 1 else ""
            self.fig(
                names[endpoint, side].format(n=clients),
                stats.scalar(
                    "e",
                    f"{who}: {endpoint} req/s, {clients} connection{plural} "
                    f"(p99 {stats.fmt(result.get('p99_ms'), 'ms')}, {result['errors']} errors)",
                    "req/s",
                    result["rps"],
                    how,
                    server=side,
                    endpoint=endpoint,
                    clients=clients,
                    p50_ms=result.get("p50_ms"),
                    p99_ms=result.get("p99_ms"),
                    errors=result["errors"],
                    requests=result["requests"],
                    cpu_s=result["cpu_s"],
                    tool_output=result,
                ),
            )
        ratio_how = self.RATIO_HOW.format(share=stats.LIMIT_SHARE)
        for key in stats.LIMIT_KEYS:
            endpoint, measure, _, level = key.split("_")
            clients = int(level[1:])
            mine, bare = runs[endpoint, clients, "controller"], runs[endpoint, clients, "bare"]
            field = "rps" if measure == "rps" else "p99_ms"
            what = "req/s" if measure == "rps" else "p99"
            self.fig(
                key,
                stats.scalar(
                    "e",
                    f"{endpoint} {what}, {clients} connection{'s' if clients > 1 else ''}: "
                    f"controller / bare app",
                    "x",
                    stats.ratio(mine.get(field), bare.get(field)),
                    ratio_how,
                    controller=mine.get(field),
                    bare_app=bare.get(field),
                ),
            )
        for endpoint in stats.LIMIT_ENDPOINTS:
            mine, bare = (
                [r for (e, _, side), r in runs.items() if (e, side) == (endpoint, who)]
                for who in ("controller", "bare")
            )
            requests = sum(r["requests"] for r in mine)
            cpu_ms = sum(r["cpu_s"] for r in mine) * 1000 / max(1, requests)
            bare_ms = (
                sum(r["cpu_s"] for r in bare) * 1000 / max(1, sum(r["requests"] for r in bare))
            )
            suffix = "" if endpoint == "heartbeat" else f"_{endpoint}"  # continuity
            self.fig(
                f"throughput_cpu{suffix}",
                stats.scalar(
                    "e",
                    f"controller CPU per {endpoint} request (bare app: {stats.fmt(bare_ms, 'ms')})",
                    "ms",
                    cpu_ms,
                    f"utime+stime from /proc of the server over all {requests} {endpoint} requests "
                    f"of its runs above (the controller's with its children, the `virsh event` "
                    f"stream among them), per request",
                    bare_app_ms=bare_ms,
                ),
            )
            written = sum(r["log_bytes_written"] for r in mine)
            self.fig(
                f"throughput_log{suffix}",
                stats.scalar(
                    "e",
                    f"controller log written during its {endpoint} runs",
                    "B",
                    written,
                    f"growth of the controller's stderr (log_level INFO) while its {endpoint} runs "
                    f"lasted ({requests} requests, {written / max(1, requests):.0f} B per request): "
                    f"a per-request line or waitress's queue-depth warning would show here",
                ),
            )

    # ============================================================ f. mixed load

    def mixed(self) -> None:
        assert self.guest is not None
        plan = self.plan
        self.wait_quiet()
        restarts: list[tuple[int, float]] = []
        stop = threading.Event()

        def restarter() -> None:
            client = Client(self.port, timeout=120)
            began = time.monotonic()
            k = 0
            while True:
                at = began + 1.5 + k * plan.restart_every
                if at > began + plan.mixed_s - 1 or stop.wait(max(0.0, at - time.monotonic())):
                    break
                status, took, _ = client.request("POST", RESTART)
                restarts.append((status, took * 1000))
                k += 1
            client.close()

        mark = self.last_event_id()
        beats = Paced(self.port, HEARTBEAT, plan.mixed_heartbeat_hz)
        thread = threading.Thread(target=restarter, daemon=True)
        self.guest.pause()  # the 50 Hz heartbeat client plays the guest meanwhile
        try:
            pollers = self._load(STATUS, 4, plan.mixed_s + 1)
            time.sleep(0.3)
            beats.start()
            thread.start()
            time.sleep(plan.mixed_s)
        finally:
            self.guest.resume()
            stop.set()
            beats.stop()
            thread.join(130)
        polls = self._load_result(pollers, 60)
        status, body = self.api("GET", "/api/v1/events?limit=50")
        timeouts = [
            e for e in (body or {}).get("events", []) if e["id"] > mark and e["trigger"] != "api"
        ]
        self.fig(
            "mixed_heartbeat",
            stats.sampled(
                "f",
                "GET /api/v1/heartbeat under mixed load",
                "ms",
                beats.latencies,
                f"one heartbeat client at {plan.mixed_heartbeat_hz:g} Hz (send to answer) for "
                f"{plan.mixed_s:g} s while 4 clients poll {STATUS} in a closed loop "
                f"({self.load_tool()}, {polls['rps']:.0f} polls/s reached) and one client POSTs "
                f"{RESTART} every {plan.restart_every:g} s ({len(restarts)} restarts)",
                keep_samples=False,
                errors=beats.errors,
                p99_from_schedule_ms=stats.percentile(beats.from_schedule, 99),
                status_polls=polls,
                restarts=[{"status": s, "ms": round(ms, 1)} for s, ms in restarts],
                automatic_recoveries_meanwhile=len(timeouts),
            ),
        )
        self.fig(
            "mixed_restart",
            stats.sampled(
                "f",
                "POST /api/v1/vm/restart under mixed load",
                "ms",
                [ms for _, ms in restarts],
                "client wall time of each restart in the mixed load (the answer comes once the VM "
                "runs again); compare a. 'snapshot-revert --running, VM running'",
                errors=sum(1 for s, _ in restarts if s != 200),
            ),
        )

    # ============================================================ g. concurrency

    def concurrency(self) -> None:
        n = self.plan.concurrent_requests
        walls, reverts, recorded, per_request, errors = [], [], [], [], 0
        for _ in range(self.plan.concurrent_rounds):
            self.wait_quiet(settle=0.8)
            mark, since = self.last_event_id(), self.watcher.mark()
            clients = [Client(self.port, timeout=120) for _ in range(n)]
            for c in clients:
                c.connect()
            barrier = threading.Barrier(n + 1)
            answers: list[tuple[int, float]] = []
            lock = threading.Lock()

            # The threads end within this round (joined below): the names are this round's.
            def send(client: Client) -> None:
                barrier.wait()  # noqa: B023
                status, _, _ = client.request("POST", RESTART)
                with lock:  # noqa: B023
                    answers.append((status, time.perf_counter()))  # noqa: B023

            threads = [threading.Thread(target=send, args=(c,), daemon=True) for c in clients]
            for t in threads:
                t.start()
            barrier.wait()
            began = time.perf_counter()
            for t in threads:
                t.join(150)
            for c in clients:
                c.close()
            walls.append((max(t for _, t in answers) - began) * 1000)
            per_request.extend((t - began) * 1000 for _, t in answers)
            errors += sum(1 for s, _ in answers if s != 200) + (n - len(answers))
            self.wait_quiet(settle=1.5)  # a late extra revert would show up by now
            reverts.append(len(self.watcher.matching("Started", "Snapshot", since=since)))
            status, body = self.api("GET", "/api/v1/events?limit=50")
            recorded.append(
                sum(
                    1
                    for e in body["events"]
                    if e["id"] > mark and e["action"] == "revert" and e["outcome"] == "succeeded"
                )
            )
        self.fig(
            "concurrent_wall",
            stats.sampled(
                "g",
                "wall time until all 20 answered",
                "ms",
                walls,
                f"{n} threads of the benchmark, each with its own connection opened beforehand, "
                f"released by a barrier; from the release to the last answer; "
                f"{self.plan.concurrent_rounds} rounds",
                errors=errors,
                per_request=stats.describe(per_request),
            ),
        )
        self.fig(
            "concurrent_reverts",
            stats.sampled(
                "g",
                "reverts libvirt performed per round",
                "reverts",
                reverts,
                "'Started Snapshot' lifecycle events of the VM seen by the benchmark's own "
                "`virsh event --loop` from the release until the VM settled; the summary takes "
                "the worst round",
                reverts_recorded_by_controller=recorded,
            ),
        )

    # ============================================================ h. idle cost

    def idle(self) -> None:
        assert self.guest is not None
        self.rss_after_load = probes.vm_rss_kib(self.pid)
        self.event_rss["after_load"] = self.event_stream_rss()
        self.guest.set_rate(1.0)
        self.wait_quiet()
        self.wait_enforced()
        time.sleep(3)  # the grace is over, nothing is under way: steady state
        window = self.plan.idle_s
        cpu_a, calls_a, log_a = probes.cpu_sample(self.pid), probes.uptime(), self.log_size()
        began = time.monotonic()
        while time.monotonic() - began < window:
            time.sleep(0.5)
            self.check_alive()
        took = time.monotonic() - began
        cpu_b, calls_b, log_b = probes.cpu_sample(self.pid), probes.uptime(), self.log_size()
        self.guest.set_rate(self.plan.guest_hz)
        self.rss_after_idle = probes.vm_rss_kib(self.pid)
        self.event_rss["after_idle"] = self.event_stream_rss()
        timed_calls = [
            (up, args)
            for up, args in probes.stand_in_calls(self.virsh_log)
            if calls_a <= up <= calls_b
        ]
        calls = [args for _, args in timed_calls]
        cpu = cpu_b.total - cpu_a.total
        live = {
            f"{pid} {cmd}": round(cpu_b.live[pid][1] - cpu_a.live.get(pid, (cmd, 0.0))[1], 3)
            for pid, (cmd, _) in cpu_b.live.items()
        }
        how = (
            f"utime+stime from /proc over the {took:.0f} s idle window (1 Hz heartbeat, "
            f"nothing else): the controller's threads, its reaped children (cutime+cstime: "
            f"each short virsh) and its live children (the `virsh event` stream), as a share "
            f"of one core; resolution 1/{probes.CLK_TCK} s"
        )
        self.fig(
            "idle_cpu",
            stats.scalar(
                "h",
                f"CPU, controller and its children ({cpu:.2f} s)",
                "%",
                cpu / took * 100,
                how,
                cpu_seconds=round(cpu, 3),
                window_s=round(took, 1),
                breakdown={
                    "controller_threads": round(cpu_b.own - cpu_a.own, 3),
                    "reaped_children": round(cpu_b.reaped - cpu_a.reaped, 3),
                    "live_children": live,
                },
            ),
        )
        for name, label, seconds in (
            ("idle_cpu_threads", "  of which the controller's threads", cpu_b.own - cpu_a.own),
            ("idle_cpu_virsh", "  of which short virsh processes", cpu_b.reaped - cpu_a.reaped),
            ("idle_cpu_events", "  of which the `virsh event` stream", sum(live.values())),
        ):
            self.fig(
                name,
                stats.scalar("h", f"{label} ({seconds:.2f} s)", "%", seconds / took * 100, how),
            )
        interval = self.settings["state_poll_interval"]
        per_minute, how = virsh_rate([up for up, _ in timed_calls], took, interval)
        self.fig(
            "idle_virsh",
            stats.scalar(
                "h",
                "virsh processes started per minute",
                "/min",
                per_minute,
                f"calls logged by the counting `virsh` stand-in first on the controller's PATH "
                f"during the {took:.0f} s idle window (state_poll_interval {interval:g} s; the "
                f"long-running `virsh event` was started once, before): {how}",
                calls=calls,
                window_s=round(took, 1),
            ),
        )
        how = (
            f"bytes the controller wrote to stderr (its log, log_level INFO) during the "
            f"{took:.0f} s idle window with a 1 Hz heartbeat, extrapolated"
        )
        self.fig(
            "idle_log_hour",
            stats.scalar(
                "h",
                "INFO log bytes per hour of heartbeats",
                "B",
                (log_b - log_a) / took * 3600,
                how,
            ),
        )
        self.fig(
            "idle_log",
            stats.scalar(
                "h",
                "INFO log bytes per day of heartbeats",
                "B",
                (log_b - log_a) / took * 86400,
                how,
                bytes_in_window=log_b - log_a,
            ),
        )
        samples = {
            "after_start": self.rss_after_start,
            "after_load": self.rss_after_load,
            "after_idle": self.rss_after_idle,
        }
        how = (
            "VmRSS of the controller process from /proc/PID/status: after start (VM reverted, "
            "API answering), after the load phases b-g, after the idle window; "
            "MiB = 2^20 bytes"
        )
        self.fig(
            "rss_after_start",
            stats.scalar(
                "h",
                "controller resident memory after start",
                "MiB",
                self.rss_after_start / 1024,
                how,
            ),
        )
        self.fig(
            "rss_after_load",
            stats.scalar(
                "h",
                "controller resident memory after the loads",
                "MiB",
                self.rss_after_load / 1024,
                how,
            ),
        )
        self.fig(
            "rss",
            stats.scalar(
                "h",
                "controller resident memory, largest",
                "MiB",
                max(samples.values()) / 1024,
                how,
                samples_mib={k: round(v / 1024, 2) for k, v in samples.items()},
            ),
        )
        streams = {moment: sum(found.values()) for moment, found in self.event_rss.items() if found}
        self.fig(
            "event_stream_rss",
            stats.scalar(
                "h",
                "the controller's `virsh event --loop` child, resident memory",
                "MiB",
                max(streams.values()) / 1024 if streams else None,
                "VmRSS from /proc/PID/status of the controller's long-lived `virsh event --loop` "
                "child (the lifecycle event follower, a process of its own and not counted in the "
                "controller's figure above), at the same three moments; the largest; MiB = 2^20 bytes",
                samples_mib={
                    moment: {cmd: round(kib / 1024, 2) for cmd, kib in found.items()}
                    for moment, found in self.event_rss.items()
                },
            ),
        )
        if self.rss_bare is not None:
            self.fig(
                "rss_bare",
                stats.scalar(
                    "h",
                    "limit row: the bare Flask app on waitress, resident memory",
                    "MiB",
                    self.rss_bare / 1024,
                    "VmRSS of bench/bare_app.py after its runs in e.: what Python, Flask and "
                    "waitress hold with no controller in them, the floor of the figure above",
                ),
            )

    # ============================================================ the run

    # ============================================================ i. event streams

    def streams(self) -> None:
        """Heartbeat p99 with event streams that never read, next to the same without them:
        each stream holds a thread of its own and the hub writes to every one each second,
        and none of that may reach the heartbeat."""
        assert self.guest is not None
        plan = self.plan
        self.wait_quiet()
        self.guest.pause()  # the paced heartbeat client plays the guest meanwhile
        try:
            without = self._paced_heartbeats(plan.streams_s)
            streams = open_idle_streams(self.port, plan.stream_clients)
            try:
                with_streams = self._paced_heartbeats(plan.streams_s)
            finally:
                for sock in streams:
                    sock.close()
        finally:
            self.guest.resume()
        how = (
            f"one heartbeat client at {plan.mixed_heartbeat_hz:g} Hz (send to answer) for "
            f"{plan.streams_s:g} s"
        )
        for name, beats, what in (
            ("streams_none_heartbeat", without, "no event stream open"),
            (
                "streams_idle_heartbeat",
                with_streams,
                f"{plan.stream_clients} event streams open whose clients never read "
                f"(api_stream_clients {self.settings['api_stream_clients']})",
            ),
        ):
            self.fig(
                name,
                stats.sampled(
                    "i",
                    f"GET /api/v1/heartbeat, {what}",
                    "ms",
                    beats.latencies,
                    f"{how}, {what}; the two runs one after the other",
                    keep_samples=False,
                    errors=beats.errors,
                ),
            )

    def _paced_heartbeats(self, duration: float) -> Paced:
        beats = Paced(self.port, HEARTBEAT, self.plan.mixed_heartbeat_hz)
        beats.start()
        time.sleep(duration)
        beats.stop()
        return beats

    # ============================================================ j. the screen

    def screen(self) -> None:
        """What watching the screen costs and how soon a frozen one is reverted, on the
        test guest with a controller in this process (bench/screen_cost.py). The simulated
        guest of the other controller slows to 1 Hz meanwhile: its heartbeats run in this
        process too, and weigh on the spans with and without the watcher alike."""
        plan = self.plan
        phase = screen_cost.ScreenPhase(
            screen_cost.ScreenPlan(
                plan.screen_span_s, plan.screen_pairs, plan.screen_shots, plan.screen_detect
            ),
            self.work,
            self.cleanup,
            say,
        )
        if self.guest is not None:
            self.guest.set_rate(1.0)
        try:
            phase.run()
        finally:
            if self.guest is not None:
                self.guest.set_rate(plan.guest_hz)
            self.figures.update(phase.figures)
            self.detail["screen"] = phase.detail
            if hasattr(phase, "vm"):
                self.detail.setdefault("vms", []).append(phase.vm.name)

    def run(self) -> dict[str, Any]:
        started_wall = datetime.now(timezone.utc)
        started = time.monotonic()
        load_start = os.getloadavg()
        machine = probes.machine_info()
        say(
            f"{self.plan.mode} run; load average {load_start[0]:.2f} {load_start[1]:.2f} "
            f"{load_start[2]:.2f} on {machine['cores']} cores"
        )
        if self.only == "screen":
            self.setup_work()
            self.phase("j. screen liveness", self.screen, needs_controller=False)
        else:
            self.setup()
            self.phase("a. raw libvirt floor", self.raw_floor, needs_controller=False)
            self.start_controller()
            self.phase("b. detection: heartbeat deadline", self.detect_deadline)
            self.phase("b. detection: virsh destroy", self.detect_destroy)
            self.phase("b. detection: virsh suspend", self.detect_suspend)
            self.phase("d. API latency", self.api_latency)
            self.phase("e. throughput against the limit row", self.throughput)
            self.phase("f. mixed load", self.mixed)
            self.phase("g. concurrent restarts", self.concurrency)
            self.phase("h. idle cost", self.idle)
            self.phase("i. heartbeats with idle event streams", self.streams)
            self.phase("j. screen liveness", self.screen)
        say("cleaning up")
        self.stack.close()
        self.figures = dict(sorted(self.figures.items(), key=lambda kv: kv[1].get("section", "z")))
        summary = stats.build_summary(self.figures)
        from vmcontroller import __version__

        return {
            "benchmark": "exhibition-vm-controller",
            "format": 1,
            "mode": self.plan.mode,
            "started": started_wall.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1),
            "machine": machine,
            "load_average": {
                "start": [round(x, 2) for x in load_start],
                "end": [round(x, 2) for x in os.getloadavg()],
            },
            "controller": {
                "version": __version__,
                "commit": _git_commit(),
                "config": self.settings,
            },
            "plan": asdict(self.plan),
            "load_tool": self.load_tool(),
            "phases_s": self.phases,
            "errors": self.errors,
            "detail": self.detail,
            "figures": self.figures,
            "summary": summary,
            "targets": stats.evaluate_targets(summary),
        }


STREAM = "/api/v1/events/stream"


def open_idle_streams(port: int, count: int) -> list[socket.socket]:
    """``count`` event streams whose clients read the status line (to know they were let
    in) and then nothing more, as a dashboard left open in a frozen tab would."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            opened.append(sock)
            sock.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = sock.recv(12)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"event stream {len(opened)} refused: {head!r}")
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def virsh_rate(times: list[float], window: float, interval: float) -> tuple[float, str]:
    """virsh processes per minute from the start times of those seen in the idle window,
    and how it was reckoned. With two calls or more: from the first to the last, (n - 1)
    calls over that span, which a window's edges cannot tip by a whole call; else the count
    over the window, which can (one call in a window of one poll reads as the bound)."""
    times = sorted(times)
    if len(times) >= 2 and times[-1] > times[0]:
        per_minute = (len(times) - 1) / (times[-1] - times[0]) * 60
        return per_minute, (
            f"{len(times)} calls; {len(times) - 1} gaps between them over "
            f"{times[-1] - times[0]:.1f} s, as a rate per minute: one virsh per safety poll "
            f"reads as 60 / state_poll_interval ({60 / interval:.2f}/min), a second process "
            f"per poll as twice that"
        )
    coarse = f"{len(times)} call(s) in the window, counted over the window"
    if window < 2 * interval:
        coarse += (
            f"; the window is shorter than two poll intervals, so one call reads as "
            f"{60 / window:.1f}/min: coarse (a full run's window spans three polls)"
        )
    return len(times) / window * 60, coarse


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except OSError:
        return None


# ================================================================ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure the controller against libvirt's own limits on this machine's "
        "real libvirtd; prints a table and writes the figures as JSON.",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer samples and shorter loads: under 2 minutes"
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        default="bench-latest.json",
        help="write the figures as JSON here (default: %(default)s)",
    )
    p.add_argument(
        "--compare",
        metavar="FILE",
        help="an earlier JSON (e.g. bench/baseline.json): print this run's summary as ratios to it",
    )
    p.add_argument(
        "--show",
        metavar="FILE",
        help="measure nothing: print the table of an earlier JSON (and --compare)",
    )
    p.add_argument(
        "--rst",
        action="store_true",
        help="with --show: print the summary as the README's reStructuredText table",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (controller log, virsh call log)",
    )
    p.add_argument(
        "--load-tool",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load generator for e. and f. (default: wrk if installed)",
    )
    p.add_argument(
        "--only",
        choices=("screen",),
        help="run this phase alone (j. screen liveness), for working on it",
    )
    p.add_argument(
        "--samples",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="scale the sample counts and load durations (default 1)",
    )
    return p


def _scaled(plan: Plan, factor: float) -> Plan:
    if factor == 1.0:
        return plan
    n = lambda v: max(1, round(v * factor))  # noqa: E731
    return replace(
        plan,
        raw_calls=n(plan.raw_calls),
        deadline=n(plan.deadline),
        destroy=n(plan.destroy),
        suspend=n(plan.suspend),
        api_requests=n(plan.api_requests),
        throughput_s=n(plan.throughput_s),
        mixed_s=max(12, n(plan.mixed_s)),
        concurrent_rounds=n(plan.concurrent_rounds),
        idle_s=max(10, n(plan.idle_s)),
    )


def _on_terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _while_cleaning(signum: int, frame: Any) -> None:
    say("still cleaning up (VM, controller); please wait")


def report(result: dict[str, Any], compare_path: str | None) -> None:
    print(stats.format_table(result))
    if compare_path:
        baseline = json.loads(Path(compare_path).read_text())
        rows = stats.compare(result["summary"], baseline.get("summary", {}))
        result["compared_with"] = {
            "file": compare_path,
            "started": baseline.get("started"),
            "rows": rows,
        }
        print()
        if baseline.get("mode") != result.get("mode"):
            print(
                f"note: the baseline is a {baseline.get('mode')} run, this one "
                f"{result.get('mode')}: fewer samples make the quick figures noisier"
            )
        print(
            stats.format_compare(
                rows,
                f"{compare_path} ({baseline.get('mode', '?')} run of "
                f"{baseline.get('started', '?')})",
            )
        )
        retired = sorted(set(baseline.get("summary", {})) - set(stats.SUMMARY_KEYS))
        if retired:
            print(
                f"note: the baseline also has {', '.join(retired)}, which this version no "
                f"longer measures; n/a marks figures the baseline does not have"
            )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.show:
        shown = json.loads(Path(args.show).read_text())
        if args.rst:
            print(stats.format_rst(shown))
        else:
            report(shown, args.compare)
        return 0
    if os.geteuid() != 0:
        say("note: not root; libvirt's qemu:///system may refuse (run scripts/bench as root)")
    plan = _scaled(QUICK if args.quick else FULL, args.samples)
    # Also SIGINT: a shell without job control starts background commands with it ignored,
    # and the VMs must go whatever stops the run.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_terminate)
    stack = ExitStack()
    bench = Benchmark(plan, stack, keep=args.keep, load_tool=args.load_tool, only=args.only)
    try:
        result = bench.run()
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    except Exception:
        traceback.print_exc()
        say("failed: cleaning up")
        return 1
    finally:
        signal.signal(signal.SIGINT, _while_cleaning)
        signal.signal(signal.SIGTERM, _while_cleaning)
        stack.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    report(result, args.compare)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    say(f"figures written to {args.out}")
    return 1 if result["errors"] else 0
