"""What the benchmark watches and starts: its own VM, libvirt's event stream, timed virsh
calls, the controller process, a counting virsh stand-in and /proc accounting.

The benchmark only ever touches the domain it created (``vmctl-bench-<random>``).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

URI = os.environ.get("VMCTL_BENCH_LIBVIRT_URI", "qemu:///system")
IMAGES = Path(os.environ.get("VMCTL_BENCH_IMAGES", "/var/lib/libvirt/images"))
PREFIX = "vmctl-bench-"
ENV = {**os.environ, "LC_ALL": "C"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def virsh(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["virsh", "-q", "-c", URI, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def timed(argv: Sequence[str], timeout: float = 120) -> float:
    """Wall time in seconds of one process, from spawn to exit; raises if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return took


def virsh_argv(*args: str, binary: str = "virsh") -> list[str]:
    """The same argv shape the controller's runner uses: ``virsh -q -c URI ...``."""
    return [binary, "-q", "-c", URI, *args]


# ---------------------------------------------------------------- the VM

#: The tests' empty-disk VM, from the one template both use.
DOMAIN_XML = (Path(__file__).resolve().parent.parent / "scripts" / "empty-domain.xml").read_text()


class BenchDomain:
    """An empty-disk QEMU VM (SeaBIOS idles in it) with a 'ready' snapshot of its running state,
    as in tests/libvirt_env.py; removed with its snapshots and disk by ``remove``."""

    def __init__(self, label: str, snapshot: str = "ready"):
        self.name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"
        self.disk = IMAGES / f"{self.name}.qcow2"
        self.snapshot = snapshot
        self.defined = False

    def create(self) -> BenchDomain:
        IMAGES.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "64M"],
            check=True,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )
        xml = self.disk.with_suffix(".xml")
        xml.write_text(DOMAIN_XML.format(name=self.name, disk=self.disk))
        try:
            virsh("define", "--file", str(xml))
            self.defined = True
        finally:
            xml.unlink()
        virsh("start", "--domain", self.name)
        virsh("snapshot-create-as", "--domain", self.name, "--name", self.snapshot, "--atomic")
        return self

    def remove(self) -> None:
        virsh("destroy", "--domain", self.name, check=False)
        virsh("undefine", "--domain", self.name, "--snapshots-metadata", check=False)
        self.disk.unlink(missing_ok=True)

    def state(self) -> str:
        return virsh("domstate", "--domain", self.name).strip()


# ---------------------------------------------------------------- lifecycle events


@dataclass(frozen=True)
class LifecycleEvent:
    index: int
    time: float  # wall clock: virsh's --timestamp (its callback ran), else when read here
    received: float  # wall clock when this process read the line
    event: str
    detail: str


_EVENT_RE = re.compile(
    r"^(?:(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d{4}): )?"
    r"event 'lifecycle' for domain '(?P<domain>.*)': (?P<event>\S+)"
    r"(?: (?P<detail>.*))?$"
)


