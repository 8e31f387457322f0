"""The OpenAPI 3.0.3 description of the REST API, written out as data.

Why a hand-written document instead of flasgger's docstring scanning: the
contract (docs api-reference) fixes paths, methods, field names and status
codes, and one explicit document is easier to review against it than YAML
spread over route docstrings. Tests validate real responses against this
document, so it cannot drift from the handlers unnoticed.

Shared pieces (schemas, responses, parameters, the request body) live under
``components`` and are referenced with ``$ref``; the operations that GET and
POST share are built once by helper functions here.
"""

from __future__ import annotations

import copy
from typing import Any

from .names import NAME_MAX_LENGTH, NAME_PATTERN
from .stream import REPLAY_MAX
from .vocab import (
    AT_CLOSING_CHOICES,
    AT_OPENING_CHOICES,
    EVENTS_STREAM_PATH,
    GUARD_STATES,
    GUEST_PATHS,
    IDLE_DURATION_MAX,
    MAX_BODY,
    MAX_HEADER_BLOCK,
    MAX_QUERY,
    METRICS_PATH,
    OUTCOMES,
    PROGRESS_CONTROL_CHARACTERS,
    PROGRESS_MAX_LENGTH,
    READ_ONLY_PATHS,
    REPEAT_INTERVAL,
    REPORT_MAX_DAYS,
    RULE_KINDS,
    SCHEDULE_STATES,
    TRIGGERS,
)

OPENAPI_VERSION = "3.0.3"
TITLE = "Exhibition VM Controller API"

JSON = "application/json"
EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
_STREAM_EXAMPLE = (
    "retry: 3000\n\n"
    'event: status\ndata: {"vm_name":"eden-garden-vm","vm_state":"running",...}\n\n'
    'event: heartbeat\ndata: {"enabled":true,"last_heartbeat":'
    '"2025-12-09T09:12:03.501+01:00","seconds_since_last":0.2,"is_healthy":true,'
    '"timeout":10.0}\n\n'
    'id: 42\nevent: history\ndata: {"id":42,"time":"2025-12-09T09:12:03.501+01:00",'
    '"vm":"eden-garden-vm","trigger":"heartbeat_timeout","action":"revert",'
    '"reason":"no heartbeat for 10.0 s (timeout 10 s)","outcome":"started",'
    '"duration":null,"error":null,"count":1}\n\n'
    ": keep-alive\n\n"
)

_DESCRIPTION = """\
Keeps a digital artwork that runs inside a libvirt/QEMU virtual machine alive \
at an exhibition without staff. A script in the guest sends a heartbeat every \
second; when heartbeats stop, when the VM crashes or is shut down behind the \
controller's back, or when the guest asks for it, the controller reverts the VM \
to its known-good snapshot and starts it again. Staff and admin scripts use \
this API to control the VM, manage snapshots and switch automatic recovery off \
for maintenance.

**Conventions**

* Every response body is JSON (but `/metrics`, Prometheus' text, and the \
event stream, `text/event-stream`). Every error body is `{"detail": "..."}` saying \
what was wrong (and, for a bad input, what is allowed).
* An unknown path answers **404** (`{"detail": "Not Found"}`) and a known path \
called with a method it does not support answers **405** \
(`{"detail": "Method Not Allowed"}`).
* Every action accepts GET as well as POST, because the scripts in old guests \
(AutoIt on Windows XP, wget) can send GET most easily.
* **503** means the controller is still starting (its VM manager or heartbeat \
monitor is not ready yet), or that another operation on the VM (a revert, a \
snapshot) has held it longer than `api_busy_timeout`, or that the history \
cannot be read from the state file: try again later (busy answers carry \
`Retry-After`).
* **Tokens** (optional, see the Security section of README.rst): with \
`api_token` set, every endpoint that changes or reveals state needs it; with \
`guest_token` set, the guest's endpoints (heartbeat, revert request, idle \
reset) need it or the staff token. Send it as `Authorization: Bearer <token>` \
or as a `token` query parameter (for GET-only clients). Missing or wrong: \
**401**; the guest token on any other endpoint: **403**. With no token \
configured, no token is needed.
* **Cross-site requests**: a request a browser marks as coming from another \
site (`Sec-Fetch-Site: cross-site`/`same-site`, or an `Origin` that is not \
the controller's own and not in `cors_origins`) cannot change anything: \
**403**, token or not. HEAD is judged like GET.
* **Host**: a request whose `Host` header is not an IP address, `localhost`, \
one of the machine's own names or a name in `allowed_hosts` answers **400**, \
on every path (protection against DNS rebinding).
* Bodies over 64 KiB answer **413**; query strings over 8192 bytes **414**; header \
blocks over 16 KiB **431**.
"""


_BAD_HOST = (
    "The Host header names another host: not an IP address, localhost, "
    "one of the machine's own names nor a name in allowed_hosts "
    "(protection against DNS rebinding)."
)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _json(
    schema: dict[str, Any], example: Any = None, examples: dict[str, Any] | None = None
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if examples is not None:
        media["examples"] = {
            key: {"summary": summary, "value": value} for key, (summary, value) in examples.items()
        }
    elif example is not None:
        media["example"] = example
    return {JSON: media}


def _error(description: str, detail: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json(_schema("Error"), {"detail": detail}),
    }


def _message_ok(description: str, message: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": _json(_schema("Message"), {"message": message, "details": None}),
    }


def _libvirt_error(action: str, detail: str) -> dict[str, Any]:
    """A 500 whose example shows what this operation reports on failure."""
    return _error(
        f"{action} failed: virsh or libvirt reported an error. `detail` "
        "carries virsh's own message.",
        detail,
    )


#: What /metrics answers in (prometheus_client's CONTENT_TYPE_LATEST, less its charset).
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"
_METRICS_EXAMPLE = """\
# HELP vmcontroller_heartbeat_age_seconds Seconds since the last heartbeat from the guest \
(absent until the first).
# TYPE vmcontroller_heartbeat_age_seconds gauge
vmcontroller_heartbeat_age_seconds 0.412
# HELP vmcontroller_vm_up 1 if the VM is running.
# TYPE vmcontroller_vm_up gauge
vmcontroller_vm_up 1.0
# HELP vmcontroller_recoveries_total Reverts and starts of the VM, by trigger and outcome.
# TYPE vmcontroller_recoveries_total counter
vmcontroller_recoveries_total{outcome="succeeded",trigger="heartbeat_timeout"} 3.0
"""


# ---------------------------------------------------------------- components


def _heartbeat_example() -> dict[str, Any]:
    return {
        "enabled": True,
        "last_heartbeat": "2025-12-09T10:30:45.123456",
        "seconds_since_last": 2.5,
        "is_healthy": True,
        "timeout": 10,
    }


_REPORT_FIELDS = (
    "healthy_seconds",
    "unhealthy_seconds",
    "staff_seconds",
    "unmonitored_seconds",
    "healthy_share",
    "recoveries",
    "recoveries_total",
    "longest_outage_seconds",
    "open_seconds",
    "healthy_open_share",
)


def _report_fields() -> dict[str, Any]:
    """The figures of a report's day, and of its totals."""
    seconds = {"type": "number", "minimum": 0}
    return {
        "healthy_seconds": {
            **seconds,
            "description": "The VM ran and heartbeated within the timeout.",
        },
        "unhealthy_seconds": {
            **seconds,
            "description": "Down, silent past the timeout, or being brought back (from "
            "a start of the controller to the first heartbeat too).",
        },
        "staff_seconds": {
            **seconds,
            "description": "Maintenance on, or stopped by staff: planned, not an outage.",
        },
        "unmonitored_seconds": {
            **seconds,
            "description": "The controller was not running (or the time is still to come).",
        },
        "healthy_share": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "nullable": True,
            "description": "healthy / (healthy + unhealthy); null when both are 0.",
        },
        "recoveries": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1},
            "description": "Starts and reverts carried out, by trigger (refused or "
            "skipped ones are not counted).",
        },
        "recoveries_total": {"type": "integer", "minimum": 0},
        "longest_outage_seconds": {
            **seconds,
            "description": "The longest unhealthy span overlapping the day, clipped to it "
            "(for the totals: to the range).",
        },
        "open_seconds": {
            **seconds,
            "nullable": True,
            "description": "Opening time of the day (config key schedule; maintenance "
            "windows not counted) up to now; null without a schedule.",
        },
        "healthy_open_share": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "nullable": True,
            "description": "The share of the opening time in which the artwork was "
            "healthy; null without a schedule or without opening time.",
        },
    }


