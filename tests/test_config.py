"""Configuration: discovery order, environment overrides, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmcontroller.config import (
    DEFAULTS,
    KEYS,
    Config,
    ConfigError,
    build_config,
    find_config_file,
    load_config,
)
from vmcontroller.schedule import parse_schedule
from vmcontroller.screen import parse_screen

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_follow_the_api_reference(tmp_path):
    config, source = load_config(write(tmp_path / "c.yaml", {"vm_name": "eden"}), env={})
    assert source == tmp_path / "c.yaml"
    assert (
        config.snapshot_name,
        config.heartbeat_timeout,
        config.heartbeat_check_interval,
        config.vm_startup_heartbeat_delay,
        config.api_host,
        config.api_port,
        config.api_reload,
        config.auto_revert_enabled,
        config.log_level,
        config.libvirt_uri,
    ) == ("ready", 10, 1, 30, "0.0.0.0", 8000, False, True, "INFO", "qemu:///system")


def valid_other_value(field: dataclasses.Field, tmp_path: Path) -> tuple[str, Any] | None:
    """For one Config field: a VMCTL_* string and the value it must give, different from
    the default, built from the field's type so that a new key is covered as it comes."""
    name, default = field.name, DEFAULTS.get(field.name)
    special = {
        "vm_name": ("2026", "2026"),  # digits stay a string for a str key
        "snapshot_name": ("golden-1", "golden-1"),
        "api_host": ("127.0.0.2", "127.0.0.2"),
        "log_level": ("debug", "DEBUG"),
        "libvirt_uri": ("qemu+ssh://gallery/system", "qemu+ssh://gallery/system"),
        "state_path": (str(tmp_path / "s.db"), str(tmp_path / "s.db")),
        "api_token": ("a" * 24, "a" * 24),
        "guest_token": ("g" * 24, "g" * 24),
        "api_token_file": None,
        "guest_token_file": None,  # tested with a real file below
        "post_revert_command": ("[echo, '{vm_name}']", ("echo", "{vm_name}")),
        "cors_origins": ("[http://192.168.122.1:8080]", ("http://192.168.122.1:8080",)),
        "allowed_hosts": ("[pc.museum.example]", ("pc.museum.example",)),
        "virsh_long_timeout": ("300", 300.0),
        "recovery_backoff_max": ("600", 600.0),
        "schedule": (
            "{hours: {monday: '10:00-18:00'}}",
            parse_schedule({"hours": {"monday": "10:00-18:00"}}),
        ),
        "screen": (
            "{rules: [{kind: black, seconds: 5}]}",
            parse_screen({"rules": [{"kind": "black", "seconds": 5}]}, Path.cwd()),
        ),
        "notify_webhook_url": (
            "https://hooks.museum.example/vm",
            "https://hooks.museum.example/vm",
        ),
        "notify_webhook_secret": ("hook secret", "hook secret"),
        "notify_webhook_secret_file": None,
        "notify_email_to": ("[tech@museum.example]", ("tech@museum.example",)),
        "notify_email_from": ("vm@museum.example", "vm@museum.example"),
        "notify_smtp_host": ("mail.museum.example", "mail.museum.example"),
        "notify_smtp_user": ("technician", "technician"),
        "notify_smtp_password": ("pass word", "pass word"),
        "notify_smtp_password_file": None,  # tested with a real file in test_senders
        "ping_url": ("https://hc.museum.example/ping/1", "https://hc.museum.example/ping/1"),
    }
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        value = default + 1.5 if default < 3000 else default / 2
        return str(value), value
    raise AssertionError(f"no rule to make a valid value for {name} ({field.type}): add one")


def test_environment_overrides_every_key(tmp_path):
    path = write(tmp_path / "c.yaml", {"vm_name": "eden", "api_port": 8000})
    expected: dict[str, Any] = {}
    env = {"VMCTL_URL": "http://x", "VMCTL_TOKEN": "t"}  # the CLI's own variables are not keys
    for field in dataclasses.fields(Config):
        made = valid_other_value(field, tmp_path)
        if made is None:
            continue
        raw, value = made
        assert value != DEFAULTS.get(field.name), field.name
        env[f"VMCTL_{field.name.upper()}"] = raw
        expected[field.name] = value
    config, _ = load_config(path, env=env)
    for key, value in expected.items():
        assert getattr(config, key) == value, (key, getattr(config, key), value)
    assert set(expected) == set(KEYS) - {
        "api_token_file",
        "guest_token_file",
        "notify_webhook_secret_file",
        "notify_smtp_password_file",
    }


