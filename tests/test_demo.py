"""The README's first command, `scripts/demo`, run for real on a test-named VM."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from libvirt_env import TestDomain, wait_until

pytestmark = pytest.mark.libvirt
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_creates_its_vm_and_serves(libvirt, tmp_path):
    vm = TestDomain("demo")  # created by the script itself, removed by the test
    port = free_port()
    env = {**os.environ, "DEMO_VM": vm.name, "DEMO_DIR": str(tmp_path), "DEMO_PORT": str(port)}
    log = (tmp_path / "demo.log").open("w+")
    proc = subprocess.Popen([str(REPO / "scripts" / "demo")], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/v1/status"

        def serving() -> bool:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(serving, 300, 0.2, "the demo controller to answer")
        status = requests.get(url, timeout=5).json()
        assert status["vm_name"] == vm.name and status["vm_is_running"] is True
        assert status["snapshot_exists"] is True
        assert "ready" in vm.snapshots()
        assert (tmp_path / "config.yaml").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        vm.remove()
    output = (tmp_path / "demo.log").read_text()
    assert code == 0, output
    assert f"Exhibition VM Controller demo: VM '{vm.name}'" in output
    assert "Traceback" not in output