def _report_example() -> dict[str, Any]:
    day = {
        "healthy_seconds": 86321.5,
        "unhealthy_seconds": 78.5,
        "staff_seconds": 0.0,
        "unmonitored_seconds": 0.0,
        "healthy_share": 0.999092,
        "recoveries": {"heartbeat_timeout": 1},
        "recoveries_total": 1,
        "longest_outage_seconds": 78.5,
        "open_seconds": None,
        "healthy_open_share": None,
    }
    return {
        "vm": "eden-garden-vm",
        "since": "2025-12-09",
        "until": "2025-12-09",
        "days": [{"date": "2025-12-09", **day}],
        "total": day,
    }


def _schemas() -> dict[str, Any]:
    return {
        "SnapshotName": {
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX_LENGTH,
            "pattern": NAME_PATTERN,
            "description": (
                f"1 to {NAME_MAX_LENGTH} characters: the first an ASCII "
                "letter or digit, the rest ASCII letters, digits, '.', '_' or "
                "'-'. A leading '-' is refused because virsh would read the "
                "name as an option."
            ),
            "example": "backup-2025-12-09-1030",
        },
        "Error": {
            "type": "object",
            "description": "Body of every error response.",
            "required": ["detail"],
            "properties": {
                "detail": {
                    "type": "string",
                    "description": "What went wrong, in plain words.",
                },
            },
        },
        "Message": {
            "type": "object",
            "description": "Result of an action.",
            "required": ["message", "details"],
            "properties": {
                "message": {
                    "type": "string",
                    "description": "What was done.",
                },
                "details": {
                    "type": "object",
                    "nullable": True,
                    "additionalProperties": True,
                    "description": "Extra facts about the result, or null. A start, "
                    "stop or restart outside opening hours is carried out and says "
                    "so in `note` (the VM is not watched until opening).",
                },
            },
        },
        "RootInfo": {
            "type": "object",
            "required": ["message", "details"],
            "properties": {
                "message": {"type": "string", "example": TITLE},
                "details": {
                    "type": "object",
                    "required": ["version", "documentation", "status"],
                    "properties": {
                        "version": {"type": "string", "description": "Controller version."},
                        "documentation": {
                            "type": "string",
                            "description": "Path of the Swagger UI page.",
                            "example": "/docs",
                        },
                        "status": {
                            "type": "string",
                            "description": "Path of the status endpoint.",
                            "example": "/api/v1/status",
                        },
                    },
                },
            },
        },
        "HeartbeatStatus": {
            "type": "object",
            "description": "State of the heartbeat watchdog.",
            "required": [
                "enabled",
                "last_heartbeat",
                "seconds_since_last",
                "is_healthy",
                "timeout",
            ],
            "properties": {
                "enabled": {
                    "type": "boolean",
                    "description": (
                        "Whether the timeout is enforced now (false while the "
                        "VM is stopped or during the start-up grace period)."
                    ),
                },
                "last_heartbeat": {
                    "type": "string",
                    "format": "date-time",
                    "nullable": True,
                    "description": (
                        "ISO 8601 time of the last heartbeat received, or "
                        "null if none has arrived since monitoring started."
                    ),
                },
                "seconds_since_last": {
                    "type": "number",
                    "nullable": True,
                    "description": (
                        "Seconds since the last heartbeat, or null if none has arrived."
                    ),
                },
                "is_healthy": {
                    "type": "boolean",
                    "description": "True while heartbeats arrive within `timeout`.",
                },
                "timeout": {
                    "type": "number",
                    "description": "Configured heartbeat timeout in seconds (heartbeat_timeout).",
                },
                "progress": {
                    "type": "object",
                    "nullable": True,
                    "description": (
                        "The heartbeats' progress value; null while none was sent and "
                        "the progress rule is off."
                    ),
                    "required": ["value", "changed_at", "seconds_unchanged", "timeout"],
                    "properties": {
                        "value": {"type": "string", "nullable": True},
                        "changed_at": {"type": "string", "format": "date-time", "nullable": True},
                        "seconds_unchanged": {"type": "number", "nullable": True},
                        "timeout": {
                            "type": "number",
                            "nullable": True,
                            "description": "heartbeat_progress_timeout, null when off.",
                        },
                    },
                },
            },
            "example": _heartbeat_example(),
        },
        "HeartbeatAck": {
            "type": "object",
            "required": ["message", "details"],
            "properties": {
                "message": {"type": "string", "example": "Heartbeat received"},
                "details": _schema("HeartbeatStatus"),
            },
        },
        "Status": {
            "type": "object",
            "required": [
                "vm_name",
                "vm_state",
                "vm_is_running",
                "snapshot_name",
                "snapshot_exists",
                "heartbeat",
                "auto_revert_enabled",
            ],
            "properties": {
                "vm_name": {
                    "type": "string",
                    "description": "Name of the libvirt domain being controlled.",
                },
                "vm_state": {
                    "type": "string",
                    "description": (
                        'libvirt\'s state of the VM, e.g. "running", '
                        '"shut off", "paused", or "not found" when no '
                        "domain of that name exists."
                    ),
                    "example": "running",
                },
                "vm_is_running": {"type": "boolean"},
                "snapshot_name": {
                    "type": "string",
                    "description": "The reference snapshot that start, "
                    "restart and automatic recovery revert to.",
                },
                "snapshot_exists": {"type": "boolean"},
                "heartbeat": _schema("HeartbeatStatus"),
                "auto_revert_enabled": {
                    "type": "boolean",
                    "description": "Whether a heartbeat timeout or crash "
                    "triggers an automatic revert.",
                },
                "vm_state_detail": {
                    "type": "string",
                    "nullable": True,
                    "description": 'Why vm_state is "unknown" (libvirt did '
                    "not answer), else null. Beyond the API "
                    "reference (additive).",
                },
                "stopped_by_staff": {
                    "type": "boolean",
                    "description": "The VM was stopped through the API and stays "
                    "stopped until started (additive).",
                },
                "recovery": _schema("RecoveryStatus"),
                "snapshot_detail": {
                    "type": "string",
                    "nullable": True,
                    "description": "What the controller found of the reference "
                    "snapshot at start, when a replacement was cut "
                    "off by a crash, and what it did (additive).",
                },
                "state_file": {
                    "type": "object",
                    "description": "Whether state and history reach the state "
                    "file (additive). When they do not (disk "
                    "full, read-only, locked), the watchdog "
                    "goes on and writes are retried.",
                    "required": ["saving", "detail"],
                    "properties": {
                        "saving": {"type": "boolean"},
                        "detail": {"type": "string", "nullable": True, "example": None},
                    },
                },
                "schedule": _schedule_status(),
                "notifications": _schema("NotificationStatus"),
                "screen": _schema("ScreenStatus"),
            },
        },
        "ScreenStatus": {
            "type": "object",
            "nullable": True,
            "description": "What the screen watcher sees (additive; see README, Watching "
            "the screen). Null when the configuration has no screen: section.",
            "required": ["interval", "judged", "last_screenshot", "size", "error", "rules"],
            "properties": {
                "interval": {"type": "number", "description": "Seconds between screenshots."},
                "judged": {
                    "type": "boolean",
                    "description": "Whether a failing rule is acted on now (false during "
                    "the grace period, in maintenance, in closed hours, while stopped).",
                },
                "last_screenshot": {"type": "string", "format": "date-time", "nullable": True},
                "size": {
                    "type": "array",
                    "nullable": True,
                    "items": {"type": "integer"},
                    "description": "The guest's screen in pixels: [width, height].",
                },
                "error": {
                    "type": "string",
                    "nullable": True,
                    "description": "Why the last screenshot could not be taken (virsh's "
                    "message), else null.",
                },
                "rules": {
                    "type": "array",
                    "description": "Each rule's verdict on the last screenshot.",
                    "items": {
                        "type": "object",
                        "required": [
                            "rule",
                            "kind",
                            "holding",
                            "since",
                            "held_seconds",
                            "failing",
                            "detail",
                        ],
                        "properties": {
                            "rule": {"type": "string"},
                            "kind": {"type": "string", "enum": list(RULE_KINDS)},
                            "holding": {"type": "boolean"},
                            "since": {"type": "number", "nullable": True},
                            "held_seconds": {
                                "type": "number",
                                "description": "Seconds counted toward the rule's limit.",
                            },
                            "failing": {"type": "boolean"},
                            "detail": {"type": "string"},
                        },
                    },
                },
            },
        },
        "NotificationStatus": {
            "type": "object",
            "nullable": True,
            "description": "Notifications (webhook, e-mail) and the dead man's switch "
            "(additive; see README, Notifications). Null when the controller runs "
            "without its delivery thread.",
            "required": ["channels", "queued", "ping"],
            "properties": {
                "channels": {
                    "type": "object",
                    "description": "Each configured channel (webhook, email) by name; "
                    "empty when none is configured.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["last_delivery", "last_error", "queued"],
                        "properties": {
                            "last_delivery": {
                                "type": "string",
                                "format": "date-time",
                                "nullable": True,
                            },
                            "last_error": {
                                "type": "string",
                                "nullable": True,
                                "description": "Why the last attempt failed; null "
                                "once one succeeds. Failed messages are retried "
                                "with back-off and kept in the state file.",
                            },
                            "queued": {"type": "integer", "minimum": 0},
                        },
                    },
                },
                "queued": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Messages waiting for delivery, one per channel.",
                },
                "ping": {
                    "type": "object",
                    "nullable": True,
                    "description": "The ping to ping_url (null when not configured).",
                    "required": ["interval", "last_ping", "last_error"],
                    "properties": {
                        "interval": {"type": "number"},
                        "last_ping": {"type": "string", "format": "date-time", "nullable": True},
                        "last_error": {"type": "string", "nullable": True},
                    },
                },
            },
        },
        "RecoveryStatus": {
            "type": "object",
            "description": "Automatic recoveries so far and the restart-loop guard (additive).",
            "required": ["count", "last_time", "last_trigger", "last_outcome", "guard"],
            "properties": {
                "count": {
                    "type": "integer",
                    "description": "Automatic recovery attempts recorded.",
                },
                "last_time": {"type": "string", "format": "date-time", "nullable": True},
                "last_trigger": {
                    "type": "string",
                    "nullable": True,
                    "example": "heartbeat_timeout",
                },
                "last_outcome": {"type": "string", "nullable": True, "example": "succeeded"},
                "guard": _schema("GuardStatus"),
            },
        },
        "GuardStatus": {
            "type": "object",
            "description": "At most max_recoveries automatic recoveries within "
            "recovery_window seconds; past that the VM is left "
            "as it is (`failed`) until staff start or restart it.",
            "required": [
                "state",
                "detail",
                "recent_recoveries",
                "max_recoveries",
                "recovery_window",
                "consecutive_failures",
                "retry_in",
            ],
            "properties": {
                "state": {"type": "string", "enum": list(GUARD_STATES)},
                "detail": {"type": "string", "nullable": True},
                "recent_recoveries": {"type": "integer"},
                "max_recoveries": {"type": "integer"},
                "recovery_window": {"type": "number"},
                "consecutive_failures": {"type": "integer"},
                "retry_in": {
                    "type": "number",
                    "nullable": True,
                    "description": "Seconds until the next attempt may start, while backing off.",
                },
            },
        },
        "HistoryEvent": {
            "type": "object",
            "required": [
                "id",
                "time",
                "vm",
                "trigger",
                "action",
                "reason",
                "outcome",
                "duration",
                "error",
                "count",
                "screenshot",
            ],
            "properties": {
                "id": {"type": "integer"},
                "time": {"type": "string", "format": "date-time"},
                "vm": {"type": "string"},
                "trigger": {"type": "string", "enum": list(TRIGGERS)},
                "action": {
                    "type": "string",
                    "example": "revert",
                    "description": "revert, start, stop, snapshot_create, "
                    "snapshot_delete, enable_auto_revert, "
                    "disable_auto_revert; at start-up also "
                    "adopt (a healthy running VM kept as it "
                    "is) and snapshot_repair (a replacement "
                    "cut off by a crash, finished)",
                },
                "reason": {"type": "string"},
                "outcome": {"type": "string", "enum": list(OUTCOMES)},
                "duration": {"type": "number", "nullable": True, "description": "Seconds."},
                "error": {
                    "type": "string",
                    "nullable": True,
                    "description": "virsh's message when it failed; for a "
                    "revert that succeeded only when forced, "
                    "libvirt's refusal and what was done.",
                },
                "count": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "How many times this happened. A request "
                    "that is refused again and again (same VM, "
                    "trigger, action, outcome and error) within "
                    f"{REPEAT_INTERVAL:g} s of the first is counted "
                    "here instead of adding a row; time and reason "
                    "are the first one's.",
                },
                "screenshot": {
                    "type": "string",
                    "nullable": True,
                    "description": "For a screen rule's recovery: where the screenshot "
                    "that caused it is served (GET it with the staff token); removed "
                    "with the oldest beyond screen.keep. Null for other rows.",
                    "example": None,
                },
            },
        },
        "History": {
            "type": "object",
            "required": ["vm_name", "events"],
            "properties": {
                "vm_name": {"type": "string"},
                "events": {"type": "array", "items": _schema("HistoryEvent")},
            },
        },
        "ReportTotals": {
            "type": "object",
            "required": list(_REPORT_FIELDS),
            "properties": _report_fields(),
        },
        "ReportDay": {
            "type": "object",
            "required": ["date", *_REPORT_FIELDS],
            "properties": {
                "date": {"type": "string", "format": "date", "description": "A local day."},
                **_report_fields(),
            },
        },
        "Report": {
            "type": "object",
            "required": ["vm", "since", "until", "days", "total"],
            "properties": {
                "vm": {"type": "string"},
                "since": {"type": "string", "format": "date"},
                "until": {"type": "string", "format": "date"},
                "days": {
                    "type": "array",
                    "items": _schema("ReportDay"),
                    "description": "One per day from since to until, oldest first.",
                },
                "total": _schema("ReportTotals"),
            },
        },
        "GuestRequestAck": {
            "type": "object",
            "required": ["message", "details"],
            "properties": {
                "message": {"type": "string", "example": "Revert queued"},
                "details": {
                    "type": "object",
                    "required": ["action", "trigger", "reason", "queued"],
                    "properties": {
                        "action": {"type": "string", "enum": ["revert"]},
                        "trigger": {"type": "string", "enum": ["guest_request", "idle_reset"]},
                        "reason": {"type": "string"},
                        "queued": {
                            "type": "boolean",
                            "description": "false: a revert is already "
                            "under way or the VM was just "
                            "restored; nothing more is "
                            "queued.",
                        },
                        "note": {"type": "string"},
                    },
                },
            },
        },
        "SnapshotList": {
            "type": "object",
            "required": ["vm_name", "snapshots"],
            "properties": {
                "vm_name": {"type": "string"},
                "snapshots": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Names of the VM's snapshots.",
                },
            },
        },
        "SnapshotCreateForm": {
            "type": "object",
            "properties": {
                "snapshot_name": _schema("SnapshotName"),
            },
        },
    }


