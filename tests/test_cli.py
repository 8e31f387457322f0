"""The command line: check-config, --help, --version, errors, and a real serve.

A gallery PC starts the controller from systemd and nobody reads a traceback,
so a bad configuration must end the program with status 2 and one line that
names the problem. Those promises are checked in-process with click's
CliRunner and again as real processes (``python -m vmcontroller`` and the
installed ``vmcontroller`` script). The serve test runs the real program
against a real QEMU VM and stops it with a signal, as systemd would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: an autouse fixture)
from libvirt_env import free_port, wait_until

from vmcontroller import __version__
from vmcontroller.config import DEFAULTS, KEYS

MODULE = [sys.executable, "-m", "vmcontroller"]
SCRIPT = [str(Path(sys.executable).parent / "vmcontroller")]
ERROR_PREFIX = "vmcontroller: configuration error: "
REVERTED = "Started Snapshot"  # libvirt's event when a revert brings the VM up

# (config, words the one error line must contain)
BAD_CONFIGS = {
    "missing vm_name": ({"snapshot_name": "ready"}, ["vm_name", "missing"]),
    "empty vm_name": ({"vm_name": ""}, ["vm_name", "missing"]),
    "unknown key": ({"vm_name": "eden", "heartbeat_timeot": 5}, ["heartbeat_timeot=5"]),
    "wrong type": ({"vm_name": "eden", "api_port": "eighty"}, ["api_port='eighty'", "TCP port"]),
    "wrong type bool": (
        {"vm_name": "eden", "auto_revert_enabled": "yes please"},
        ["auto_revert_enabled='yes please'", "true or false"],
    ),
    "out of range": ({"vm_name": "eden", "api_port": 70000}, ["api_port=70000", "65535"]),
    "out of range float": (
        {"vm_name": "eden", "heartbeat_timeout": 0},
        ["heartbeat_timeout=0", "0.1 to 86400"],
    ),
    "bad name": ({"vm_name": "--domain"}, ["vm_name='--domain'", "libvirt domain name"]),
}


def clean_environ(**extra: str) -> dict[str, str]:
    """The process environment without any VMCTL_* setting of the person running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env.update(extra)
    return env


def write_config(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def effective(stdout: str) -> dict[str, Any]:
    """Parse check-config's output: a comment line, then the config as YAML."""
    header, _, body = stdout.partition("\n")
    assert header.startswith("# effective configuration"), stdout
    return yaml.safe_load(body)


def assert_one_line_error(stderr: str, words: list[str]) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------ check-config in-process


def test_check_config_prints_every_key_of_the_effective_config(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"vm_name": "eden-garden-vm", "api_port": 8080})
    result = invoke("check-config", "--config", str(path))
    assert result.exit_code == 0, shown(result)
    assert result.stderr == ""
    assert result.stdout.startswith(f"# effective configuration (file: {path}, ")
    values = effective(result.stdout)
    assert list(values) == list(KEYS), "every key, in the order of the Config"
    assert values == {**DEFAULTS, "vm_name": "eden-garden-vm", "api_port": 8080}


def test_check_config_shows_environment_overrides(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"vm_name": "eden", "api_port": 8080})
    result = invoke(
        "check-config",
        "--config",
        str(path),
        env={
            "VMCTL_API_PORT": "9001",
            "VMCTL_AUTO_REVERT_ENABLED": "false",
            "VMCTL_LOG_LEVEL": "debug",
            "VMCTL_HEARTBEAT_TIMEOUT": "2.5",
            "VMCTL_VM_NAME": "2026",
            "VMCTL_URL": "http://ignored.invalid",
        },
    )
    assert result.exit_code == 0, shown(result)
    values = effective(result.stdout)
    assert values["api_port"] == 9001 and values["auto_revert_enabled"] is False
    assert values["log_level"] == "DEBUG" and values["heartbeat_timeout"] == 2.5
    assert values["vm_name"] == "2026", "a numeric-looking VM name stays a string"
    assert values["snapshot_name"] == "ready"


def test_check_config_finds_the_file_through_vmctl_config(tmp_path):
    path = write_config(tmp_path / "elsewhere.yaml", {"vm_name": "from-env"})
    result = invoke("check-config", env={"VMCTL_CONFIG": str(path)})
    assert result.exit_code == 0, shown(result)
    assert effective(result.stdout)["vm_name"] == "from-env"


