"""The failures a request may meet, as the controller's own types.

The web layer answers each with its status code (app.py, in one table) and
imports them from here alone: it never sees the virsh runner or the store.
The modules below raise these or their own specialisations of them
(``virsh.VirshError`` is a ``LibvirtFailure``, ``virsh.SnapshotNotFound`` a
``SnapshotUnknown``, ``store.StoreError`` a ``StateFileError``), so the
message virsh or SQLite gave travels up unchanged.
"""

from __future__ import annotations


class NotInitialised(Exception):
    """The controller has not finished starting; the API answers 503."""


class Conflict(Exception):
    """The request contradicts what staff decided (maintenance, stop) or the guard: 409."""


class Busy(Exception):
    """Another operation holds the VM longer than a request may wait: 503 with Retry-After."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class SnapshotMissing(Exception):
    """The configured reference snapshot does not exist, so there is nothing to revert to."""


class LibvirtFailure(Exception):
    """libvirt refused or failed; ``message`` is its own text, for staff to read."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SnapshotUnknown(LibvirtFailure):
    """libvirt knows no snapshot of that name for the VM: 404."""


class StateFileError(Exception):
    """The state file cannot be read or written; worded for the admin: 503."""