def _parameters() -> dict[str, Any]:
    return {
        "SnapshotNameQuery": {
            "name": "snapshot_name",
            "in": "query",
            "required": False,
            "description": (
                "Name of the snapshot to create. Defaults to the configured "
                'snapshot name (usually "ready").'
            ),
            "schema": _schema("SnapshotName"),
        },
        "SnapshotNamePath": {
            "name": "snapshot_name",
            "in": "path",
            "required": True,
            "description": "Name of the snapshot to delete.",
            "schema": _schema("SnapshotName"),
        },
    }


def _responses() -> dict[str, Any]:
    return {
        "ServiceUnavailable": {
            **_error(
                "The controller is still starting (its VM manager or heartbeat "
                "monitor is not ready yet), another operation has held the VM "
                "longer than api_busy_timeout (then with Retry-After), or the "
                "state file cannot be read. Retry shortly.",
                "VM manager not initialized",
            ),
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying, when the VM "
                    "is busy with another operation.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
        "InvalidSnapshotName": _error(
            "The snapshot name breaks the naming rule (see SnapshotName).",
            "Invalid parameter: snapshot_name must start with an ASCII letter or digit (got '-h')",
        ),
        "SnapshotNotFound": _error(
            "The VM has no snapshot of that name.",
            "Snapshot 'backup-2025-12-01' not found for VM 'eden-garden-vm'",
        ),
        "GuestRequestRefused": _error(
            "Not queued: automatic revert is disabled (maintenance), the VM "
            "was stopped by staff, or the restart-loop guard has tripped.",
            "Revert not queued: automatic revert is disabled (maintenance)",
        ),
        "Unauthorized": {
            **_error(
                "A token is configured and this request did not present a "
                "valid one (Authorization: Bearer <token>, or ?token=).",
                "Unauthorized: this endpoint needs the staff token, as "
                "'Authorization: Bearer <token>' or '?token=<token>'",
            ),
            "headers": {
                "WWW-Authenticate": {
                    "description": 'Bearer realm="exhibition-vm-controller"',
                    "schema": {"type": "string"},
                }
            },
        },
        "GuestTokenRefused": _error(
            "The request presented the guest token: it only sends heartbeats "
            "and revert requests; this endpoint needs the staff token.",
            "Forbidden: this is the guest's token, it only sends heartbeats "
            "and revert requests; this endpoint needs the staff token",
        ),
        "CrossSiteRefused": _error(
            "A browser marked the request as coming from another site: it "
            "may not change anything, token or not. Also the answer to the "
            "guest token, which only sends heartbeats and revert requests.",
            "Cross-site request refused: the browser marked it Sec-Fetch-Site: "
            "cross-site. Staff tools must call the API directly, not from "
            "another site's page.",
        ),
        "BadHost": _error(
            _BAD_HOST,
            "Host 'evil.example:8000' is not a name of this controller: a page "
            "may have pointed its own name at this machine (DNS rebinding). To "
            "reach the controller under this name, add it to allowed_hosts in "
            "the configuration.",
        ),
        "TooLarge": _error(
            f"The request body is over {MAX_BODY // 1024} KiB.",
            f"Request body too large: at most {MAX_BODY} bytes (got 70000)",
        ),
        "UriTooLong": _error(
            f"The query string is over {MAX_QUERY} bytes.",
            f"Query string too long: at most {MAX_QUERY} bytes",
        ),
        "HeadersTooLarge": _error(
            f"The request's header block is over {MAX_HEADER_BLOCK // 1024} KiB "
            "(refused by the HTTP server before any route runs).",
            "Request Header Fields Too Large",
        ),
        "ReferenceSnapshotMissing": _error(
            "The configured reference snapshot does not exist, so there is "
            "nothing to revert to. Create it with /api/v1/snapshot/create.",
            "snapshot 'ready' of VM 'eden-garden-vm' does not exist; create "
            "it with /api/v1/snapshot/create",
        ),
    }


def _request_bodies() -> dict[str, Any]:
    form = {"schema": _schema("SnapshotCreateForm")}
    return {
        "SnapshotCreateForm": {
            "required": False,
            "description": (
                "Optional field `snapshot_name` (form or JSON object), the same "
                "as the query parameter; the query parameter wins if both are "
                "sent."
            ),
            "content": {
                "application/x-www-form-urlencoded": form,
                "multipart/form-data": form,
                "application/json": form,
            },
        },
    }


# ---------------------------------------------------------------- operations


def _operation(
    tag: str,
    operation_id: str,
    summary: str,
    description: str,
    responses: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [tag],
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "responses": responses,
    }
    op.update(extra)
    return op


def _png_response() -> dict[str, Any]:
    return {
        "description": "The screenshot, a PNG in the guest's own pixels.",
        "content": {
            "image/png": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(the PNG's bytes)",
            }
        },
    }


def _get_and_post(
    tag: str,
    base_id: str,
    summary: str,
    description: str,
    responses: dict[str, Any],
    post_extra: dict[str, Any] | None = None,
    path_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A path item whose GET and POST do the same thing.

    GET exists for guest scripts that cannot send POST easily, so the two
    operations differ only in their operationId (which must be unique).
    """
    item: dict[str, Any] = dict(path_extra or {})
    item["get"] = _operation(tag, f"{base_id}Get", summary, description, responses)
    item["post"] = _operation(
        tag, f"{base_id}Post", summary, description, copy.deepcopy(responses), **(post_extra or {})
    )
    return item


def _guest_request_queued(trigger: str, reason: str) -> dict[str, Any]:
    """The 202 of the guest's requests, with an example for this trigger."""
    return {
        "description": "Queued, or already taken care of.",
        "content": _json(
            _schema("GuestRequestAck"),
            {
                "message": "Revert queued",
                "details": {
                    "action": "revert",
                    "trigger": trigger,
                    "reason": reason,
                    "queued": True,
                },
            },
        ),
    }


def _503() -> dict[str, str]:
    return _ref("responses", "ServiceUnavailable")


_DELETE_DESCRIPTION = (
    "Deletes one snapshot of the VM (its children are kept). Deleting the "
    "reference snapshot leaves nothing to revert to until a new one is "
    "created."
)


def _delete_responses() -> dict[str, Any]:
    return {
        "200": _message_ok(
            "The snapshot is gone.", "Snapshot 'backup-2025-12-01' deleted successfully"
        ),
        "400": _ref("responses", "InvalidSnapshotName"),
        "404": _ref("responses", "SnapshotNotFound"),
        "500": _libvirt_error(
            "Deleting the snapshot",
            "Error deleting snapshot: Failed to delete snapshot "
            "'backup-2025-12-01': Timed out during operation: cannot acquire "
            "state change lock",
        ),
        "503": _503(),
    }


def _paths() -> dict[str, Any]:
    heartbeat_ack = {
        "message": "Heartbeat received",
        "details": dict(
            _heartbeat_example(),
            last_heartbeat="2025-12-09T10:30:47.654321",
            seconds_since_last=0.0,
        ),
    }
    return {
        "/": {
            "get": _operation(
                "Status",
                "getRootInfo",
                "API name, version and links",
                "Tells the controller's version and where the documentation "
                "and the status endpoint are.",
                {
                    "200": {
                        "description": "API information.",
                        "content": _json(
                            _schema("RootInfo"),
                            {
                                "message": TITLE,
                                "details": {
                                    "version": "1.3.0",
                                    "documentation": "/docs",
                                    "status": "/api/v1/status",
                                },
                            },
                        ),
                    }
                },
            ),
        },
        "/api/v1/status": {
            "get": _operation(
                "Status",
                "getStatus",
                "VM, snapshot and heartbeat status",
                "Everything an operator needs at a glance: the VM's state, "
                "whether the reference snapshot exists, the heartbeat "
                "watchdog and whether automatic revert is on.",
                {
                    "200": {
                        "description": "Current status.",
                        "content": _json(
                            _schema("Status"),
                            {
                                "vm_name": "eden-garden-vm",
                                "vm_state": "running",
                                "vm_is_running": True,
                                "snapshot_name": "ready",
                                "snapshot_exists": True,
                                "heartbeat": _heartbeat_example(),
                                "auto_revert_enabled": True,
                                "vm_state_detail": None,
                                "stopped_by_staff": False,
                                "recovery": {
                                    "count": 3,
                                    "last_time": "2025-12-09T09:12:03.501+01:00",
                                    "last_trigger": "heartbeat_timeout",
                                    "last_outcome": "succeeded",
                                    "guard": {
                                        "state": "ok",
                                        "detail": None,
                                        "recent_recoveries": 1,
                                        "max_recoveries": 5,
                                        "recovery_window": 600.0,
                                        "consecutive_failures": 0,
                                        "retry_in": None,
                                    },
                                },
                                "state_file": {"saving": True, "detail": None},
                                "snapshot_detail": None,
                                "notifications": {
                                    "channels": {
                                        "email": {
                                            "last_delivery": "2025-12-09T09:12:10+01:00",
                                            "last_error": None,
                                            "queued": 0,
                                        }
                                    },
                                    "queued": 0,
                                    "ping": {
                                        "interval": 60.0,
                                        "last_ping": "2025-12-09T10:01:00+01:00",
                                        "last_error": None,
                                    },
                                },
                            },
                        ),
                    },
                    "500": _libvirt_error(
                        "Reading the status",
                        "Error retrieving status: failed to connect to the hypervisor",
                    ),
                    "503": _503(),
                },
            ),
        },
        METRICS_PATH: {
            "get": _operation(
                "Status",
                "getMetrics",
                "Prometheus metrics",
                "The controller's state and history in Prometheus' text exposition "
                "format (version 0.0.4), for a Prometheus server to scrape: heartbeats "
                "received, seconds since the last one, the VM's state, recoveries by "
                "trigger and outcome with their durations, the guard's state, "
                "maintenance and staff-stop flags, whether libvirt answers, and the "
                "process' own figures. Names start with `vmcontroller_`; README.rst, "
                "Metrics, lists them. Guarded like status: with `api_token` set, "
                "Prometheus sends it as a bearer token.",
                {
                    "200": {
                        "description": "The metrics, as text.",
                        "content": {
                            METRICS_MEDIA_TYPE: {
                                "schema": {"type": "string"},
                                "example": _METRICS_EXAMPLE,
                            }
                        },
                    },
                },
            ),
        },
        "/api/v1/heartbeat": _get_and_post(
            "Heartbeat",
            "sendHeartbeat",
            "Receive a heartbeat from the guest",
            "Called by the script in the guest, typically once a second. "
            "Each call pushes back the heartbeat deadline. GET and POST do "
            "the same; query parameters other than `token` and `progress` (guest "
            "scripts add `seq=`, `boot=` and the like) and any other body are ignored.",
            {
                "200": {
                    "description": "Heartbeat recorded; the watchdog state after it.",
                    "content": _json(_schema("HeartbeatAck"), heartbeat_ack),
                },
                "400": _error(
                    "A progress value too long or with control characters; the "
                    "heartbeat is not recorded.",
                    "Invalid parameter: progress must be at most "
                    f"{PROGRESS_MAX_LENGTH} characters without control characters (got 300 "
                    "characters)",
                ),
                "503": _503(),
            },
            path_extra={
                "parameters": [
                    {
                        "name": "progress",
                        "in": "query",
                        "required": False,
                        "description": (
                            "What the guest script sees of the artwork (a frame counter, "
                            "a window title), compared as text: with "
                            "`heartbeat_progress_timeout`, a value that has not changed "
                            "for that long is a failure (trigger `progress_stalled`). "
                            "Also accepted as a POST form field or JSON member."
                        ),
                        "schema": {
                            "type": "string",
                            "maxLength": PROGRESS_MAX_LENGTH,
                            "pattern": f"^((?!{PROGRESS_CONTROL_CHARACTERS}).)*$",
                        },
                    }
                ]
            },
        ),
        "/api/v1/heartbeat/status": {
            "get": _operation(
                "Heartbeat",
                "getHeartbeatStatus",
                "Heartbeat watchdog state",
                "When the last heartbeat arrived and whether the guest is within its timeout.",
                {
                    "200": {
                        "description": "Watchdog state.",
                        "content": _json(_schema("HeartbeatStatus"), _heartbeat_example()),
                    },
                    "503": _503(),
                },
            ),
        },
        "/api/v1/vm/start": _get_and_post(
            "VM control",
            "startVm",
            "Revert to the snapshot and start the VM",
            "Reverts the VM to the configured snapshot and starts it. Clears "
            "a manual stop (automatic recovery applies again) and resets "
            "heartbeat monitoring, with the start-up grace period "
            "(vm_startup_heartbeat_delay). If the snapshot does not exist, "
            "the VM is booted as it is and the message says so.",
            {
                "200": {
                    "description": "The VM runs.",
                    "content": _json(
                        _schema("Message"),
                        examples={
                            "reverted": (
                                "Reverted to the snapshot and started",
                                {
                                    "message": "VM 'eden-garden-vm' started successfully",
                                    "details": None,
                                },
                            ),
                            "no_snapshot": (
                                "No snapshot to revert to: booted as it is",
                                {
                                    "message": "VM 'eden-garden-vm' started "
                                    "successfully (snapshot 'ready' not "
                                    "found: booted without a revert)",
                                    "details": None,
                                },
                            ),
                        },
                    ),
                },
                "500": _libvirt_error(
                    "Starting the VM",
                    "Error starting VM: Failed to revert snapshot "
                    "'ready': internal error: unable to execute QEMU command",
                ),
                "503": _503(),
            },
        ),
        "/api/v1/vm/stop": _get_and_post(
            "VM control",
            "stopVm",
            "Stop the VM and keep it stopped",
            "Destroys the VM (like pulling the power plug; nothing is saved) "
            "and keeps it stopped: heartbeat monitoring and automatic "
            "recovery are off until the VM is started again with "
            "/api/v1/vm/start or /api/v1/vm/restart.",
            {
                "200": _message_ok(
                    "The VM is stopped.", "VM 'eden-garden-vm' stopped successfully"
                ),
                "500": _libvirt_error(
                    "Stopping the VM",
                    "Error stopping VM: Failed to destroy domain "
                    "'eden-garden-vm': Requested operation is not valid",
                ),
                "503": _503(),
            },
        ),
        "/api/v1/vm/restart": _get_and_post(
            "VM control",
            "restartVm",
            "Revert to the snapshot and start again (recovery)",
            "The recommended recovery, and the same operation the watchdog "
            "runs on a heartbeat timeout: reverts the VM to the configured "
            "snapshot, starts it and answers once it runs. The heartbeat "
            "grace period (vm_startup_heartbeat_delay) then runs in the "
            "background before the timeout is enforced again. A restart "
            "requested while one is under way joins it instead of reverting "
            "a second time. Clears a manual stop. A revert libvirt refuses "
            "unless forced is retried as README describes when that gives "
            "the snapshot's state; otherwise the 500's `detail` says what "
            "staff must do.",
            {
                "200": _message_ok(
                    "The VM was reverted and runs.", "VM 'eden-garden-vm' restarted successfully"
                ),
                "409": _ref("responses", "ReferenceSnapshotMissing"),
                "500": _libvirt_error(
                    "Restarting the VM",
                    "Error restarting VM: Failed to revert snapshot "
                    "'ready': internal error: unable to execute QEMU command",
                ),
                "503": _503(),
            },
        ),
        "/api/v1/snapshots": {
            "get": _operation(
                "Snapshots",
                "listSnapshots",
                "List the VM's snapshots",
                "Names of all snapshots of the configured VM.",
                {
                    "200": {
                        "description": "The snapshots.",
                        "content": _json(
                            _schema("SnapshotList"),
                            {
                                "vm_name": "eden-garden-vm",
                                "snapshots": ["ready", "backup-2025-12-01", "test-configuration"],
                            },
                        ),
                    },
                    "500": _libvirt_error(
                        "Listing snapshots",
                        "Error listing snapshots: failed to get domain 'eden-garden-vm'",
                    ),
                    "503": _503(),
                },
            ),
        },
        "/api/v1/snapshot/create": _get_and_post(
            "Snapshots",
            "createSnapshot",
            "Create or replace a snapshot",
            "Snapshots the VM's current disk (and, if it runs, memory) "
            "state; the VM keeps running (its CPUs pause once while the "
            "state is saved, a replacement included). `snapshot_name` "
            "defaults to the configured snapshot name. An existing snapshot "
            "of that name is replaced: only that one is deleted, never the "
            "snapshots made after it, and a snapshot of that name exists at "
            "every step, even if the controller is killed midway. Test the "
            "VM thoroughly before replacing the reference snapshot: every "
            "automatic revert returns to it.",
            {
                "200": _message_ok(
                    "The snapshot exists now.",
                    "Snapshot 'ready' created successfully for VM 'eden-garden-vm'",
                ),
                "400": _ref("responses", "InvalidSnapshotName"),
                "500": _libvirt_error(
                    "Creating the snapshot",
                    "Error creating snapshot: operation failed: "
                    "domain 'eden-garden-vm' has active block jobs",
                ),
                "503": _503(),
            },
            post_extra={"requestBody": _ref("requestBodies", "SnapshotCreateForm")},
            path_extra={"parameters": [_ref("parameters", "SnapshotNameQuery")]},
        ),
        "/api/v1/snapshot/{snapshot_name}": {
            "parameters": [_ref("parameters", "SnapshotNamePath")],
            "delete": _operation(
                "Snapshots",
                "deleteSnapshot",
                "Delete a snapshot",
                _DELETE_DESCRIPTION,
                _delete_responses(),
            ),
        },
        "/api/v1/snapshot/delete/{snapshot_name}": {
            "parameters": [_ref("parameters", "SnapshotNamePath")],
            "get": _operation(
                "Snapshots",
                "deleteSnapshotGet",
                "Delete a snapshot (GET form)",
                _DELETE_DESCRIPTION + " Same as DELETE /api/v1/snapshot/{snapshot_name}, for "
                "scripts that can only send GET.",
                _delete_responses(),
            ),
        },
        "/api/v1/revert/enable": _get_and_post(
            "Auto-revert",
            "enableAutoRevert",
            "Turn automatic revert on",
            "A heartbeat timeout, a crash or an unexpected shutdown of the "
            "VM makes the controller revert it to the snapshot and start it "
            "(the default).",
            {
                "200": _message_ok("Automatic revert is on.", "Automatic revert enabled"),
                "503": _503(),
            },
        ),
        "/api/v1/revert/request": _get_and_post(
            "Guest requests",
            "requestRevert",
            "The guest asks to be reverted",
            "For a guest-side watchdog that sees the artwork misbehave (a "
            "crashed player, an error dialog). Answers at once with 202; the "
            "revert runs in the background through the same path as every "
            "recovery (restart-loop guard included) and is recorded in the "
            "history with its reason. A request while a revert is under way, "
            "or during the start-up grace period after one, queues nothing "
            "more. Refused with 409 in maintenance, when the VM was stopped "
            "by staff, or when the guard has tripped.",
            {
                "202": _guest_request_queued("guest_request", "player crashed (severity high)"),
                "400": _error(
                    "`reason` is missing or too long, or `severity` "
                    "is not one of low, normal, high, critical.",
                    "Invalid parameter: reason is required",
                ),
                "409": _ref("responses", "GuestRequestRefused"),
                "503": _503(),
            },
            path_extra={
                "parameters": [
                    {
                        "name": "reason",
                        "in": "query",
                        "required": True,
                        "description": "Why the guest wants a revert (up to 500 "
                        "characters; control characters are recorded "
                        "as '?'); also accepted as a POST form field.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 500},
                    },
                    {
                        "name": "severity",
                        "in": "query",
                        "required": False,
                        "description": "How bad it is; recorded with the reason.",
                        "schema": {
                            "type": "string",
                            "default": "normal",
                            "enum": ["low", "normal", "high", "critical"],
                        },
                    },
                ]
            },
        ),
        "/api/v1/idle/reset": _get_and_post(
            "Guest requests",
            "idleReset",
            "The guest asks for a fresh start after no visitor interaction",
            "For an idle monitor in the guest: after `idle_duration` seconds "
            "without a visitor the artwork is returned to its start state. "
            "Same rules as /api/v1/revert/request; recorded with the trigger "
            "idle_reset.",
            {
                "202": _guest_request_queued(
                    "idle_reset", "the guest reports no visitor interaction for 900 s"
                ),
                "400": _error(
                    "`idle_duration` is not a number of seconds.",
                    "Invalid parameter: idle_duration must be a number "
                    f"of seconds from 0 to {IDLE_DURATION_MAX} (got 'soon')",
                ),
                "409": _ref("responses", "GuestRequestRefused"),
                "503": _503(),
            },
            path_extra={
                "parameters": [
                    {
                        "name": "idle_duration",
                        "in": "query",
                        "required": False,
                        "description": "Seconds the guest has been idle (recorded); "
                        "also accepted as a POST form field or JSON "
                        "number.",
                        "schema": {"type": "number", "minimum": 0, "maximum": IDLE_DURATION_MAX},
                    },
                ]
            },
        ),
        "/api/v1/events": {
            "get": _operation(
                "History",
                "listEvents",
                "What happened: recoveries and actions",
                "Every automatic recovery and every control action, newest "
                "first: when, which VM, what triggered it, why, how long it "
                "took, how it ended and virsh's error if any. Kept in the "
                "state file; pruned by age (history_max_age_days) and count "
                "(history_max_events).",
                {
                    "200": {
                        "description": "The matching events, newest first.",
                        "content": _json(
                            _schema("History"),
                            {
                                "vm_name": "eden-garden-vm",
                                "events": [
                                    {
                                        "id": 42,
                                        "time": "2025-12-09T09:12:03.501+01:00",
                                        "vm": "eden-garden-vm",
                                        "trigger": "heartbeat_timeout",
                                        "action": "revert",
                                        "reason": "no heartbeat for 10.0 s (timeout 10 s)",
                                        "outcome": "succeeded",
                                        "duration": 0.612,
                                        "error": None,
                                        "count": 1,
                                        "screenshot": None,
                                    }
                                ],
                            },
                        ),
                    },
                    "400": _error(
                        "A filter is malformed.",
                        "Invalid parameter: limit must be a whole number from 1 to 1000 (got '0')",
                    ),
                    "503": _503(),
                },
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "At most this many events (default 100).",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Only events at or after this time: ISO "
                        "8601 (without an offset: local time) or "
                        "seconds since the epoch.",
                        "schema": {
                            "anyOf": [
                                {"type": "string", "format": "date-time"},
                                {"type": "string", "format": "date"},
                                {"type": "string", "pattern": r"^[0-9]{1,11}(\.[0-9]{1,6})?$"},
                            ]
                        },
                        "example": "2025-12-09T00:00:00+01:00",
                    },
                    {
                        "name": "trigger",
                        "in": "query",
                        "required": False,
                        "description": "Only these triggers (comma-separated or repeated).",
                        "style": "form",
                        "explode": True,
                        "schema": {
                            "type": "array",
                            "items": {"type": "string", "enum": list(TRIGGERS)},
                        },
                    },
                ],
            ),
        },
        EVENTS_STREAM_PATH: {
            "get": _operation(
                "History",
                "streamEvents",
                "Live events: status, heartbeats, history (Server-Sent Events)",
                "A `text/event-stream` that stays open, for dashboards. It starts with "
                "`retry: 3000` and one `status` event, replays history when resuming, then "
                "sends, as they happen: `status` (data: exactly the body of "
                "`GET /api/v1/status`) whenever anything in it changes but the heartbeat's "
                "age, at most a second late; `heartbeat` (data: the body of "
                "`GET /api/v1/heartbeat/status`) at most once a second, when heartbeats "
                "arrived; `history` (data: one row exactly as an item of "
                "`GET /api/v1/events`) when a row begins and again when it changes (a row "
                "that changes twice within a second may be sent once, as it ended up). "
                "Keep rows by their `id` field. A `history` event's SSE `id:` is a resume "
                "cursor: send the last one back as `Last-Event-ID` after a reconnect and "
                f"every row that may have changed since is replayed (at most the newest "
                f"{REPLAY_MAX}; a row may come twice: replace it). A comment "
                "`: keep-alive` is sent after 15 s of silence. A client that stops "
                "reading (more than 256 KiB unread) is cut off and may reconnect. Guarded "
                "like status.",
                {
                    "200": {
                        "description": "The stream; it ends only when the client leaves, "
                        "is cut off, or the controller stops.",
                        "content": {
                            EVENT_STREAM_MEDIA_TYPE: {
                                "schema": {"type": "string"},
                                "example": _STREAM_EXAMPLE,
                            }
                        },
                    },
                    "400": _error(
                        "The Last-Event-ID header is not an id this stream sends.",
                        "Invalid header: Last-Event-ID must be the id of an event of this "
                        "stream, a whole number (got 'abc')",
                    ),
                    "503": _error(
                        "As many streams as `api_stream_clients` are open already (or the "
                        "controller is still starting): try again later.",
                        "Too many event streams: at most 32 at once (api_stream_clients); "
                        "try again later",
                    ),
                },
                parameters=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The `id:` of the last `history` event received, "
                        "to resume after a reconnect (an EventSource sends it by itself).",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                        "example": "42",
                    }
                ],
            ),
        },
        "/api/v1/screen/latest": {
            "get": _operation(
                "Screen",
                "getLatestScreenshot",
                "The VM's screen as the screen watcher last took it",
                "A PNG in the guest's own pixels (the ones screen rules' regions are "
                "written in), taken every screen.interval seconds while the VM runs; "
                "its time in the header X-Screenshot-Time.",
                {
                    "200": _png_response(),
                    "404": _error(
                        "Screen watching is off, or no screenshot was taken yet.",
                        "screen watching is off: the configuration has no screen: section",
                    ),
                },
            )
        },
        "/api/v1/screen/{event_id}": {
            "get": _operation(
                "Screen",
                "getRecoveryScreenshot",
                "The screenshot that caused a recovery",
                "Kept under the id of the history row of a screen rule's recovery (the "
                "row's `screenshot` field links it); at most screen.keep of them and "
                "screen.keep_mib MiB, the oldest removed first.",
                {
                    "200": _png_response(),
                    "400": _error(
                        "The id is not a whole number.",
                        "Invalid path: the history event's id must be a whole number "
                        "(got 'latest1')",
                    ),
                    "404": _error(
                        "No screenshot is kept for that row (another trigger, or removed).",
                        "no screenshot kept for history event 12: only a screen rule's "
                        "recoveries have one, and the oldest are removed (screen.keep, "
                        "screen.keep_mib)",
                    ),
                },
                parameters=[
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "description": "The id of the history row.",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
            )
        },
        "/api/v1/report": {
            "get": _operation(
                "History",
                "getReport",
                "How well the artwork ran, per day",
                "For each day in the PC's local time zone (a day of a daylight saving "
                "change has 23 or 25 hours): how long the artwork was healthy, "
                "unhealthy, stopped by staff or in maintenance, and not watched; the "
                "recoveries by trigger; the longest outage. Healthy time is recorded "
                "as changes in the state file and pruned with the history "
                "(history_max_age_days). Opening hours are not taken into account.",
                {
                    "200": {
                        "description": "One entry per day, oldest first, and the totals.",
                        "content": _json(_schema("Report"), _report_example()),
                    },
                    "400": _error(
                        "A date is malformed or outside 1971-01-01 to 9998-12-31, since "
                        f"is after until, or the range is longer than {REPORT_MAX_DAYS} days.",
                        "Invalid parameter: since must be a date written YYYY-MM-DD "
                        "(got '2025-13-01')",
                    ),
                    "503": _503(),
                },
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "The first day (default: 29 days before until).",
                        "schema": {"type": "string", "format": "date"},
                        "example": "2025-12-01",
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "required": False,
                        "description": "The last day, included (default: today).",
                        "schema": {"type": "string", "format": "date"},
                        "example": "2025-12-31",
                    },
                ],
            ),
        },
        "/api/v1/revert/disable": _get_and_post(
            "Auto-revert",
            "disableAutoRevert",
            "Turn automatic revert off (maintenance)",
            "Maintenance mode: failures are logged but nothing is reverted "
            "or restarted until automatic revert is enabled again.",
            {
                "200": _message_ok(
                    "Automatic revert is off.",
                    "Automatic revert disabled - manual intervention required on failures",
                ),
                "503": _503(),
            },
        ),
    }