def parse_event(line: str) -> tuple[float | None, str, str, str] | None:
    """(virsh's timestamp as epoch seconds or None, domain, event, detail) of one line."""
    m = _EVENT_RE.match(line.strip())
    if not m:
        return None
    ts = None
    if m.group("ts"):
        ts = datetime.strptime(m.group("ts"), "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
    return ts, m.group("domain"), m.group("event"), (m.group("detail") or "").strip()


class EventWatcher:
    """Our own ``virsh event --loop --timestamp`` on the bench domain, independent of the
    controller: when libvirt says the VM stopped, paused or started."""

    def __init__(self, domain: str):
        self.domain = domain
        self.events: list[LifecycleEvent] = []
        self._cond = threading.Condition()
        self._proc = spawn(
            ["virsh", "-c", URI, "event", "--loop", "--timestamp", "--event", "lifecycle"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=ENV,
        )
        self._thread = threading.Thread(target=self._read, name="bench-events", daemon=True)
        self._thread.start()
        time.sleep(0.5)  # virsh registers its callback a moment after it starts

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            received = time.time()
            parsed = parse_event(line)
            if parsed is None or parsed[1] != self.domain:
                continue
            ts, _, event, detail = parsed
            with self._cond:
                self.events.append(
                    LifecycleEvent(len(self.events), ts or received, received, event, detail)
                )
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def matching(
        self, event: str, detail: str | None = None, since: int = 0, after_time: float | None = None
    ) -> list[LifecycleEvent]:
        with self._cond:
            return [
                e
                for e in self.events[since:]
                if e.event == event
                and (detail is None or e.detail == detail)
                and (after_time is None or e.time >= after_time)
            ]

    def wait_for(
        self,
        event: str,
        detail: str | None = None,
        since: int = 0,
        timeout: float = 30,
        after_time: float | None = None,
    ) -> LifecycleEvent | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.matching(event, detail, since, after_time)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        stop_process(self._proc)


# ---------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself dies (even kill -9),
    so a controller is never left reverting a VM nobody removes."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def spawn(argv: Sequence[str], **kwargs) -> subprocess.Popen:
    """A child in its own session (a Ctrl-C reaches only the benchmark, which then stops its
    children in order) that dies with the benchmark."""
    return subprocess.Popen(
        list(argv),
        start_new_session=True,
        preexec_fn=_die_with_parent,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    return proc.returncode


STAND_IN = """#!/bin/sh
# Counting stand-in for virsh (benchmark): logs each call, then runs the real virsh.
# Only shell builtins before the exec, so it adds no process and about a millisecond.
read -r up _ < /proc/uptime
printf '%s %s\\n' "$up" "$*" >> "{log}"
exec {real} "$@"
"""


def write_stand_in(directory: Path, log: Path) -> Path:
    """A ``virsh`` for the front of the controller's PATH that counts invocations."""
    real = shutil.which("virsh")
    if real is None:
        raise RuntimeError("virsh is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "virsh"
    path.write_text(STAND_IN.format(log=log, real=os.path.realpath(real)))
    path.chmod(0o755)
    log.touch()
    return path


def stand_in_calls(log: Path) -> list[tuple[float, str]]:
    """(seconds since boot, arguments) of each logged virsh call."""
    calls = []
    for line in log.read_text().splitlines():
        up, _, args = line.partition(" ")
        try:
            calls.append((float(up), args))
        except ValueError:
            continue
    return calls


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


_DESCRIBE_CONTROLLER = """
import json, sys
from bench.bare_app import describe_server
from vmcontroller.config import load_config
from vmcontroller.server import Controller
controller = Controller(load_config(sys.argv[1])[0])
print(json.dumps(describe_server(controller.http)))
controller.http.close()
"""


def controller_waitress(
    python: str, settings: Mapping[str, Any], work: Path, cwd: Path
) -> dict[str, Any]:
    """The waitress set-up of a controller built from ``settings`` (as ``bench/bare_app``
    describes its own): the controller's own code builds its server, on port 0 and with a
    state file of its own, and exits without serving; nothing is copied from server.py, so
    the record cannot drift from what the controller runs."""
    config = work / "describe-config.yaml"
    config.write_text(
        json.dumps({**settings, "api_port": 0, "state_path": str(work / "describe-state.db")})
    )
    env = {k: v for k, v in ENV.items() if not k.startswith("VMCTL_")}
    proc = subprocess.run(
        [python, "-c", _DESCRIBE_CONTROLLER, str(config)],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"describing the controller's waitress failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ---------------------------------------------------------------- /proc accounting


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 'state' (field 3) on


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


@dataclass(frozen=True)
class CpuSample:
    own: float  # utime + stime of the controller (all its threads), s
    reaped: float  # cutime + cstime: children it has waited for (short virsh)
    live: dict[int, tuple[str, float]]  # running children: command line, utime+stime (+their
    # own reaped children)

    @property
    def total(self) -> float:
        return self.own + self.reaped + sum(cpu for _, cpu in self.live.values())


def cpu_sample(pid: int) -> CpuSample:
    fields = _stat_fields(pid)
    if fields is None:
        raise RuntimeError(f"process {pid} is gone")
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    live = {}
    for child in children(pid):
        cf = _stat_fields(child)
        if cf is not None:
            live[child] = (cmdline(child), sum(int(x) for x in cf[11:15]) / CLK_TCK)
    return CpuSample(own, reaped, live)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


# ---------------------------------------------------------------- the machine


def machine_info() -> dict[str, object]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = virsh("version", check=False)
    lib = re.search(r"Using library: libvirt (\S+)", versions)
    hyp = re.search(r"Running hypervisor: QEMU (\S+)", versions)
    import platform

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "libvirt": lib.group(1) if lib else "?",
        "qemu": hyp.group(1) if hyp else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "libvirtd_under": _libvirtd_parent(),
    }


def _libvirtd_parent() -> str:
    """Whether libvirtd runs under a subreaper (tini) or systemd: it changes revert times."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(f"/proc/{entry.name}/comm").read_text().strip() == "libvirtd":
                    fields = _stat_fields(int(entry.name))
                    parent = int(fields[1]) if fields else 0
                    return Path(f"/proc/{parent}/comm").read_text().strip() if parent else "?"
            except OSError:
                continue
    return "?"
