"""Real libvirt domains for tests: uniquely named, created and removed by the test.

Tests share the machine's libvirtd, so every domain made here carries the
prefix ``vmctl-test-`` and a random suffix, and is destroyed, undefined (with
its snapshot metadata) and its disk deleted afterwards. Nothing here touches
any other domain. Tests may start processes (the package may not, outside
virsh.py): they watch libvirt independently of the code under test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

URI = os.environ.get("VMCTL_TEST_LIBVIRT_URI", "qemu:///system")
IMAGES = Path(os.environ.get("VMCTL_TEST_IMAGES", "/var/lib/libvirt/images"))
PREFIX = "vmctl-test-"
ENV = {**os.environ, "LC_ALL": "C"}


def virsh(*args: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(
        ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def libvirt_available() -> bool:
    if shutil.which("virsh") is None:
        return False
    try:
        virsh("list", "--all", timeout=10)
        return True
    except Exception:
        return False


#: An empty-disk VM: SeaBIOS idles in it, so it is 'running' without a guest OS.
#: One template for the tests and bench/ (scripts/empty-domain.xml).
DOMAIN_XML = (Path(__file__).resolve().parent.parent / "scripts" / "empty-domain.xml").read_text()


class TestDomain:
    """An empty-disk QEMU VM (SeaBIOS idles: 'running' without a guest OS)."""

    __test__ = False  # not a pytest test class

    def __init__(self, label: str = "vm"):
        self.name = f"{PREFIX}{label}-{uuid.uuid4().hex[:8]}"
        self.disk = IMAGES / f"{self.name}.qcow2"

    def create(self, start: bool = True, snapshot: str | None = "ready") -> TestDomain:
        IMAGES.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.disk), "64M"], check=True, env=ENV
        )
        xml = self.disk.with_suffix(".xml")
        xml.write_text(DOMAIN_XML.format(name=self.name, disk=self.disk))
        try:
            virsh("define", "--file", str(xml))
        finally:
            xml.unlink()
        if start:
            virsh("start", "--domain", self.name)
            if snapshot:
                virsh("snapshot-create-as", "--domain", self.name, "--name", snapshot, "--atomic")
        return self

    def remove(self) -> None:
        virsh("destroy", "--domain", self.name, check=False)
        virsh(
            "undefine", "--domain", self.name, "--snapshots-metadata", "--managed-save", check=False
        )
        self.disk.unlink(missing_ok=True)

    def state(self) -> str:
        return virsh("domstate", "--domain", self.name).strip()

    def snapshots(self) -> list[str]:
        return virsh("snapshot-list", "--domain", self.name, "--name").split()

    def snapshot_tree(self) -> dict[str, str | None]:
        """Each snapshot with its parent's name, from libvirt itself."""
        tree = {}
        for snap in self.snapshots():
            out = virsh("snapshot-info", "--domain", self.name, "--snapshotname", snap)
            m = re.search(r"^Parent:\s*(\S+)", out, re.M)
            parent = m.group(1) if m else None
            tree[snap] = None if parent in (None, "-") else parent
        return tree

    def current_snapshot(self) -> str | None:
        out = virsh("snapshot-current", "--domain", self.name, "--name", check=False).strip()
        return out or None


class EventRecorder:
    """Records libvirt's lifecycle events for one domain, independently of the controller."""

    def __init__(self, domain: str):
        self.domain = domain
        self.events: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._sentinel = ""
        self._sentinel_heard = threading.Event()
        self._proc = subprocess.Popen(
            ["virsh", "-c", URI, "event", "--loop", "--event", "lifecycle"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=ENV,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 60) -> None:
        """virsh registers its callback a moment after it starts, and events before
        that are lost: define and undefine a throw-away domain until one of its
        events comes through, so that the recorder is known to hear."""
        deadline = time.monotonic() + timeout
        while not self._sentinel_heard.is_set():
            if time.monotonic() > deadline:
                raise AssertionError(f"virsh event reported nothing within {timeout} s")
            sentinel = TestDomain("listening")
            self._sentinel = sentinel.name
            try:
                sentinel.create(start=False)
                self._sentinel_heard.wait(1)
            finally:
                sentinel.remove()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        pattern = re.compile(r"event 'lifecycle' for domain '(.*)': (.*)$")
        for line in self._proc.stdout:
            m = pattern.search(line.strip())
            if m and m.group(1) == self._sentinel:
                self._sentinel_heard.set()
            if m and m.group(1) == self.domain:
                with self._cond:
                    self.events.append((time.monotonic(), m.group(2)))
                    self._cond.notify_all()

    def count(self, text: str) -> int:
        with self._cond:
            return sum(1 for _, e in self.events if e == text)

    def wait_for(self, text: str, count: int = 1, timeout: float = 30) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(1 for _, e in self.events if e == text) >= count, timeout
            )

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 30,
    interval: float = 0.05,
    message: str = "condition",
) -> None:
    """Poll a condition with a deadline; fail with a message instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def leftover_domains() -> list[str]:
    return [n for n in virsh("list", "--all", "--name").split() if n.startswith(PREFIX)]