_TAGS = (
    ("Status", "What the controller and its VM are doing."),
    ("Heartbeat", "The guest's sign of life and the watchdog that waits for it."),
    ("VM control", "Start, stop and restart the VM."),
    ("Snapshots", "List, create and delete the VM's snapshots."),
    ("Auto-revert", "Switch automatic recovery on and off (maintenance mode)."),
    ("Guest requests", "The guest's own calls beyond the heartbeat."),
    ("History", "What the controller did, and why."),
    ("Screen", "The VM's screen, as the screen watcher sees it."),
)


#: Every requirement is optional: {} = no token configured.
_SECURITY: list[dict[str, list[str]]] = [{}, {"bearerToken": []}, {"queryToken": []}]


def _security_schemes() -> dict[str, Any]:
    return {
        "bearerToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "The staff token (api_token) or, on the guest's "
            "endpoints, the guest token (guest_token).",
        },
        "queryToken": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "The same token as a query parameter, for GET-only "
            "clients such as AutoIt. It is never logged.",
        },
    }


def _add_bad_host(responses: dict[str, Any], shared: dict[str, Any]) -> None:
    """One status, two causes: an operation's own 400 also covers a foreign Host."""
    own = responses.get("400")
    if own is None:
        responses["400"] = _ref("responses", "BadHost")
        return
    if "$ref" in own:  # a shared response: said once, in the component
        own = shared[own["$ref"].rsplit("/", 1)[1]]
    note = " Or: " + _BAD_HOST[0].lower() + _BAD_HOST[1:]
    if note not in own["description"]:
        own["description"] += note