@pytest.mark.parametrize("key", ["api_token", "guest_token"])
def test_token_files_through_the_environment_set_the_token(tmp_path, key):
    secret = tmp_path / f"{key}.txt"
    secret.write_text("s3cret-" + "x" * 20 + "\n")
    config, _ = load_config(
        write(tmp_path / "c.yaml", {"vm_name": "eden"}),
        env={f"VMCTL_{key.upper()}_FILE": str(secret)},
    )
    assert getattr(config, key) == "s3cret-" + "x" * 20
    assert getattr(config, f"{key}_file") == str(secret)


def test_allowed_hosts_from_file_and_environment(tmp_path):
    path = write(tmp_path / "c.yaml", {"vm_name": "eden", "allowed_hosts": ["a.example"]})
    assert load_config(path, env={})[0].allowed_hosts == ("a.example",)
    env = {"VMCTL_ALLOWED_HOSTS": "[exhibition-pc.museum.example, gallery-pc.local]"}
    assert load_config(path, env=env)[0].allowed_hosts == (
        "exhibition-pc.museum.example",
        "gallery-pc.local",
    )
    assert load_config(path, env={"VMCTL_ALLOWED_HOSTS": "null"})[0].allowed_hosts is None


def test_discovery_order(tmp_path, monkeypatch):
    a = write(tmp_path / "a.yaml", {"vm_name": "a"})
    b = write(tmp_path / "b.yaml", {"vm_name": "b"})
    local = write(tmp_path / "config.yaml", {"vm_name": "local"})
    env = {"VMCTL_CONFIG": str(b)}
    assert find_config_file(a, env, cwd=tmp_path) == a
    assert find_config_file(None, env, cwd=tmp_path) == b
    assert find_config_file(None, {}, cwd=tmp_path) == local
    with pytest.raises(ConfigError, match="does not exist"):
        find_config_file(tmp_path / "missing.yaml", {}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"\(from --config\) is a directory"):
        find_config_file(tmp_path, {}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="VMCTL_CONFIG"):
        find_config_file(None, {"VMCTL_CONFIG": str(tmp_path / "nope")}, cwd=tmp_path)


