"""Request parameters: where they may come from and what is allowed.

Guest scripts and admin tools send the same parameter in different ways
(query string from AutoIt and curl, form fields, JSON from newer tools), so
every handler reads them through these functions, which refuse bad values
with a 400 that says what is allowed.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from flask import request

from .vocab import PROGRESS_CONTROL_CHARACTERS, PROGRESS_MAX_LENGTH


class ApiError(Exception):
    """An error with its HTTP status, raised by handlers and turned into JSON."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


SEVERITIES = ("low", "normal", "high", "critical")


def param_values(name: str) -> list[Any]:
    """Every value given for a parameter: query string, POSTed form field, JSON object.

    JSON values come as they are (null, numbers...), for the caller's check to refuse.
    """
    values: list[Any] = list(request.args.getlist(name))
    if request.method == "POST":
        values += request.form.getlist(name)
        if request.is_json:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise ApiError(400, "Invalid request body: expected a JSON object")
            if name in body:
                values.append(body[name])
    return values


def param(name: str) -> str | None:
    values = param_values(name)
    if values and not isinstance(values[0], str):
        raise ApiError(
            400, f"Invalid parameter: {name} must be a string (got {type(values[0]).__name__})"
        )
    return values[0] if values else None


def text_param(name: str, required: bool, limit: int) -> str | None:
    """Free text from the guest, made safe to log: control characters become '?'."""
    value = param(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"Invalid parameter: {name} is required")
        return None
    if len(value) > limit:
        raise ApiError(
            400, f"Invalid parameter: {name} must be at most {limit} characters (got {len(value)})"
        )
    return "".join(c if c.isprintable() else "?" for c in value).strip() or "(blank)"


def progress_value(raw: Any) -> str | None:
    """A heartbeat's progress value (a frame counter, a window title): compared as text,
    so it is refused, not cleaned, when it holds what no guest script should send."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ApiError(
            400, f"Invalid parameter: progress must be a string (got {type(raw).__name__})"
        )
    control = _CONTROL.search(raw) is not None
    if len(raw) > PROGRESS_MAX_LENGTH or control:
        raise ApiError(
            400,
            f"Invalid parameter: progress must be at most {PROGRESS_MAX_LENGTH} characters "
            f"without control characters (got {len(raw)} characters"
            f"{', a control character among them' if control else ''})",
        )
    return raw


#: Control characters (C0, DEL, C1): a progress value with one is refused.
_CONTROL = re.compile(PROGRESS_CONTROL_CHARACTERS)


def progress_in_query(query: str) -> str | None:
    """The progress value of a raw query string (the heartbeat's fast path)."""
    if "progress" not in query:
        return None
    values = parse_qs(query, keep_blank_values=True).get("progress")
    return progress_value(values[0]) if values else None


#: The numbers the API reads: ASCII digits only. Python's own tests are wider:
#: ``str.isdigit`` accepts '²', ``int`` and ``float`` accept '１', '٣', '1_000',
#: surrounding spaces, 'nan' and 'inf'. The lengths keep ``int`` far from its
#: digit limit and ``float`` from overflowing to infinity.
_WHOLE = re.compile(r"[0-9]{1,18}", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,18}(\.[0-9]{0,18})?|\.[0-9]{1,18}", re.ASCII)
_EXPONENT = re.compile(r"[eE][+-]?[0-9]{1,3}", re.ASCII)
_SECONDS = re.compile(r"[0-9]{1,11}(\.[0-9]{1,6})?", re.ASCII)


def parse_whole(raw: str) -> int | None:
    """A whole number written in ASCII digits, or None."""
    return int(raw) if _WHOLE.fullmatch(raw) else None


def parse_number(raw: str) -> float | None:
    """A finite number written as JSON or Python write one (ASCII: '12', '0.5', '1e-05',
    '-0'), or None for anything else, 'nan' and 'inf' included."""
    body = raw[1:] if raw[:1] in ("-", "+") else raw
    exponent = _EXPONENT.search(body)
    mantissa = body[: exponent.start()] if exponent and exponent.end() == len(body) else body
    if not _DECIMAL.fullmatch(mantissa):
        return None
    value = float(raw) + 0.0  # '+ 0.0' turns -0.0 into 0.0
    return value if math.isfinite(value) else None


def int_param(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = parse_whole(raw)
    if value is None or not low <= value <= high:
        raise ApiError(
            400,
            f"Invalid parameter: {name} must be a whole number from {low} to {high} (got {raw!r})",
        )
    return value


def seconds_param(name: str, high: int) -> float | None:
    """Seconds from 0 to ``high`` as query, form field or JSON number; None if absent or empty."""
    values = param_values(name)
    if not values or values[0] in (None, ""):
        return None
    given = values[0]
    value: float | None = None
    if isinstance(given, str):
        value = parse_number(given)
    elif isinstance(given, (int, float)) and not isinstance(given, bool):
        try:
            value = float(given) + 0.0
        except OverflowError:  # a JSON integer with hundreds of digits
            value = None
    if value is None or not 0 <= value <= high:  # NaN and infinity fail here too
        raise ApiError(
            400,
            f"Invalid parameter: {name} must be a number of seconds from 0 to "
            f"{high} (got {given!r})",
        )
    return value


def time_param(name: str) -> float | None:
    """ISO 8601 (a time without offset is local time) or seconds since the epoch."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if _SECONDS.fullmatch(raw):
        return float(raw)
    try:
        # Python's parser reads only ASCII digits; the time may still lie beyond
        # what the platform's clock functions take (year 1 in local time...).
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            400,
            f"Invalid parameter: {name} must be an ISO 8601 time such as "
            f"2026-11-25T10:00:00+00:00, or seconds since the epoch "
            f"(got {raw!r})",
        ) from None
