"""Request parameters: where they may come from and what is allowed.

Guest scripts and admin tools send the same parameter in different ways
(query string from AutoIt and curl, form fields, JSON from newer tools), so
every handler reads them through these functions, which refuse bad values
with a 400 that says what is allowed.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import request

from .vocab import REASON_MAX


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
        raise ApiError(400, f"Invalid parameter: {name} must be a string "
                            f"(got {type(values[0]).__name__})")
    return values[0] if values else None


def text_param(name: str, required: bool, limit: int) -> str | None:
    """Free text from the guest, made safe to log: control characters become '?'."""
    value = param(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"Invalid parameter: {name} is required")
        return None
    if len(value) > limit:
        raise ApiError(400, f"Invalid parameter: {name} must be at most {limit} characters "
                            f"(got {len(value)})")
    return "".join(c if c.isprintable() else "?" for c in value).strip() or "(blank)"


def int_param(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"Invalid parameter: {name} must be a whole number from {low} to "
                            f"{high} (got {raw!r})")
    return int(raw)


def time_param(name: str) -> float | None:
    """ISO 8601 (a time without offset is local time) or seconds since the epoch."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if re.fullmatch(r"[0-9]{1,11}(\.[0-9]{1,6})?", raw):
        return float(raw)
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(400, f"Invalid parameter: {name} must be an ISO 8601 time such as "
                            f"2026-11-25T10:00:00+00:00, or seconds since the epoch "
                            f"(got {raw!r})") from None