@pytest.mark.parametrize(
    "values, words",
    [
        ({}, ["vm_name", "missing"]),
        ({"vm_name": "eden", "heartbeat_timeot": 5}, ["unknown key heartbeat_timeot=5"]),
        ({"vm_name": "eden", "api_port": "eighty"}, ["api_port='eighty'", "TCP port"]),
        ({"vm_name": "eden", "api_port": 70000}, ["api_port=70000", "65535"]),
        ({"vm_name": "eden", "heartbeat_timeout": -1}, ["heartbeat_timeout=-1", "0.1"]),
        ({"vm_name": "eden", "heartbeat_timeout": True}, ["heartbeat_timeout=True"]),
        (
            {"vm_name": "eden", "auto_revert_enabled": "yes please"},
            ["auto_revert_enabled", "true or false"],
        ),
        ({"vm_name": "eden", "log_level": "LOUD"}, ["log_level='LOUD'", "DEBUG"]),
        ({"vm_name": "--all"}, ["vm_name='--all'"]),
        ({"vm_name": "eden", "snapshot_name": "../x"}, ["snapshot_name='../x'"]),
        ({"vm_name": "eden", "libvirt_uri": "nonsense"}, ["libvirt_uri", "qemu:///system"]),
        (
            {"vm_name": "eden", "allowed_hosts": "pc.example"},
            ["allowed_hosts='pc.example'", "list"],
        ),
        (
            {"vm_name": "eden", "allowed_hosts": ["pc.example:8000"]},
            ["pc.example:8000", "names only"],
        ),
        ({"vm_name": "eden", "allowed_hosts": ["http://pc.example"]}, ["http://pc.example"]),
        ({"vm_name": "eden", "allowed_hosts": ["*"]}, ["allowed_hosts=['*']"]),
        ({"vm_name": "eden", "allowed_hosts": [""]}, ["allowed_hosts=['']"]),
    ],
)
def test_bad_values_name_key_value_and_expectation(values, words):
    with pytest.raises(ConfigError) as info:
        build_config(values)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_yaml_is_reported_with_its_position(tmp_path):
    path = write(tmp_path / "c.yaml", "vm_name: eden\napi_port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "l.yaml", "- a\n- b\n"), env={})


def test_example_config_documents_every_key_with_its_default():
    example = yaml.safe_load((REPO / "etc" / "config.example.yaml").read_text())
    assert set(example) == set(KEYS)
    for key, default in DEFAULTS.items():
        assert example[key] == default, key
    assert isinstance(build_config(example), Config)
    text = (REPO / "etc" / "config.example.yaml").read_text()
    for key in KEYS:
        # each key is explained by a comment just above it
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert lines[index - 1].startswith("#"), f"{key} has no comment"


# ------------------------------------------------------------------ files that cannot be used


def test_a_config_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    """An editor on a Windows PC may save the file as Latin-1 ("Café" in a comment)."""
    path = tmp_path / "c.yaml"
    path.write_bytes("# Ausstellung Café\nvm_name: eden\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert message.startswith(f"cannot read config file {str(path)!r}: ") and "\n" not in message
    assert "utf-8" in message.lower(), message


def test_an_empty_config_file_means_defaults_and_the_environment(tmp_path):
    path = write(tmp_path / "c.yaml", "# every key comes from VMCTL_* variables\n")
    config, source = load_config(path, env={"VMCTL_VM_NAME": "eden"})
    assert source == path
    assert config == build_config({"vm_name": "eden"})
    with pytest.raises(ConfigError, match="vm_name is missing"):
        load_config(path, env={})


def test_an_environment_value_yaml_cannot_parse_is_taken_as_written():
    """'@' cannot start a YAML scalar, yet it is a fine character in a token."""
    token = "@gallery-staff-token-0123456789"
    config, _ = load_config(
        None, env={"VMCTL_VM_NAME": "eden", "VMCTL_API_TOKEN": token, "VMCTL_CONFIG": ""}
    )
    assert config.api_token == token


def test_a_key_that_is_not_a_string_is_reported_as_unknown(tmp_path):
    path = write(tmp_path / "c.yaml", "vm_name: eden\n8000: api_port\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith("unknown key 8000: expected one of vm_name, ")


@pytest.mark.parametrize(
    "values, words",
    [
        (
            {"virsh_timeout": 60, "virsh_long_timeout": 30},
            ["virsh_long_timeout=30 is invalid", "at least virsh_timeout (60)"],
        ),
        (
            {"recovery_backoff_initial": 20, "recovery_backoff_max": 10},
            ["recovery_backoff_max=10 is invalid", "at least recovery_backoff_initial (20)"],
        ),
    ],
)
def test_a_bound_below_its_partner_is_a_config_error(values, words):
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", **values})
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("key", ["api_token", "guest_token"])
def test_a_token_file_that_cannot_be_used_is_a_config_error_naming_it(tmp_path, key):
    missing = str(tmp_path / "no-such-token")
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", f"{key}_file": missing})
    assert str(info.value) == (
        f"{key}_file={missing!r} is invalid: cannot read it (No such file or directory)"
    )

    short = tmp_path / "short-token"
    short.write_text("s3cret\n")
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", f"{key}_file": str(short)})
    assert str(info.value).startswith(
        f"{key}_file={str(short)!r} is invalid: the file must hold null, or a token of 16 to 256"
    )
    assert "s3cret" not in str(info.value), "the secret itself is never shown"

    latin1 = tmp_path / "latin1-token"
    latin1.write_bytes("Kunsthalle-Café-2026-token".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", f"{key}_file": str(latin1)})
    assert str(info.value).startswith(f"{key}_file={str(latin1)!r} is invalid: cannot read it")

    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", f"{key}_file": 5})
    assert str(info.value).startswith(f"{key}_file=5 is invalid: expected ")


def _as_an_unprivileged_user(argv: list[str], env: dict[str, str]):
    """Run the command as the service's kind of user: root reads any file, so as root
    the command is run as 'nobody' (setpriv), as anyone else it runs as is."""
    import os
    import subprocess

    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("where", ["--config", "VMCTL_CONFIG", "the system location"])
def test_a_config_in_a_directory_the_user_cannot_enter_is_one_line_exit_2(tmp_path, where):
    """README's old recipe (install -d -m 0750 root:root /etc/exhibition-vm-controller) left
    the service's user unable even to look at config.yaml: a traceback and exit 1 under
    systemd, restarted until its start limit. It must be the one-line configuration error."""
    import os
    import sys

    tmp_path.chmod(0o755)
    locked = tmp_path / "etc"
    locked.mkdir()
    (locked / "config.yaml").write_text("vm_name: art\n")
    locked.chmod(0o700 if os.geteuid() == 0 else 0o000)  # root's, or nobody may enter
    # Not under coverage: 'nobody' could not write its data file (and would say so).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMCTL_", "COVERAGE_"))}
    if where == "--config":  # as the systemd units give it
        argv = [sys.executable, "-m", "vmcontroller", "check-config", "--config"]
        argv.append(str(locked / "config.yaml"))
    elif where == "VMCTL_CONFIG":
        env["VMCTL_CONFIG"] = str(locked / "config.yaml")
        argv = [sys.executable, "-m", "vmcontroller", "check-config"]
    else:
        # The fallback search, as for /etc/exhibition-vm-controller/config.yaml.
        env["VMCTL_TEST_SYSTEM_CONFIG"] = str(locked / "config.yaml")
        argv = [
            sys.executable,
            "-c",
            "import vmcontroller.config as c, pathlib, os, sys; "
            "c.SYSTEM_CONFIG = pathlib.Path(os.environ['VMCTL_TEST_SYSTEM_CONFIG']); "
            "from vmcontroller.cli import main; sys.argv = ['vmcontroller', 'check-config']; "
            "main()",
        ]
    try:
        out = _as_an_unprivileged_user(argv, env | {"HOME": "/", "PWD": "/"})
    finally:
        locked.chmod(0o755)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmcontroller: configuration error:"), lines
    assert str(locked / "config.yaml") in lines[0] and "Permission denied" in lines[0], lines


@pytest.mark.parametrize("verb", ["check-config", "serve"])
def test_a_config_file_the_user_cannot_read_given_with_config_is_one_line_exit_2(verb):
    """Seen under a real systemd (tests/test_packaged_service.py): config.yaml made 0600
    root, the unit's --config was refused by the command line parser itself, in three
    lines of usage text, not as the configuration error the README and the journal show."""
    import os
    import shutil
    import sys
    import tempfile

    # Every folder up to the file open to all, as /etc is: pytest's tmp_path is not.
    folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vmctl-test-"))
    folder.chmod(0o755)
    config = folder / "config.yaml"
    config.write_text("vm_name: art\n")
    config.chmod(0o600 if os.geteuid() == 0 else 0o000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMCTL_", "COVERAGE_"))}
    argv = [sys.executable, "-m", "vmcontroller", verb, "--config", str(config)]
    try:
        out = _as_an_unprivileged_user(argv, env | {"HOME": "/", "PWD": "/"})
    finally:
        shutil.rmtree(folder)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmcontroller: configuration error:"), lines
    assert str(config) in lines[0] and "Permission denied" in lines[0], lines


def test_a_config_path_the_system_refuses_to_look_at_is_a_config_error(tmp_path, monkeypatch):
    """The same rule in-process (the test above runs it for real, as another user, where
    coverage cannot follow): any OSError from looking is a ConfigError naming the file."""
    import errno

    def refused(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", refused)
    with pytest.raises(ConfigError, match=r"cannot read config file .*: Permission denied"):
        find_config_file(tmp_path / "config.yaml", {})


@pytest.mark.parametrize(
    "values, words",
    [
        (
            {"notify_email_to": ["tech@museum.example"], "notify_smtp_host": "mail.example"},
            ["notify_email_from is missing", "when notify_email_to is set"],
        ),
        (
            {"notify_email_to": ["tech@museum.example"], "notify_email_from": "vm@example"},
            ["notify_smtp_host is missing", "when notify_email_to is set"],
        ),
        (
            {"notify_smtp_password": "pass word"},
            ["notify_smtp_user is missing", "the login that notify_smtp_password is for"],
        ),
    ],
)
def test_incomplete_email_settings_are_a_config_error_naming_the_missing_key(values, words):
    with pytest.raises(ConfigError) as info:
        build_config({"vm_name": "eden", **values})
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_schedule_already_parsed_is_taken_as_it_is():
    """A caller that already holds a parsed Schedule passes it through unchanged."""
    schedule = parse_schedule({"hours": {"monday": "10:00-18:00"}})
    assert build_config({"vm_name": "eden", "schedule": schedule}).schedule is schedule


def test_a_screen_section_given_as_made_is_taken_as_it_is():
    screen = parse_screen({"rules": [{"kind": "black", "seconds": 5}]}, Path.cwd())
    assert build_config({"vm_name": "eden", "screen": screen}).screen is screen
