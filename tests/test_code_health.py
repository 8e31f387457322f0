"""The habits that keep the code healthy, checked by the suite, so by CI: ruff's lint and
format check over every Python file of the repository, and mypy over the package.

Each test runs the tool as a developer would (the same settings: ruff.toml, setup.cfg's
[mypy]; pre-commit runs the same commands) and fails with the tool's own report.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKED = ["."]  # every Python file of the repository (ruff skips .venv)


def tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(
            f"{name} is not installed: scripts/setup-python.sh installs it (the "
            f"test extra of setup.cfg)"
        )
    return on_path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing_to_lint():
    out = run(tool("ruff"), "check", "--no-cache", *CHECKED)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_code_is_formatted_as_ruff_formats_it():
    out = run(tool("ruff"), "format", "--check", "--no-cache", *CHECKED)
    assert out.returncode == 0, "run `.venv/bin/ruff format .`:\n" + out.stdout + out.stderr


def test_mypy_finds_no_type_error_in_the_package():
    out = run(tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null")
    assert out.returncode == 0, out.stdout + out.stderr


#: The web layer: it talks to the controller through controls.Controls and meets its
#: failures as errors.py's types, never through the runner, the store or the monitor.
WEB_MODULES = (
    "app",
    "routes",
    "security",
    "requestlog",
    "wsgi",
    "docs",
    "params",
    "apispec",
    "dashboard",
    "stream",
)
BELOW_THE_WEB = {"virsh", "vm", "monitor", "store", "statewriter", "guard", "decide", "server"}


def test_the_web_layer_imports_nothing_below_the_controls_protocol():
    import ast

    for name in WEB_MODULES:
        tree = ast.parse((REPO / "vmcontroller" / f"{name}.py").read_text())
        imported = {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
        assert not imported & BELOW_THE_WEB, f"{name}.py imports {sorted(imported & BELOW_THE_WEB)}"
