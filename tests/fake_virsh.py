"""An in-memory stand-in for VirshRunner, for fast unit tests of vm.py and monitor.py.

It models only what the controller relies on (state, snapshots, revert) and
records every call so tests can count reverts. It is never the only proof:
every behaviour here is also tested against a real libvirtd.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone

from vmcontroller.virsh import (
    DomainNotFound,
    LifecycleEvent,
    NotRunning,
    SnapshotNotFound,
    VirshError,
)


class FakeRunner:
    def __init__(
        self,
        domain: str = "art",
        state: str = "running",
        snapshots: tuple[str, ...] = ("ready",),
        revert_seconds: float = 0.0,
    ):
        self.domain = domain
        self.state = state
        self.snapshots: list[str] = list(snapshots)
        self.parents: dict[str, str | None] = {s: None for s in snapshots}
        self.current: str | None = snapshots[-1] if snapshots else None
        self.revert_seconds = revert_seconds
        self.calls: list[tuple[str, ...]] = []
        self.failures: dict[str, list[VirshError]] = {}
        self.managed_save = False
        self.screen: bytes | Callable[[], bytes] | None = None
        self.listener: Callable[[LifecycleEvent], None] | None = None
        self._lock = threading.Lock()

    # -- helpers for tests
    def fail(self, command: str, error: VirshError) -> None:
        """The next call of ``command`` raises ``error`` (queued: call again for the one after)."""
        self.failures.setdefault(command, []).append(error)

    def stop_failing(self, command: str) -> None:
        """Drop the failures still queued for ``command``: libvirt answers again."""
        with self._lock:
            self.failures.pop(command, None)

    def count(self, command: str) -> int:
        return sum(1 for c in self.calls if c[0] == command)

    def external(self, state: str, event: str, detail: str) -> None:
        """Something outside the controller changed the VM (virsh destroy, a crash...)."""
        self.state = state
        self._emit(event, detail)

    def _emit(self, event: str, detail: str) -> None:
        if self.listener:
            self.listener(LifecycleEvent(datetime.now(timezone.utc), self.domain, event, detail))

    def _call(self, *call: str) -> None:
        with self._lock:
            self.calls.append(call)
            queued = self.failures.get(call[0])
            error = queued.pop(0) if queued else None
            if queued is not None and not queued:
                del self.failures[call[0]]
        if error is not None:
            raise error
        if call[1] != self.domain:
            raise DomainNotFound(f"failed to get domain '{call[1]}'")

    # -- the VirshRunner surface used by vm.py
    def domstate(self, domain: str) -> str:
        self._call("domstate", domain)
        return self.state

    def start(self, domain: str) -> None:
        self._call("start", domain)
        if self.state == "running":
            raise VirshError("Requested operation is not valid: domain is already active")
        self.state = "running"
        self._emit("Started", "Booted")

    def resume(self, domain: str) -> None:
        self._call("resume", domain)
        self.state = "running"

    def suspend(self, domain: str) -> None:
        self._call("suspend", domain)
        if self.state not in ("running", "paused"):
            raise NotRunning("Requested operation is not valid: domain is not running")
        self.state = "paused"

    def managedsave_remove(self, domain: str) -> None:
        self._call("managedsave-remove", domain)
        self.managed_save = False

    def destroy(self, domain: str) -> None:
        self._call("destroy", domain)
        if self.state != "running" and self.state != "paused":
            raise NotRunning("Requested operation is not valid: domain is not running")
        self.state = "shut off"
        self._emit("Stopped", "Destroyed")

    def state_and_snapshots(self, domain: str) -> tuple[str, list[str]]:
        self._call("domstate+snapshot-list", domain)
        return self.state, list(self.snapshots)

    def screenshot(self, domain: str) -> bytes:
        """The screen a test set (``screen``: PNG bytes, or a callable giving them)."""
        self._call("screenshot", domain)
        if self.state != "running" and self.screen is not None:
            raise VirshError("Requested operation is not valid: domain is not running")
        screen = self.screen() if callable(self.screen) else self.screen
        if screen is None:
            raise VirshError("unsupported configuration: no screens to take screenshot from")
        return screen

    def snapshot_list(self, domain: str) -> list[str]:
        self._call("snapshot-list", domain)
        return list(self.snapshots)

    def snapshot_current(self, domain: str) -> str | None:
        self._call("snapshot-current", domain)
        return self.current

    def snapshot_create(self, domain: str, name: str) -> None:
        self._call("snapshot-create-as", domain, name)
        if name in self.snapshots:
            raise VirshError(f"operation failed: domain moment {name} already exists")
        self.snapshots.append(name)
        self.parents[name] = self.current
        self.current = name

    def snapshot_delete(self, domain: str, name: str) -> None:
        self._call("snapshot-delete", domain, name)
        if name not in self.snapshots:
            raise SnapshotNotFound(
                f"Domain snapshot not found: no domain snapshot with matching name '{name}'"
            )
        parent = self.parents.pop(name)
        self.snapshots.remove(name)
        for child, p in self.parents.items():
            if p == name:
                self.parents[child] = parent
        if self.current == name:
            self.current = parent

    def snapshot_revert(
        self, domain: str, name: str, *, paused: bool = False, force: bool = False
    ) -> None:
        self._call(
            "snapshot-revert",
            domain,
            name,
            "--paused" if paused else "--running",
            *(("--force",) if force else ()),
        )
        if name not in self.snapshots:
            raise SnapshotNotFound(
                f"Domain snapshot not found: no domain snapshot with matching name '{name}'"
            )
        if self.revert_seconds:
            threading.Event().wait(self.revert_seconds)
        self.state = "paused" if paused else "running"
        self.current = name
        self._emit("Started", "Snapshot")