def test_mask_secrets_hides_every_token_and_token_file():
    from vmcontroller.cli import MASK, mask_secrets

    config = {
        "vm_name": "eden",
        "api_token": "s3cret",
        "token": "t",
        "guest_tokens": ["a", "b"],
        "token_file": "/etc/exhibition-vm-controller/token",
        "admin_token_files": ["/x"],
        "unset_token": None,
        "empty_token": "",
        "token_count": 3,
        "tokenizer": "x",
        "nested": {"staff_token": "s", "port": 8000},
    }
    assert mask_secrets(config) == {
        "vm_name": "eden",
        "api_token": MASK,
        "token": MASK,
        "guest_tokens": [MASK, MASK],
        "token_file": MASK,
        "admin_token_files": [MASK],
        "unset_token": None,
        "empty_token": "",
        "token_count": 3,
        "tokenizer": "x",
        "nested": {"staff_token": MASK, "port": 8000},
    }
    assert config["api_token"] == "s3cret", "the config itself is left alone"


def test_mask_secrets_keeps_ordinary_lists_and_masks_secrets_inside_them():
    from vmcontroller.cli import MASK, mask_secrets

    config = {
        "cors_origins": ["http://museum.example"],
        "clients": [{"name": "kiosk", "guest_token": "g"}, "plain"],
    }
    assert mask_secrets(config) == {
        "cors_origins": ["http://museum.example"],
        "clients": [{"name": "kiosk", "guest_token": MASK}, "plain"],
    }


def test_check_config_masks_secrets(tmp_path, monkeypatch):
    """No key holds a secret yet (tokens come with authentication); any that ends in _token
    or token_file is masked the day it appears."""
    from vmcontroller import cli

    real = cli.as_dict
    monkeypatch.setattr(
        cli,
        "as_dict",
        lambda config: {**real(config), "api_token": "s3cret", "token_file": "/etc/t"},
    )
    path = write_config(tmp_path / "c.yaml", {"vm_name": "eden"})
    result = invoke("check-config", "--config", str(path))
    assert result.exit_code == 0, shown(result)
    values = effective(result.stdout)
    assert values["api_token"] == "********" and values["token_file"] == "********"
    assert "s3cret" not in result.stdout and values["vm_name"] == "eden"


@pytest.mark.parametrize("values, words", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_bad_config_exits_2_with_one_line(tmp_path, command, values, words):
    path = write_config(tmp_path / "bad.yaml", values)
    result = invoke(command, "--config", str(path))
    assert result.exit_code == 2, shown(result)
    assert result.stdout == ""
    assert_one_line_error(result.stderr, words)


def test_an_invalid_environment_override_exits_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"vm_name": "eden"})
    result = invoke("check-config", "--config", str(path), env={"VMCTL_API_PORT": "http"})
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, ["api_port='http'"])


def test_invalid_yaml_exits_2_with_the_line_number(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("vm_name: eden\napi_port: [8000\n", encoding="utf-8")
    result = invoke("check-config", "--config", str(path))
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, ["not valid YAML", "line "])


def test_a_config_path_that_does_not_exist_exits_2(tmp_path):
    missing = tmp_path / "nowhere" / "config.yaml"
    for command in ("check-config", "serve"):
        result = invoke(command, "--config", str(missing))
        assert result.exit_code == 2, shown(result)
        assert_one_line_error(result.stderr, [str(missing), "does not exist"])


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["serve", "--help"], ["check-config", "--help"], ["check-config", "-h"]],
)
def test_help(args):
    result = invoke(*args)
    assert result.exit_code == 0, shown(result)
    assert result.stdout.startswith("Usage: ")
    if args[0].startswith("-"):
        assert "serve" in result.stdout and "check-config" in result.stdout
    else:
        assert "--config" in result.stdout


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vmcontroller, version {__version__}"


def test_an_unknown_command_is_a_usage_error():
    result = invoke("serv")
    assert result.exit_code == 2
    assert "Traceback" not in shown(result)


# ------------------------------------------------------------------ real processes