def _add_gate_responses(paths: dict[str, Any], shared: dict[str, Any]) -> None:
    """Every operation passes the security gate: document its answers once."""
    for path, item in paths.items():
        for method, op in item.items():
            if method in ("get", "post", "delete"):
                _add_bad_host(op["responses"], shared)
        if not path.startswith("/api/") and path not in READ_ONLY_PATHS:
            item_ops = [op for m, op in item.items() if m in ("get", "post", "delete")]
            for op in item_ops:
                op["security"] = [{}]  # open even with tokens configured
            continue
        for method, op in item.items():
            if method not in ("get", "post", "delete"):
                continue
            responses = op["responses"]
            responses.setdefault("401", _ref("responses", "Unauthorized"))
            if path not in READ_ONLY_PATHS:
                responses.setdefault("403", _ref("responses", "CrossSiteRefused"))
            elif path not in GUEST_PATHS:
                responses.setdefault("403", _ref("responses", "GuestTokenRefused"))
            responses.setdefault("413", _ref("responses", "TooLarge"))
            responses.setdefault("414", _ref("responses", "UriTooLong"))
            responses.setdefault("431", _ref("responses", "HeadersTooLarge"))
            if path in GUEST_PATHS:
                op["description"] += " Open to the guest token as well as the staff token."


