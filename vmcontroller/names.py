"""The one rule for snapshot and VM names.

Names reach ``virsh`` as command-line arguments. virsh parses a word that starts
with ``-`` as an option, so a snapshot called ``--current`` or ``-h`` would
change what the command does (argument injection) instead of naming a snapshot.
Shell metacharacters, spaces, slashes and non-ASCII letters are not dangerous
to a subprocess argument list, but they make names hard to type from an AutoIt
or curl script, hard to read in logs and easy to confuse; so the rule is
strict: 1 to 64 characters, the first an ASCII letter or digit, the rest ASCII
letters, digits, ``.``, ``_`` or ``-``.

Every module that accepts a name (the REST handlers, the config loader, the
virsh wrapper) validates it here, and the OpenAPI schema documents the same
pattern, so the rule is written exactly once.
"""

from __future__ import annotations

import re

NAME_MAX_LENGTH = 64
"""Longest accepted name, in characters."""

NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_LENGTH - 1}}}$"
"""The rule as a regular expression (also published in the OpenAPI schema)."""

NAME_RE = re.compile(NAME_PATTERN)
"""Compiled :data:`NAME_PATTERN`; always use ``fullmatch`` (see below)."""

_ALLOWED = "ASCII letters, digits, '.', '_' and '-'"
_REST_RE = re.compile(r"[A-Za-z0-9._-]*")


class InvalidName(ValueError):
    """A name broke the rule; the message says what was wrong and what is allowed."""


def _fail(what: str, problem: str) -> InvalidName:
    return InvalidName(f"Invalid parameter: {what} {problem}")


def validate_name(value: str | None, what: str = "snapshot_name") -> str:
    """Return ``value`` unchanged if it is a valid name, else raise InvalidName.

    ``what`` names the parameter in the message (``snapshot_name``,
    ``vm_name``) so the HTTP 400 or config error tells the user which input
    to fix. The checks run from the most basic to the most specific so the
    message points at the first real problem.

    ``NAME_RE.fullmatch`` is used rather than ``match`` because ``$`` also
    matches before a trailing newline: ``"ready\\n"`` must be rejected.
    """
    if value is None or (isinstance(value, str) and value == ""):
        raise _fail(what, "cannot be empty")
    if not isinstance(value, str):
        raise _fail(what, f"must be a string (got {type(value).__name__})")
    if len(value) > NAME_MAX_LENGTH:
        raise _fail(
            what,
            f"must be at most {NAME_MAX_LENGTH} characters (got {len(value)})",
        )
    first = value[0]
    if not (first.isascii() and first.isalnum()):
        raise _fail(
            what,
            f"must start with an ASCII letter or digit (got {value!r})",
        )
    if not _REST_RE.fullmatch(value, 1):
        raise _fail(what, f"may only contain {_ALLOWED} (got {value!r})")
    if NAME_RE.fullmatch(value) is None:  # pragma: no cover - defensive
        # The checks above are the same rule spelled out; this guards them
        # against drifting apart from NAME_PATTERN.
        raise _fail(what, f"does not match {NAME_PATTERN} (got {value!r})")
    return value
