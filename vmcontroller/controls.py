"""What the web layer may ask of the controller: a small protocol, not the Monitor.

The routes see these methods and nothing else (no store, no virsh runner, no
thread); the Monitor implements them, and route tests use an in-memory stub
(tests/test_routes.py). Failures come as the types of ``errors.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol


class HistoryRow(Protocol):
    def as_json(self) -> dict[str, Any]: ...


class Started(Protocol):
    @property
    def reverted(self) -> bool:
        """False when there was no snapshot to revert to and the VM was booted as it was."""


class Controls(Protocol):
    @property
    def vm_name(self) -> str: ...

    @property
    def snapshot_name(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def heartbeat(self, progress: str | None = None) -> dict[str, Any]: ...

    def heartbeat_status(self) -> dict[str, Any]: ...

    def start_vm(self) -> Started: ...

    def stop_vm(self) -> bool:
        """Whether the VM was running."""

    def restart_vm(self) -> None: ...

    def list_snapshots(self) -> list[str]: ...

    def create_snapshot(self, name: str) -> bool:
        """Whether an existing snapshot of that name was replaced."""

    def delete_snapshot(self, name: str) -> None: ...

    def set_auto_revert(self, enabled: bool) -> None: ...

    def request_revert(self, trigger: str, reason: str) -> dict[str, Any]: ...

    def history(
        self, limit: int = 100, since: float | None = None, triggers: Iterable[str] = ()
    ) -> Sequence[HistoryRow]: ...

    def schedule_note(self) -> str | None:
        """Outside opening hours: what a staff action's answer adds; else None."""

    def report(self, since: str | None, until: str | None) -> dict[str, Any]:
        """The availability report (report.py); raises report.ReportRangeError."""