def build_openapi(version: str) -> dict[str, Any]:
    """Return the OpenAPI 3.0.3 document for controller ``version``.

    A new dict on every call, so callers (flasgger, tests) may keep or
    modify theirs without affecting anyone else.
    """
    paths = _paths()
    responses = _responses()
    _add_gate_responses(paths, responses)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": version,
            "description": _DESCRIPTION,
            "license": {"name": "MIT"},
        },
        "tags": [{"name": name, "description": text} for name, text in _TAGS],
        "paths": paths,
        "security": _SECURITY,
        "components": {
            "securitySchemes": _security_schemes(),
            "schemas": _schemas(),
            "parameters": _parameters(),
            "requestBodies": _request_bodies(),
            "responses": responses,
        },
    }


def _schedule_status() -> dict[str, Any]:
    """The status' schedule object: nullable inline (a $ref cannot be null in OpenAPI 3.0)."""
    return {
        "type": "object",
        "nullable": True,
        "description": "What the opening hours (config key schedule) say now; null "
        "without a schedule (always open). Additive. Outside "
        "opening hours and in maintenance windows heartbeats are not enforced and "
        "nothing is reverted (unless watch_when_closed).",
        "required": [
            "state",
            "why",
            "since",
            "next_state",
            "next_change",
            "enforcing",
            "at_opening",
            "at_closing",
        ],
        "properties": {
            "state": {"type": "string", "enum": list(SCHEDULE_STATES)},
            "why": {
                "type": "string",
                "example": "opening hours 10:00-18:00 (tuesday)",
            },
            "since": {"type": "string", "format": "date-time"},
            "next_state": {
                "type": "string",
                "enum": list(SCHEDULE_STATES),
                "nullable": True,
            },
            "next_change": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "When the state changes next (in the museum's time "
                "zone); null if not within the next 15 days.",
            },
            "enforcing": {
                "type": "boolean",
                "description": "Whether heartbeats are enforced and failures recovered.",
            },
            "at_opening": {"type": "string", "enum": list(AT_OPENING_CHOICES)},
            "at_closing": {"type": "string", "enum": list(AT_CLOSING_CHOICES)},
        },
    }
