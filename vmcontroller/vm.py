"""One libvirt domain and the operations staff and recovery perform on it.

Every operation that changes the domain takes the domain's lock, so that a
restart from the API and an automatic recovery never interleave; reads that
only ask libvirt (state, snapshot list) do not need it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import SnapshotMissing
from .virsh import (
    DomainNotFound,
    ManagedSaveConflict,
    NotRunning,
    RevertRisky,
    SnapshotLacksDefinition,
    SnapshotNotFound,
    VirshError,
    VirshRunner,
)
from .vocab import API_PREFIX

log = logging.getLogger(__name__)

RUNNING = "running"
PAUSED = "paused"
SHUT_OFF = "shut off"
CRASHED = "crashed"
NOT_FOUND = "not found"

#: A snapshot being replaced is first saved under this suffix. '~' is outside
#: the name rule users are held to, so it can never collide with their names.
_SPARE_SUFFIX = "~replacing"


def spare_name(name: str) -> str:
    """The name under which a replacement of ``name`` first saves the new state."""
    return name + _SPARE_SUFFIX


def _visible(names: list[str]) -> list[str]:
    """Snapshot names as staff know them.

    A spare whose snapshot exists is a leftover and hidden; a spare whose
    snapshot is missing (a replacement cut off after deleting the old one)
    stands in for it, so it is shown, and reverted to, under that name.
    """
    present = set(names)
    shown = []
    for name in names:
        if name.endswith(_SPARE_SUFFIX):
            base = name[: -len(_SPARE_SUFFIX)]
            if base not in present:
                shown.append(base)
        else:
            shown.append(name)
    return shown


class RevertNeedsStaff(VirshError):
    """libvirt refuses the revert and forcing cannot give a working artwork.

    The message says what staff must do. Retrying changes nothing, so a
    recovery that ends here must not be repeated until staff have acted.
    """


@dataclass(frozen=True)
class RevertResult:
    """How a revert went, for the history.

    ``forced`` is True when libvirt refused the plain revert and the
    controller overrode the refusal (README, "Reverts libvirt refuses");
    ``note`` then holds libvirt's message and what was done. A note without
    ``forced`` says the reference was found only under its spare's name.
    """

    forced: bool = False
    note: str | None = None


@dataclass(frozen=True)
class ReferenceRepair:
    """What repair_reference() found and did, for the log, the history and status."""

    message: str
    reverted: bool  # True: the VM was reverted (to the spare) and runs from that state


@dataclass(frozen=True)
class StartResult:
    reverted: bool  # False: no snapshot, the VM was booted as it was
    was_running: bool
    revert: RevertResult | None = None


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
                log.info(
                    "%s of VM %r failed after %.2f s: %s",
                    what,
                    self.name,
                    time.monotonic() - started,
                    exc,
                )
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

    def screenshot(self) -> bytes:
        """The guest's screen now (PNG). Takes no lock: a look at the screen must neither
        wait for a revert nor hold one up; during one it may fail, and the caller retries."""
        return self.runner.screenshot(self.name)

    # -------------------------------------------------------------- changes

    def revert_and_start(self) -> RevertResult:
        """Revert to the reference snapshot and leave the VM running.

        Raises SnapshotMissing if there is no reference snapshot: booting a
        hung artwork from its disk alone is not the known-good state. When
        the reference is missing but its spare exists (a replacement was cut
        off between deleting the old and creating the new one), the spare is
        the reference. Raises RevertNeedsStaff when libvirt refuses and
        forcing would not help.
        """
        name = self.snapshot_name
        with self.operation(f"revert to snapshot {name!r}"):
            try:
                # Its exit status is trusted: a second virsh call to confirm
                # would add ~20 ms to every recovery, and a destroy or pause
                # that races with the revert arrives as a lifecycle event that
                # the monitor acts on like any other.
                return self._revert(name)
            except SnapshotNotFound:
                pass
            spare = spare_name(name)
            try:
                result = self._revert(spare)
            except SnapshotNotFound:
                raise SnapshotMissing(
                    f"snapshot {name!r} of VM {self.name!r} does not exist; "
                    f"create it with {API_PREFIX}/snapshot/create"
                ) from None
            note = (
                f"snapshot {name!r} was missing after an interrupted replacement; reverted "
                f"to its spare {spare!r}, which holds the state saved for it (the next "
                f"start-up repair recreates {name!r})"
            )
            return RevertResult(
                result.forced, note if result.note is None else f"{note}; {result.note}"
            )

    def _revert(self, snapshot: str, paused: bool = False) -> RevertResult:
        """One revert, with the decision on libvirt's refusals described in README.

        A refusal that forcing only overrides is retried once, forced, and
        recorded: the snapshot is the known-good state, and a revert puts the
        snapshot's own definition back anyway. A refusal that forcing cannot
        turn into a working artwork raises RevertNeedsStaff.
        """
        try:
            self.runner.snapshot_revert(self.name, snapshot, paused=paused)
            return RevertResult()
        except SnapshotLacksDefinition as exc:
            raise RevertNeedsStaff(
                f"libvirt refuses to revert VM {self.name!r} to snapshot {snapshot!r}, even when "
                f"forced: {exc.message}. The snapshot has no copy of the VM's definition (made by "
                f"a very old libvirt, or its metadata was redefined by hand), so recovery cannot "
                f"use it. Staff: start the VM (virsh start --domain {self.name}), bring the "
                f"artwork to its known-good state, and take the snapshot again "
                f"({API_PREFIX}/snapshot/create?snapshot_name={self.snapshot_name}); recovery "
                f"works again from then on.",
                exc.command,
                exc.returncode,
            ) from None
        except RevertRisky as exc:
            refusal = exc  # kept: `exc` is unbound when the except block ends
        if isinstance(refusal, ManagedSaveConflict):
            # The image is the memory of the state a revert discards; left in
            # place, a later plain `virsh start` (or libvirt-guests at boot)
            # would resume it on top of the reverted disk.
            self.runner.managedsave_remove(self.name)
            done, force = (
                (
                    "removed the VM's stale managed save image (its memory saved at a "
                    "host shutdown) and reverted"
                ),
                False,
            )
        else:
            done, force = "reverted with --force to the snapshot and its own definition", True
        try:
            self.runner.snapshot_revert(self.name, snapshot, paused=paused, force=force)
        except RevertRisky as again:
            raise RevertNeedsStaff(
                f"libvirt refuses to revert VM {self.name!r} to snapshot {snapshot!r}: "
                f"{refusal.message}; and again after the controller {done}: {again.message}. "
                f"Staff: remove the cause libvirt names (check with: virsh snapshot-revert "
                f"--domain {self.name} --snapshotname {snapshot} --running), or take the "
                f"snapshot again ({API_PREFIX}/snapshot/create?snapshot_name="
                f"{self.snapshot_name}), then restart the VM through the API.",
                again.command,
                again.returncode,
            ) from None
        note = f"libvirt refused the revert ({refusal.message}); the controller {done}"
        log.warning("revert of VM %r to snapshot %r: %s", self.name, snapshot, note)
        return RevertResult(forced=True, note=note)

    def start(self) -> StartResult:
        """Start the VM clean: revert to the snapshot if there is one, else boot it as it is."""
        with self._lock:
            was_running = self.state() == RUNNING
            try:
                result = self.revert_and_start()
                return StartResult(reverted=True, was_running=was_running, revert=result)
            except SnapshotMissing:
                log.warning(
                    "snapshot %r of VM %r does not exist: starting the VM without a revert",
                    self.snapshot_name,
                    self.name,
                )
            with self.operation("start"):
                self._ensure_running()
            return StartResult(reverted=False, was_running=was_running)

    def keep_running(self) -> None:
        """Start the VM as it is, without a revert, if it is not running (the schedule's
        ``at_opening: start``: a VM that ran all night is kept)."""
        with self.operation("start"):
            self._ensure_running()

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
        A running guest is paused once for the whole replacement (libvirt would
        pause it for each snapshot): the new state is saved under the spare
        name, the old snapshot deleted, the new one saved from the same paused
        state, the spare deleted. At each step a usable snapshot exists: the
        old one, or the spare standing in for it (see repair_reference).
        Libvirt cannot rename an internal snapshot: QEMU's tag in the qcow2
        keeps the old name and a revert of the renamed one fails.
        """
        with self.operation(f"create snapshot {name!r}"):
            existing = self.runner.snapshot_list(self.name)
            spare = spare_name(name)
            if name not in existing:
                self.runner.snapshot_create(self.name, name)
                if spare not in existing:
                    return False
                # The spare stood in for `name`: it is replaced now.
                self.runner.snapshot_delete(self.name, spare)
                return True
            if spare in existing:
                # A leftover of a replacement cut off while `name` existed; `name`
                # is complete (libvirt creates a snapshot in one step), the spare stale.
                self.runner.snapshot_delete(self.name, spare)
            with self._held_still():
                self.runner.snapshot_create(self.name, spare)
                self.runner.snapshot_delete(self.name, name)
                try:
                    self.runner.snapshot_create(self.name, name)
                except VirshError as exc:
                    raise VirshError(
                        f"{exc.message} (the new state is kept as snapshot {spare!r}, "
                        f"which stands in for {name!r})",
                        exc.command,
                        exc.returncode,
                    ) from None
                self.runner.snapshot_delete(self.name, spare)
            return True

    @contextmanager
    def _held_still(self) -> Iterator[None]:
        """Keep a running guest paused across several snapshot commands.

        One pause instead of one per snapshot, and both snapshots of the same
        state. A guest that was not running is left as it was.
        """
        if self.state() != RUNNING:
            yield
            return
        self.runner.suspend(self.name)
        try:
            yield
        except BaseException:
            try:
                self.runner.resume(self.name)
            except VirshError as exc:
                log.error(
                    "VM %r stays paused: resuming it after a failed snapshot failed: %s",
                    self.name,
                    exc.message,
                )
            raise
        self.runner.resume(self.name)

    def repair_reference(self) -> ReferenceRepair | None:
        """Finish what a replacement cut off by a crash or kill -9 left; None if nothing.

        Spares are left only between steps of create_snapshot. A spare whose
        snapshot exists is stale and deleted: the snapshot is complete, and
        it is either the old state (cut off before the old one was deleted:
        staff's request never succeeded) or the new state identical to the
        spare's (cut off after the new one was created). A reference snapshot
        that is missing while its spare exists (cut off between deleting the
        old and creating the new) is recreated from the spare: revert to it
        paused, snapshot that identical state under the reference's name,
        delete the spare, resume. This reverts the VM, so call it only when
        the VM is about to be reverted anyway (the controller's clean start).
        """
        name, spare = self.snapshot_name, spare_name(self.snapshot_name)
        with self._lock:
            existing = self.runner.snapshot_list(self.name)
            stale = [
                s
                for s in existing
                if s.endswith(_SPARE_SUFFIX) and s[: -len(_SPARE_SUFFIX)] in existing
            ]
            adopt = spare in existing and name not in existing
            if not stale and not adopt:
                return None
            done = []
            with self.operation("repair of interrupted snapshot replacements"):
                for leftover in stale:
                    # First, so that the adoption below never sees a stale spare.
                    self.runner.snapshot_delete(self.name, leftover)
                    base = leftover[: -len(_SPARE_SUFFIX)]
                    done.append(
                        f"an interrupted replacement of snapshot {base!r} left its spare "
                        f"{leftover!r}: kept {base!r} (complete) and deleted the spare"
                    )
                if adopt:
                    self._revert(spare, paused=True)
                    self.runner.snapshot_create(self.name, name)
                    self.runner.snapshot_delete(self.name, spare)
                    self.runner.resume(self.name)
                    done.append(
                        f"snapshot {name!r} was missing after an interrupted replacement: "
                        f"recreated it from its spare {spare!r}, which holds the state "
                        f"saved for it, and deleted the spare; the VM runs from that state"
                    )
            message = "; ".join(done)
            log.warning("VM %r: %s", self.name, message)
            return ReferenceRepair(message, reverted=adopt)

    def delete_snapshot(self, name: str) -> None:
        """Delete one snapshot (raises SnapshotNotFound); snapshots made after it are kept.

        A spare of it goes too, first: otherwise a kill -9 in between would
        let the spare stand in for the deleted snapshot.
        """
        with self.operation(f"delete snapshot {name!r}"):
            spare = spare_name(name)
            existing = self.runner.snapshot_list(self.name)
            if spare in existing:
                self.runner.snapshot_delete(self.name, spare)
                if name not in existing:
                    return
            self.runner.snapshot_delete(self.name, name)
