"""`vmcontroller serve` when what it starts with is not as it should be.

A state file it cannot write, a port someone else holds, no config file at
all, no token while listening beyond loopback: each either starts and says
so, or stops with one line naming the problem, never a traceback.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from libvirt_env import free_port

pytestmark = pytest.mark.libvirt

REVERTED = "Started Snapshot"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    return {**env, **extra}


def serve_once(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`serve` expected to stop by itself (a start-up error)."""
    return subprocess.run(
        [sys.executable, "-m", "vmcontroller", "serve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_an_unwritable_state_file_does_not_stop_serve_and_status_says_so(
    spawn_controller, domain, events, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # Its parent is a file: it can be neither created nor opened, even by root.
    ctl = spawn_controller(state_path=str(blocker / "state.db"))
    assert events.wait_for(REVERTED, 1, 30), "the VM is watched all the same"
    status = ctl.api.get("/api/v1/status")
    assert status["state_file"]["saving"] is False
    assert "state is not being saved" in status["state_file"]["detail"], status["state_file"]
    assert "state file" in ctl.log() and " ERROR " in ctl.log()
    assert "Traceback" not in ctl.log()


def test_a_port_in_use_stops_serve_with_one_line_naming_it(domain, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "vm_name": domain.name,
                    "api_host": "127.0.0.1",
                    "api_port": port,
                    "state_path": str(tmp_path / "state.db"),
                }
            )
        )
        proc = serve_once(["--config", str(config)], clean_env(), tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert (
        f"vmcontroller: cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    ), proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_config_file_found_serves_from_the_environment_and_says_so(domain, events, tmp_path):
    assert not Path("/etc/exhibition-vm-controller/config.yaml").exists(), (
        "this test needs a machine without a system-wide config"
    )
    port = free_port()
    env = clean_env(
        VMCTL_VM_NAME=domain.name,
        VMCTL_API_HOST="127.0.0.1",
        VMCTL_API_PORT=str(port),
        VMCTL_STATE_PATH=str(tmp_path / "state.db"),
        VMCTL_HEARTBEAT_TIMEOUT="60",
    )
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmcontroller", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert events.wait_for(REVERTED, 1, 60), (tmp_path / "serve.log").read_text()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "no config file found; using defaults and VMCTL_* variables" in text, text
    assert proc.returncode == 0 and "Traceback" not in text


def test_no_config_file_and_no_vm_name_stops_serve_with_status_2(tmp_path):
    proc = serve_once([], clean_env(), tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "vm_name is missing" in proc.stderr and "Traceback" not in proc.stderr


def loopback_host_name() -> str:
    """A name of this machine that resolves to loopback only: the controller takes any
    host name for reachable from elsewhere, yet the test listens on loopback alone."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
    if not addresses or not all(a.startswith("127.") for a in addresses):
        pytest.fail(
            f"the host name {name!r} resolves to {addresses}, not to loopback only: "
            "this test listens on loopback only",
            pytrace=False,
        )
    return name


def test_no_token_while_listening_beyond_loopback_is_warned(start_controller, caplog, tmp_path):
    host = loopback_host_name()
    cases = [
        {"api_host": host},
        {"api_host": host, "api_token": "staff-token-0123456789abcdef"},
        {"api_host": "127.0.0.1"},
        {"api_host": "localhost"},
    ]
    with caplog.at_level(logging.WARNING, logger="vmcontroller.server"):
        for n, case in enumerate(cases):  # one at a time: they share the VM
            controller, _ = start_controller(
                heartbeat_timeout=60, state_path=str(tmp_path / f"s{n}.db"), **case
            )
            controller.stop()
    warnings = [r.getMessage() for r in caplog.records if "no api_token is set" in r.getMessage()]
    assert len(warnings) == 1, "warned once: not with a token, not on loopback"
    assert f"listens on {host}, beyond this machine" in warnings[0]


def test_api_reload_is_ignored_with_a_warning(start_controller, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="vmcontroller.server"):
        controller, api = start_controller(
            heartbeat_timeout=60, api_reload=True, state_path=str(tmp_path / "reload.db")
        )
    assert api.get("/api/v1/status")["vm_name"] == controller.config.vm_name, "it serves"
    warnings = [r.getMessage() for r in caplog.records if "api_reload" in r.getMessage()]
    assert warnings == [
        "api_reload is ignored: waitress has no code reloader (it was a "
        "development option of the original server)"
    ]