LAUNCHERS = {"python -m": MODULE, "console script": SCRIPT}


def test_the_console_script_is_installed_next_to_the_interpreter():
    assert Path(SCRIPT[0]).is_file(), f"{SCRIPT[0]} missing: pip install -e . into this venv"


@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_bad_config_stops_the_real_program_with_one_line(tmp_path, launcher, command):
    path = write_config(tmp_path / "bad.yaml", {"vm_name": "eden", "heartbeat_timeout": "soon"})
    proc = subprocess.run(
        [*launcher, command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_environ(),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, ["heartbeat_timeout='soon'"])


@pytest.mark.parametrize("launcher", LAUNCHERS.values(), ids=LAUNCHERS.keys())
def test_the_real_program_checks_a_good_config(tmp_path, launcher):
    path = write_config(tmp_path / "good.yaml", {"vm_name": "eden"})
    proc = subprocess.run(
        [*launcher, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_environ(VMCTL_API_PORT="8123"),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert effective(proc.stdout)["api_port"] == 8123
    version = subprocess.run(
        [*launcher, "--version"], capture_output=True, text=True, env=clean_environ(), timeout=60
    )
    assert version.returncode == 0 and __version__ in version.stdout


def wait_for_status(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> dict:
    """Poll the status endpoint until it answers 200 (it answers 503 while starting)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode} before answering:\n{log.read_text()}")
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text}"
        except requests.ConnectionError as exc:
            last = str(exc)
        time.sleep(0.1)
    pytest.fail(f"status did not answer 200 within {timeout} s (last: {last}):\n{log.read_text()}")


@pytest.mark.libvirt
@pytest.mark.parametrize(
    "signum, launcher",
    [(signal.SIGTERM, MODULE), (signal.SIGINT, SCRIPT)],
    ids=["SIGTERM python -m", "SIGINT console script"],
)
def test_serve_runs_until_a_signal_and_exits_cleanly(
    domain, events, tmp_path, check_response, signum, launcher
):
    port = free_port()
    config = write_config(
        tmp_path / "serve.yaml",
        {
            "vm_name": domain.name,
            "api_host": "127.0.0.1",
            "api_port": port,
            "heartbeat_timeout": 20,
            "vm_startup_heartbeat_delay": 2,
            "heartbeat_check_interval": 0.5,
            "virsh_timeout": 30,
            "state_path": str(tmp_path / "state.db"),
        },
    )
    stderr_path, stdout_path = tmp_path / "stderr.log", tmp_path / "stdout.log"
    with stderr_path.open("w") as err, stdout_path.open("w") as out:
        proc = subprocess.Popen(
            [*launcher, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=clean_environ(),
            cwd=tmp_path,
        )
    try:
        status = wait_for_status(proc, f"http://127.0.0.1:{port}/api/v1/status", stderr_path)
        check_response("/api/v1/status", "get", 200, status)
        assert status["vm_name"] == domain.name
        assert status["vm_state"] == "running" and status["vm_is_running"] is True
        assert status["snapshot_exists"] is True
        assert events.wait_for(REVERTED, 1, 30), "serve reverts the VM to its snapshot at start"

        proc.send_signal(signum)
        try:
            returncode = proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 10 s after {signum.name}:\n{stderr_path.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = stderr_path.read_text()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    startup = [
        line
        for line in stderr.splitlines()
        if " INFO vmcontroller.server: Exhibition VM Controller " in line
    ]
    assert len(startup) == 1, stderr
    assert f"VM '{domain.name}'" in startup[0] and f"API on 127.0.0.1:{port}" in startup[0]
    assert f"received {signum.name}" in stderr and "shutting down" in stderr
    assert stdout_path.read_text() == ""
    # Nothing listens any more, and the VM was left running (a shutdown is no stop).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the port is closed after exit"
    wait_until(lambda: domain.state() == "running", 10, message="VM still running")


def test_an_answer_that_is_not_an_object_is_printed_as_it_came():
    """A proxy in front of the controller may answer with a bare string: shown, not a crash."""
    from vmcontroller.cli import _message

    assert _message("Bad Gateway") == "Bad Gateway"
    assert _message({"message": "VM started", "details": {"note": "closed"}}) == (
        "VM started\nnote: closed"
    )
