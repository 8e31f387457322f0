"""The ``vmcontroller`` command run in-process, its stdout and stderr kept apart.

The tests say what goes where (data on stdout, the one error line on stderr).
click's CliRunner before 8.2 (Debian 12 ships click 8.1.3) mixes stderr into
stdout unless it is built with ``mix_stderr=False``; click 8.2 removed that
argument and always keeps the streams apart, and there ``output`` is both.
"""

from __future__ import annotations

import inspect

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
