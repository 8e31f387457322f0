"""The words and numbers that the monitor, the store, the API, its description
and the command line must agree on, defined once so they cannot drift.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

#: Every REST route lives under this prefix.
API_PREFIX = "/api/v1"
#: The staff's dashboard (a page, not the API: open like the docs, it calls the API).
UI_PREFIX = "/ui"

# ------------------------------------------------------------------ triggers
# Why something happened: the words used in logs, history, status and the API.
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
VM_STOPPED = "vm_stopped"
VM_CRASHED = "vm_crashed"
VM_PAUSED = "vm_paused"
GUEST_REQUEST = "guest_request"
IDLE_RESET = "idle_reset"
API = "api"  # staff, through the REST API
STARTUP = "startup"  # the controller itself, when it starts
SCHEDULE_OPEN = "schedule_open"  # opening time (schedule.py): the fresh start of the day
SCHEDULE_CLOSE = "schedule_close"  # closing time: stop the VM or only stop enforcing
SCHEDULE_MAINTENANCE = "schedule_maintenance"  # a maintenance window of the schedule began
SCREEN = "screen"  # a screen rule failed (screen.py): frozen, uniform or looks like a bad screen
PROGRESS_STALLED = "progress_stalled"  # the heartbeats' progress value stopped changing
#: The schedule's triggers: planned, so never counted against the restart-loop guard.
SCHEDULE_TRIGGERS = (SCHEDULE_OPEN, SCHEDULE_CLOSE, SCHEDULE_MAINTENANCE)
TRIGGERS = (
    HEARTBEAT_TIMEOUT,
    VM_STOPPED,
    VM_CRASHED,
    VM_PAUSED,
    GUEST_REQUEST,
    IDLE_RESET,
    SCREEN,
    PROGRESS_STALLED,
    API,
    STARTUP,
    *SCHEDULE_TRIGGERS,
)
#: Triggers of automatic recovery (they count against the restart-loop guard).
AUTOMATIC_TRIGGERS = tuple(t for t in TRIGGERS if t not in (API, STARTUP, *SCHEDULE_TRIGGERS))

# ------------------------------------------------------------------ opening hours
# The schedule's states (schedule.py), in status, the CLI and the history.
SCHEDULE_OPEN_STATE = "open"
SCHEDULE_CLOSED_STATE = "closed"
SCHEDULE_MAINTENANCE_STATE = "maintenance"
SCHEDULE_STATES = (SCHEDULE_OPEN_STATE, SCHEDULE_CLOSED_STATE, SCHEDULE_MAINTENANCE_STATE)
#: What opening time does: a fresh revert to the reference snapshot (the default), or a
#: plain start that keeps a VM already running.
AT_OPENING_CHOICES = ("revert", "start")
#: What closing time does: stop the VM (the default), or keep it running unwatched.
AT_CLOSING_CHOICES = ("stop", "keep_running")

# ------------------------------------------------------------------ screen liveness
# The kinds of screen rule (screen.py), in the config, status and the CLI.
RULE_FROZEN = "frozen"  # the watched regions (masks aside) have not changed for N seconds
RULE_UNIFORM = "uniform"  # each region is one colour for N seconds
RULE_BLACK = "black"  # each region is one dark colour for N seconds
RULE_LOOKS_LIKE = "looks_like"  # a region matches (or no longer matches) a reference image
RULE_KINDS = (RULE_FROZEN, RULE_UNIFORM, RULE_BLACK, RULE_LOOKS_LIKE)
#: A heartbeat's progress value: at most this many characters.
PROGRESS_MAX_LENGTH = 128
#: and none of these (a regular expression the API and its description share).
PROGRESS_CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f]"

# ------------------------------------------------------------------ outcomes
# An action's outcome in the history. 'started' is rewritten when the action
# ends; one still 'started' at the next start was cut short by a crash.
STARTED = "started"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
REFUSED = "refused"
INTERRUPTED = "interrupted"
OUTCOMES = (STARTED, SUCCEEDED, FAILED, SKIPPED, REFUSED, INTERRUPTED)

# ------------------------------------------------------------------ recoveries
#: The actions that bring the VM back (counted as recoveries by metrics and the report).
RECOVERY_ACTIONS = frozenset({"revert", "start"})

# ------------------------------------------------------------------ the artwork's health
# What the state file's health table records, one row per change (never per heartbeat).
HEALTH_HEALTHY = "healthy"  # running and heartbeating within the timeout
HEALTH_UNHEALTHY = "unhealthy"  # down, silent, or being brought back
HEALTH_STAFF = "staff"  # maintenance on, or stopped by staff: planned, not an outage
HEALTH_START = "start"  # the controller started (health not known yet)
HEALTH_STOP = "stop"  # the controller stopped (or, dated at its last sign of life, crashed)
HEALTH_STATES = (HEALTH_HEALTHY, HEALTH_UNHEALTHY, HEALTH_STAFF, HEALTH_START, HEALTH_STOP)
#: The longest availability report, in days.
REPORT_MAX_DAYS = 366

# ------------------------------------------------------------------ guard states
GUARD_OK = "ok"
GUARD_BACKOFF = "backoff"
GUARD_FAILED = "failed"
GUARD_STATES = (GUARD_OK, GUARD_BACKOFF, GUARD_FAILED)

# ------------------------------------------------------------------ request limits
#: Request bodies above this are refused with 413.
MAX_BODY = 64 * 1024
#: Above the longest query the API documents (a 500-character reason of 4-byte
#: characters is 6000 bytes percent-encoded, plus a token); longer gets 414.
MAX_QUERY = 8192
#: Request header blocks above this are refused by waitress with 431.
MAX_HEADER_BLOCK = 16 * 1024
#: The longest reason a guest may give with a revert request.
REASON_MAX = 500
#: The longest idle time a guest may report with an idle reset, in seconds.
IDLE_DURATION_MAX = 10_000_000

# ------------------------------------------------------------------ repeats
#: Repeats of one cause (a guest asking again and again for a refused revert)
#: within this many seconds share one history row, with a count, and one log line.
REPEAT_INTERVAL = 60.0

#: Called by the guest: open to the guest token (and the staff token).
GUEST_PATHS = frozenset(API_PREFIX + p for p in ("/heartbeat", "/revert/request", "/idle/reset"))
#: Prometheus' scrape target: outside the API prefix, where Prometheus looks by default.
METRICS_PATH = "/metrics"
#: Read-only paths: they change nothing, a cross-site page cannot read their answers
#: (no CORS), and polling them is routine (logged at DEBUG when they succeed). They
#: reveal state, so the staff token guards them, /metrics as much as the API's.
READ_ONLY_PATHS = frozenset(
    [
        API_PREFIX + p
        for p in (
            "/status",
            "/heartbeat/status",
            "/snapshots",
            "/events",
            "/events/stream",
            "/report",
        )
    ]
    + [METRICS_PATH]
)
#: The guest's heartbeat: routine too, a few a second for months.
HEARTBEAT_PATH = API_PREFIX + "/heartbeat"
STATUS_PATH = API_PREFIX + "/status"
#: Server-Sent Events of the controller's changes (stream.py).
EVENTS_STREAM_PATH = API_PREFIX + "/events/stream"
#: The WSGI environ key under which the server hands a stream the bytes its client has
#: not read yet (a callable; server.py), so that a client that never reads is cut off.
UNSENT_KEY = "vmcontroller.unsent"

# ------------------------------------------------------------------ notifications
# What a notification tells (alerts.py); the words of the webhook's JSON and the e-mail.
ALERT_GUARD_TRIPPED = "guard_tripped"
ALERT_RECOVERY_FAILED = "recovery_failed"
ALERT_UNHEALTHY = "unhealthy"  # not healthy for notify_unhealthy_minutes of opening time
ALERT_LIBVIRT_UNREACHABLE = "libvirt_unreachable"
ALERT_CRASH_RESTART = "controller_crashed"  # started after an unclean end
ALERT_RESOLVED = "resolved"
ALERT_TEST = "test"  # `vmcontroller notify test`
ALERT_KINDS = (
    ALERT_GUARD_TRIPPED,
    ALERT_RECOVERY_FAILED,
    ALERT_UNHEALTHY,
    ALERT_LIBVIRT_UNREACHABLE,
    ALERT_CRASH_RESTART,
    ALERT_RESOLVED,
    ALERT_TEST,
)
#: The channels a notification goes out by (the dead man's switch is no channel: it
#: carries no message, its silence is the message).
CHANNEL_WEBHOOK = "webhook"
CHANNEL_EMAIL = "email"
CHANNELS = (CHANNEL_WEBHOOK, CHANNEL_EMAIL)
#: The webhook's signature header: hex HMAC-SHA256 of the body with notify_webhook_secret.
SIGNATURE_HEADER = "X-Vmcontroller-Signature"
#: A first problem waits this long for the rest of its storm before it is sent.
ALERT_GATHER = 5.0
#: Delivery retries: the wait doubles from the first to the cap.
DELIVERY_RETRY_INITIAL = 5.0
DELIVERY_RETRY_MAX = 600.0
#: Messages kept undelivered per channel; past this the oldest are dropped (logged).
OUTBOX_MAX = 1000
#: How long one delivery attempt (an HTTP request, an SMTP session) may take.
DELIVERY_TIMEOUT = 20.0
