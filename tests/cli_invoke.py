"""The ``vmcontroller`` command run in-process, its stdout and stderr kept apart.

The tests say what goes where (data on stdout, the one error line on stderr).
click's CliRunner before 8.2 (Debian 12 ships click 8.1.3) mixes stderr into
stdout unless it is built with ``mix_stderr=False``; click 8.2 removed that
argument and always keeps the streams apart, and there ``output`` is both.
"""

from __future__ import annotations

import inspect
import os

import pytest
from click.testing import CliRunner, Result

from vmcontroller.cli import main


def runner() -> CliRunner:
    """A CliRunner whose results have ``stdout`` and ``stderr`` apart, on any click 8."""
    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``vmcontroller ARGS`` in this process."""
    return runner().invoke(main, list(args), env=env)


def shown(result: Result) -> str:
    """All the command wrote, for a failure message or a search of both streams."""
    return result.stdout + result.stderr


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No VMCTL_* variable, proxy setting or ./config.yaml of the person running the tests.
    Autouse in every test module that imports it."""
    for name in list(os.environ):
        if name.startswith("VMCTL_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
