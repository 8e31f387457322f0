"""Configuration: YAML file, VMCTL_* environment overrides, validation.

A controller in a gallery is started by systemd and nobody reads a traceback,
so every problem is reported as one line naming the key, the value and what
was expected (``ConfigError``), and the program exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .names import NAME_RE
from .schedule import Schedule, ScheduleError, parse_schedule
from .screen import BadImage, ScreenConfig, ScreenError, load_references, parse_screen

ENV_PREFIX = "VMCTL_"
CONFIG_ENV = "VMCTL_CONFIG"
SYSTEM_CONFIG = Path("/etc/exhibition-vm-controller/config.yaml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass(frozen=True)
class Config:
    """The effective configuration; immutable once loaded."""

    vm_name: str
    snapshot_name: str = "ready"
    heartbeat_timeout: float = 10.0
    heartbeat_check_interval: float = 1.0
    heartbeat_progress_timeout: float = 0.0  # the progress rule; 0: off
    vm_startup_heartbeat_delay: float = 30.0
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    api_reload: bool = False
    api_threads: int = 32
    auto_revert_enabled: bool = True
    log_level: str = "INFO"
    libvirt_uri: str = "qemu:///system"
    virsh_timeout: float = 30.0
    virsh_long_timeout: float = 120.0
    api_busy_timeout: float = 30.0
    always_clean_start: bool = False
    state_poll_interval: float = 60.0
    state_path: str = "/var/lib/exhibition-vm-controller/state.db"
    history_max_age_days: float = 90.0
    history_max_events: int = 10000
    max_recoveries: int = 5
    recovery_window: float = 600.0
    recovery_backoff_initial: float = 5.0
    recovery_backoff_max: float = 300.0
    post_revert_command: tuple[str, ...] | None = None
    post_revert_timeout: float = 30.0
    api_token: str | None = None
    api_token_file: str | None = None
    guest_token: str | None = None
    guest_token_file: str | None = None
    cors_origins: tuple[str, ...] | None = None
    allowed_hosts: tuple[str, ...] | None = None
    api_channel_timeout: float = 30.0
    api_stream_clients: int = 32
    schedule: Schedule | None = None  # opening hours (schedule.py); None: always open
    screen: ScreenConfig | None = None  # screen liveness rules (screen.py); None: off
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = None
    notify_webhook_secret_file: str | None = None
    notify_email_to: tuple[str, ...] | None = None
    notify_email_from: str | None = None
    notify_smtp_host: str | None = None
    notify_smtp_port: int = 587
    notify_smtp_starttls: bool = True
    notify_smtp_user: str | None = None
    notify_smtp_password: str | None = None
    notify_smtp_password_file: str | None = None
    notify_unhealthy_minutes: float = 10.0
    notify_min_interval: float = 300.0
    ping_url: str | None = None
    ping_interval: float = 60.0


@dataclass(frozen=True)
class _Rule:
    kind: type
    check: Callable[[Any], bool]
    expected: str


_TOKEN_RULE = (
    "null, or a token of 16 to 256 printable ASCII characters without spaces "
    "(e.g. from: openssl rand -hex 24)"
)
SECRET_KEYS = ("api_token", "guest_token", "notify_webhook_secret", "notify_smtp_password")
_SECRET_RULE = "a non-empty string of printable characters, at most 1024"


def _good_secret(value: str) -> bool:
    return 0 < len(value) <= 1024 and value.isprintable()


def _good_url(value: str) -> bool:
    return bool(re.fullmatch(r"https?://[^/\s]+(/\S*)?", value))


#: An e-mail address as a mail server takes it (local part, '@', a domain), no name.
_ADDRESS = re.compile(r"[^@\s<>,]+@[^@\s<>,]+")


def _good_token(value: str) -> bool:
    return 16 <= len(value) <= 256 and all(33 <= ord(c) <= 126 for c in value)


#: A DNS name (letters, digits, '-', '_', dots; a final dot allowed), no port.
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?",
    re.ASCII,
)


def _between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


_RULES: dict[str, _Rule] = {
    "vm_name": _Rule(
        str,
        lambda v: bool(NAME_RE.fullmatch(v)),
        "a libvirt domain name: 1-64 ASCII letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    ),
    "snapshot_name": _Rule(
        str,
        lambda v: bool(NAME_RE.fullmatch(v)),
        "a snapshot name: 1-64 ASCII letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    ),
    "heartbeat_timeout": _Rule(
        float, _between(0.1, 86400), "a number of seconds from 0.1 to 86400"
    ),
    "heartbeat_progress_timeout": _Rule(
        float,
        lambda v: v == 0 or 1 <= v <= 86400,
        "0 (off), or a number of seconds from 1 to 86400",
    ),
    "heartbeat_check_interval": _Rule(
        float, _between(0.05, 3600), "a number of seconds from 0.05 to 3600"
    ),
    "vm_startup_heartbeat_delay": _Rule(
        float, _between(0, 3600), "a number of seconds from 0 to 3600"
    ),
    "api_host": _Rule(
        str,
        lambda v: bool(v.strip()) and not any(c.isspace() for c in v),
        "a host name or IP address, e.g. 127.0.0.1 or 0.0.0.0",
    ),
    "api_port": _Rule(int, _between(0, 65535), "a TCP port from 1 to 65535 (0: any free port)"),
    "api_reload": _Rule(bool, lambda v: True, "true or false"),
    "api_threads": _Rule(int, _between(4, 256), "a whole number of worker threads from 4 to 256"),
    "auto_revert_enabled": _Rule(bool, lambda v: True, "true or false"),
    "log_level": _Rule(str, lambda v: v.upper() in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS)),
    "libvirt_uri": _Rule(
        str,
        lambda v: "://" in v and not v.startswith("-"),
        "a libvirt connection URI such as qemu:///system",
    ),
    "virsh_timeout": _Rule(float, _between(1, 3600), "a number of seconds from 1 to 3600"),
    "virsh_long_timeout": _Rule(float, _between(1, 7200), "a number of seconds from 1 to 7200"),
    "api_busy_timeout": _Rule(float, _between(0.1, 3600), "a number of seconds from 0.1 to 3600"),
    "always_clean_start": _Rule(bool, lambda v: True, "true or false"),
    "state_poll_interval": _Rule(float, _between(1, 86400), "a number of seconds from 1 to 86400"),
    "state_path": _Rule(
        str,
        lambda v: bool(v.strip()),
        "the path of the SQLite state file, e.g. /var/lib/exhibition-vm-controller/state.db",
    ),
    "history_max_age_days": _Rule(float, _between(1, 3650), "a number of days from 1 to 3650"),
    "history_max_events": _Rule(
        int, _between(100, 10_000_000), "a whole number of events from 100 to 10000000"
    ),
    "max_recoveries": _Rule(int, _between(1, 1000), "a whole number from 1 to 1000"),
    "recovery_window": _Rule(float, _between(1, 604800), "a number of seconds from 1 to 604800"),
    "recovery_backoff_initial": _Rule(
        float, _between(0.1, 3600), "a number of seconds from 0.1 to 3600"
    ),
    "recovery_backoff_max": _Rule(
        float, _between(0.1, 86400), "a number of seconds from 0.1 to 86400"
    ),
    "post_revert_command": _Rule(
        tuple,
        lambda v: v is None or (len(v) > 0 and all(isinstance(a, str) and a for a in v)),
        "null or a non-empty list of strings (the program and its arguments; "
        "{vm_name} and {snapshot_name} are replaced)",
    ),
    "post_revert_timeout": _Rule(float, _between(1, 3600), "a number of seconds from 1 to 3600"),
    "api_token": _Rule(str, lambda v: _good_token(v), _TOKEN_RULE),
    "api_token_file": _Rule(str, lambda v: bool(v.strip()), "the path of a file holding the token"),
    "guest_token": _Rule(str, lambda v: _good_token(v), _TOKEN_RULE),
    "guest_token_file": _Rule(
        str, lambda v: bool(v.strip()), "the path of a file holding the token"
    ),
    "cors_origins": _Rule(
        tuple,
        lambda v: (
            v is None or all(isinstance(o, str) and re.fullmatch(r"https?://[^/\s]+", o) for o in v)
        ),
        "null or a list of origins such as http://192.168.122.1:8080 (scheme://host[:port])",
    ),
    "allowed_hosts": _Rule(
        tuple,
        lambda v: v is None or all(isinstance(h, str) and _HOST_NAME.fullmatch(h) for h in v),
        "null or a list of host names such as exhibition-pc.museum.example (names only: "
        "IP addresses, localhost and the machine's own names are always accepted)",
    ),
    "api_channel_timeout": _Rule(float, _between(1, 3600), "a number of seconds from 1 to 3600"),
    "api_stream_clients": _Rule(
        int, _between(0, 1000), "a whole number of event streams from 0 to 1000 (0: none)"
    ),
    # Checked key by key by schedule.parse_schedule, whose errors name the nested key.
    "schedule": _Rule(dict, lambda v: True, "null, or a mapping of opening hours (see the README)"),
    # Checked key by key by screen.parse_screen, whose errors name the nested key.
    "screen": _Rule(dict, lambda v: True, "null, or a mapping of screen rules (see the README)"),
    "notify_webhook_url": _Rule(
        str, _good_url, "null or an http:// or https:// URL to POST notifications to"
    ),
    "notify_webhook_secret": _Rule(str, _good_secret, _SECRET_RULE),
    "notify_webhook_secret_file": _Rule(
        str, lambda v: bool(v.strip()), "the path of a file holding the secret"
    ),
    "notify_email_to": _Rule(
        tuple,
        lambda v: (
            v is None
            or (len(v) > 0 and all(isinstance(a, str) and _ADDRESS.fullmatch(a) for a in v))
        ),
        "null or a non-empty list of e-mail addresses such as technician@museum.example",
    ),
    "notify_email_from": _Rule(
        str, lambda v: bool(_ADDRESS.fullmatch(v)), "an e-mail address such as vm@museum.example"
    ),
    "notify_smtp_host": _Rule(
        str,
        lambda v: bool(v.strip()) and not any(c.isspace() for c in v),
        "the host name or IP address of the SMTP server",
    ),
    "notify_smtp_port": _Rule(int, _between(1, 65535), "a TCP port from 1 to 65535"),
    "notify_smtp_starttls": _Rule(bool, lambda v: True, "true or false"),
    "notify_smtp_user": _Rule(str, lambda v: bool(v), "the SMTP login name"),
    "notify_smtp_password": _Rule(str, _good_secret, _SECRET_RULE),
    "notify_smtp_password_file": _Rule(
        str, lambda v: bool(v.strip()), "the path of a file holding the password"
    ),
    "notify_unhealthy_minutes": _Rule(
        float, _between(0.01, 10080), "a number of minutes from 0.01 to 10080"
    ),
    "notify_min_interval": _Rule(float, _between(0, 86400), "a number of seconds from 0 to 86400"),
    "ping_url": _Rule(str, _good_url, "null or an http:// or https:// URL to ping"),
    "ping_interval": _Rule(float, _between(1, 86400), "a number of seconds from 1 to 86400"),
}

KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING
}
assert set(_RULES) == set(KEYS), "every config key needs a validation rule"


def find_config_file(
    explicit: str | os.PathLike | None, env: Mapping[str, str], cwd: Path | None = None
) -> Path | None:
    """Pick the file: --config, else $VMCTL_CONFIG, else ./config.yaml, else /etc.

    An explicitly named file must exist; the two fallbacks are optional so
    that a controller configured only through the environment still starts.
    """
    named = explicit or env.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not _is_file(path):
            source = "--config" if explicit else CONFIG_ENV
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {str(path)!r} (from {source}) {what}")
        return path
    for candidate in ((cwd or Path.cwd()) / "config.yaml", SYSTEM_CONFIG):
        if _is_file(candidate):
            return candidate
    return None


def _is_file(path: Path) -> bool:
    """Whether the file is there; a directory the user may not enter is an error, not a
    missing file (the service's user must be able to read its own configuration)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {str(path)!r}: {_unreadable(exc)} (the user running "
            f"the controller must be able to enter its directory and read it)"
        ) from None


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, in a few words (an editor may have saved it as Latin-1)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    return exc.strerror or str(exc)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {_unreadable(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, "
            f"not {type(data).__name__}"
        )
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """VMCTL_<KEY> values, parsed as YAML scalars so 'false' and '8' mean what they say."""
    found: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in _RULES:
            # Other tools (the CLI's VMCTL_URL, VMCTL_TOKEN) share the prefix.
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if _RULES[key].kind is str and value is not None and not isinstance(value, str):
            value = raw  # a VM called "2026" is still a string
        found[key] = value
    return found


def _coerce(key: str, value: Any, base_dir: Path) -> Any:
    rule = _RULES[key]
    if rule.kind is dict:
        return _nested(key, value, base_dir)
    shown = (
        f"{key}=<hidden, {len(value)} characters>"
        if key in SECRET_KEYS and isinstance(value, str)
        else f"{key}={value!r}"
    )
    if rule.kind is tuple:
        ok = value is None or isinstance(value, (list, tuple))
        value = None if value is None or not ok else tuple(value)
    elif rule.kind is bool:
        ok = isinstance(value, bool)
    elif rule.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif rule.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok or not rule.check(value):
        raise ConfigError(f"{shown} is invalid: expected {rule.expected}")
    if key == "log_level":
        value = value.upper()
    return value


def _nested(key: str, value: Any, base_dir: Path) -> Any:
    """A section with keys of its own, checked by its module (errors name the nested key)."""
    try:
        if key == "schedule":
            return value if isinstance(value, Schedule) else parse_schedule(value)
        if isinstance(value, ScreenConfig):
            return value
        screen = parse_screen(value, base_dir)
        load_references(screen)  # a reference image that is missing stops the start here
        return screen
    except (ScheduleError, ScreenError, BadImage) as exc:
        raise ConfigError(str(exc)) from None


def build_config(values: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Validate a mapping of settings into a Config, or raise ConfigError. ``base_dir``:
    where relative paths in it start (the config file's folder; else the current one)."""
    base = base_dir if base_dir is not None else Path.cwd()
    unknown = sorted(set(values) - set(_RULES))
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown key {key}={values[key]!r}: expected one of {', '.join(KEYS)}")
    if values.get("vm_name") in (None, ""):
        raise ConfigError(
            "vm_name is missing: expected the name of the libvirt domain to keep running"
        )
    merged = {**DEFAULTS, **values}
    for key in SECRET_KEYS:
        merged[key] = _token_from_file(key, merged)
    config = Config(
        **{
            key: _coerce(key, merged[key], base)
            for key in KEYS
            if merged[key] is not None or DEFAULTS.get(key, 0) is not None
        }
    )
    if config.virsh_long_timeout < config.virsh_timeout:
        raise ConfigError(
            f"virsh_long_timeout={config.virsh_long_timeout:g} is invalid: "
            f"expected at least virsh_timeout ({config.virsh_timeout:g})"
        )
    _check_notify(config)
    if config.recovery_backoff_max < config.recovery_backoff_initial:
        raise ConfigError(
            f"recovery_backoff_max={config.recovery_backoff_max:g} is invalid: "
            f"expected at least recovery_backoff_initial "
            f"({config.recovery_backoff_initial:g})"
        )
    return config


def _check_notify(config: Config) -> None:
    """E-mail needs a server and a sender; a password needs a login."""
    if config.notify_email_to is not None:
        for key in ("notify_email_from", "notify_smtp_host"):
            if getattr(config, key) is None:
                raise ConfigError(
                    f"{key} is missing: expected it when notify_email_to is set "
                    f"(e-mail needs a sender and an SMTP server)"
                )
    if config.notify_smtp_password is not None and config.notify_smtp_user is None:
        raise ConfigError(
            "notify_smtp_user is missing: expected the login that notify_smtp_password is for"
        )


def _token_from_file(key: str, merged: dict[str, Any]) -> Any:
    """Secrets may live in their own file (mode 0600) rather than in the YAML."""
    path = merged.get(f"{key}_file")
    if path is None:
        return merged.get(key)
    if merged.get(key) is not None:
        raise ConfigError(f"{key} and {key}_file are both set: expected only one of them")
    if not isinstance(path, str):
        return merged.get(key)  # the type check of {key}_file reports it
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{key}_file={path!r} is invalid: cannot read it ({_unreadable(exc)})"
        ) from None
    if not _RULES[key].check(text):
        raise ConfigError(
            f"{key}_file={path!r} is invalid: the file must hold {_RULES[key].expected}"
        )
    return text


def load_config(
    path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> tuple[Config, Path | None]:
    """Load the effective configuration and say which file it came from."""
    env = os.environ if env is None else env
    source = find_config_file(path, env)
    values: dict[str, Any] = _read_yaml(source) if source else {}
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r}: expected one of {', '.join(KEYS)}")
    values.update(_env_overrides(env))
    return build_config(values, source.parent if source else None), source


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """The same settings with secrets hidden, for the log and for check-config."""
    return {k: ("********" if k in SECRET_KEYS and v is not None else v) for k, v in values.items()}


def as_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain data, for check-config and the logs."""
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for key in ("post_revert_command", "cors_origins", "allowed_hosts", "notify_email_to"):
        if data[key] is not None:
            data[key] = list(data[key])
    if config.schedule is not None:
        data["schedule"] = config.schedule.as_config()
    if config.screen is not None:
        data["screen"] = config.screen.as_config()
    return data
