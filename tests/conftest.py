"""Shared fixtures: real libvirt domains, a running controller, a schema-checking client."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libvirt_env import EventRecorder, TestDomain, libvirt_available  # noqa: E402
from openapi_check import response_validator  # noqa: E402

from vmcontroller import __version__  # noqa: E402
from vmcontroller.apispec import build_openapi  # noqa: E402
from vmcontroller.config import build_config  # noqa: E402


@pytest.fixture(scope="session")
def openapi() -> dict:
    return build_openapi(__version__)


@pytest.fixture(scope="session")
def check_response(openapi):
    return response_validator(openapi)


@pytest.fixture(scope="session")
def guest_build(libvirt):
    """The heartbeat guest, built once per session (scripts/build-guest.sh)."""
    from guest_env import build_guest

    try:
        return build_guest()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def deb_package(tmp_path_factory) -> Path:
    """The Debian package, built once per session by scripts/build-deb (which installs
    the build tools it lacks and fails on a lintian error) into a temporary directory;
    the path it prints last. Not installed here: a test that installs it does so in a
    machine of its own."""
    import subprocess

    outdir = tmp_path_factory.mktemp("deb")
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-deb"
    proc = subprocess.run([str(script), str(outdir)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-deb failed:\n{proc.stderr}{proc.stdout}", pytrace=False)
    deb = Path(proc.stdout.strip().splitlines()[-1])
    assert deb.parent == outdir and deb.is_file(), proc.stdout
    return deb


@pytest.fixture(scope="session")
def libvirt() -> None:
    """Real libvirt is required: its absence fails the tests rather than skipping them,
    unless VMCTL_TEST_WITHOUT_LIBVIRT=1 says a quick local run is fine without."""
    if libvirt_available():
        return
    message = (
        "libvirtd does not answer on qemu:///system: run scripts/test (it installs and "
        "starts libvirt), or set VMCTL_TEST_WITHOUT_LIBVIRT=1 to skip these tests"
    )
    if os.environ.get("VMCTL_TEST_WITHOUT_LIBVIRT") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def domain(libvirt) -> Iterator[TestDomain]:
    vm = TestDomain("it").create()
    try:
        yield vm
    finally:
        vm.remove()


@pytest.fixture
def events(domain) -> Iterator[EventRecorder]:
    recorder = EventRecorder(domain.name)
    try:
        yield recorder
    finally:
        recorder.close()


class Api:
    """A requests client bound to a running controller that checks every response
    against the OpenAPI schema before the test sees it."""

    def __init__(self, base: str, check):
        self.base = base
        self._check = check
        self.session = requests.Session()

    def call(
        self,
        method: str,
        path: str,
        template: str | None = None,
        expect: int | None = 200,
        **kwargs: Any,
    ) -> requests.Response:
        response = self.session.request(method, self.base + path, timeout=60, **kwargs)
        body = response.json()  # every answer is JSON, errors included
        assert response.headers["Content-Type"].startswith("application/json")
        if template is not None:
            self._check(template, method.lower(), response.status_code, body)
        if expect is not None:
            assert response.status_code == expect, (method, path, response.status_code, body)
        return response

    def get(self, path: str, template: str | None = None, **kw: Any) -> Any:
        return self.call("GET", path, template or path.split("?")[0], **kw).json()

    def post(self, path: str, template: str | None = None, **kw: Any) -> Any:
        return self.call("POST", path, template or path.split("?")[0], **kw).json()


@pytest.fixture
def start_controller(domain, check_response, tmp_path):
    """Start an in-process controller on the test domain; stopped at teardown."""
    from vmcontroller.server import Controller

    started: list[Controller] = []

    def start(**overrides: Any) -> tuple[Controller, Api]:
        settings = {
            "vm_name": domain.name,
            "api_host": "127.0.0.1",
            "api_port": 0,
            "heartbeat_timeout": 3,
            "vm_startup_heartbeat_delay": 1,
            "heartbeat_check_interval": 0.5,
            "virsh_timeout": 60,
            "state_path": str(tmp_path / "state.db"),
            **overrides,
        }
        controller = Controller(build_config(settings))
        started.append(controller)
        controller.start()
        assert controller.monitor.wait_initialised(60), "controller did not initialise"
        return controller, Api(f"http://127.0.0.1:{controller.port}", check_response)

    yield start
    for controller in started:
        controller.stop()


class ControllerProcess:
    """`python -m vmcontroller serve` as a real process, for kill -9 and signal tests."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str], check):
        import socket
        import subprocess

        self.config_path = config_path
        self.log_path = log_path
        self._log = log_path.open("a")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmcontroller", "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**env, "VMCTL_API_PORT": str(self.port)},
        )
        self.api = Api(f"http://127.0.0.1:{self.port}", check)

    def wait_ready(self, timeout: float = 60) -> None:
        from libvirt_env import wait_until

        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return (
                    self.api.session.get(self.api.base + "/api/v1/status", timeout=2).status_code
                    == 200
                )
            except requests.ConnectionError:
                return False

        wait_until(ready, timeout, 0.1, "the controller process to serve")

    def stop(self, signum: int | None = None, timeout: float = 15) -> int:
        import signal as signals
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signum or signals.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def spawn_controller(domain, check_response, tmp_path):
    """Start controller processes on the test domain (same state file each time)."""
    import yaml

    made: list[ControllerProcess] = []

    def spawn(env: dict[str, str] | None = None, **overrides: Any) -> ControllerProcess:
        settings = {
            "vm_name": domain.name,
            "api_host": "127.0.0.1",
            "api_port": 0,
            "heartbeat_timeout": 3,
            "vm_startup_heartbeat_delay": 1,
            "heartbeat_check_interval": 0.5,
            "virsh_timeout": 30,
            "state_path": str(tmp_path / "state.db"),
            **overrides,
        }
        config = tmp_path / f"controller-{len(made)}.yaml"
        config.write_text(yaml.safe_dump(settings))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
        process = ControllerProcess(
            config,
            tmp_path / f"controller-{len(made)}.log",
            {**base_env, **(env or {})},
            check_response,
        )
        made.append(process)
        process.wait_ready()
        return process

    yield spawn
    for process in made:
        process.stop()
