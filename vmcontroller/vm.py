"""One libvirt domain and the operations staff and recovery perform on it.

Every operation that changes the domain takes the domain's lock, so that a
restart from the API and an automatic recovery never interleave; reads that
only ask libvirt (state, snapshot list) do not need it.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from .virsh import DomainNotFound, NotRunning, SnapshotNotFound, VirshError, VirshRunner

log = logging.getLogger(__name__)

RUNNING = "running"
PAUSED = "paused"
SHUT_OFF = "shut off"
CRASHED = "crashed"
NOT_FOUND = "not found"

#: A snapshot being replaced is first saved under this suffix. '~' is outside
#: the name rule users are held to, so it can never collide with their names.
_REPLACING_SUFFIX = "~replacing"


def _visible(names: list[str]) -> list[str]:
    """Snapshot names without the spare kept while a snapshot is being replaced."""
    return [name for name in names if not name.endswith(_REPLACING_SUFFIX)]


class SnapshotMissing(Exception):
    """The configured reference snapshot does not exist, so there is nothing to revert to."""


@dataclass(frozen=True)
class StartResult:
    reverted: bool      # False: no snapshot, the VM was booted as it was
    was_running: bool


class Domain:
    """Operations on one domain, serialised by one lock."""

    def __init__(self, runner: VirshRunner, name: str, snapshot_name: str):
        self.runner = runner
        self.name = name
        self.snapshot_name = snapshot_name
        self._lock = threading.RLock()

    def locked(self) -> threading.RLock:
        """The domain's lock, for callers that must decide and act in one step."""
        return self._lock

    @contextmanager
    def operation(self, what: str) -> Iterator[None]:
        """Hold the domain's lock for one operation, and log it with its duration."""
        with self._lock:
            started = time.monotonic()
            try:
                yield
            except Exception as exc:
                log.info("%s of VM %r failed after %.2f s: %s", what, self.name,
                         time.monotonic() - started, exc)
                raise
            log.info("%s of VM %r done in %.2f s", what, self.name, time.monotonic() - started)

    # -------------------------------------------------------------- reads

    def state(self) -> str:
        """libvirt's state word ('running', 'shut off', 'paused', ...) or 'not found'."""
        try:
            return self.runner.domstate(self.name)
        except DomainNotFound:
            return NOT_FOUND

    def state_and_snapshots(self) -> tuple[str, list[str]]:
        """State and snapshot names in one virsh call (the safety poll's only cost)."""
        try:
            state, names = self.runner.state_and_snapshots(self.name)
        except DomainNotFound:
            return NOT_FOUND, []
        return state, _visible(names)

    def snapshots(self) -> list[str]:
        return _visible(self.runner.snapshot_list(self.name))

    # -------------------------------------------------------------- changes

    def revert_and_start(self) -> None:
        """Revert to the reference snapshot and leave the VM running.

        Raises SnapshotMissing if there is no reference snapshot: booting a
        hung artwork from its disk alone is not the known-good state.
        """
        with self.operation(f"revert to snapshot {self.snapshot_name!r}"):
            try:
                # --running leaves the VM running whatever state the snapshot
                # recorded. Its exit status is trusted: a second virsh call to
                # confirm would add ~20 ms to every recovery, and a destroy or
                # pause that races with the revert arrives as a lifecycle event
                # that the monitor acts on like any other.
                self.runner.snapshot_revert(self.name, self.snapshot_name)
            except SnapshotNotFound:
                raise SnapshotMissing(
                    f"snapshot {self.snapshot_name!r} of VM {self.name!r} does not exist; "
                    f"create it with /api/v1/snapshot/create") from None

    def start(self) -> StartResult:
        """Start the VM clean: revert to the snapshot if there is one, else boot it as it is."""
        with self._lock:
            was_running = self.state() == RUNNING
            try:
                self.revert_and_start()
                return StartResult(reverted=True, was_running=was_running)
            except SnapshotMissing:
                log.warning("snapshot %r of VM %r does not exist: starting the VM without a revert",
                            self.snapshot_name, self.name)
            with self.operation("start"):
                self._ensure_running()
            return StartResult(reverted=False, was_running=was_running)

    def stop(self) -> bool:
        """Pull the plug. Returns False if the VM was not running (which is no error)."""
        with self.operation("stop"):
            try:
                self.runner.destroy(self.name)
                return True
            except NotRunning:
                return False

    def _ensure_running(self) -> None:
        state = self.state()
        if state == PAUSED:
            self.runner.resume(self.name)
        elif state != RUNNING:
            try:
                self.runner.start(self.name)
            except VirshError as exc:
                # Another party may have started it in between; only a VM still down is a failure.
                if self.state() != RUNNING:
                    raise exc

    def create_snapshot(self, name: str) -> bool:
        """Create a snapshot; an existing one of that name is replaced. Returns True if replaced.

        Replacing deletes only that snapshot (libvirt re-parents its children).
        The new state is saved under a temporary name first, so that a full
        disk or a libvirt error leaves the old snapshot in place.
        """
        with self.operation(f"create snapshot {name!r}"):
            existing = self.runner.snapshot_list(self.name)
            if name not in existing:
                self.runner.snapshot_create(self.name, name)
                return False
            spare = name + _REPLACING_SUFFIX
            if spare in existing:
                self.runner.snapshot_delete(self.name, spare)
            self.runner.snapshot_create(self.name, spare)
            self.runner.snapshot_delete(self.name, name)
            try:
                self.runner.snapshot_create(self.name, name)
            except VirshError as exc:
                raise VirshError(f"{exc.message} (the new state is kept as snapshot {spare!r})",
                                 exc.command, exc.returncode) from None
            self.runner.snapshot_delete(self.name, spare)
            return True

    def delete_snapshot(self, name: str) -> None:
        """Delete one snapshot (raises SnapshotNotFound); snapshots made after it are kept."""
        with self.operation(f"delete snapshot {name!r}"):
            self.runner.snapshot_delete(self.name, name)
