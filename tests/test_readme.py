"""README.rst is the newcomer's path: it must render and stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import docutils.core
import docutils.utils

from vmcontroller.config import KEYS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.rst").read_text()


def test_readme_renders_without_warnings():
    docutils.core.publish_doctree(README, settings_overrides={"halt_level": 2, "report_level": 2})


def test_readme_setup_is_the_two_scripts_ci_runs():
    after = README.split("Set-up\n======\n", 1)[1]
    block = re.split(r"\n[^\n]+\n=+\n", after, maxsplit=1)[0]  # up to the next section
    commands = re.findall(r"^   (scripts/\S+)", block, re.M)
    assert commands == ["scripts/demo", "scripts/test"]
    assert "exec scripts/test" in (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert (REPO / command).stat().st_mode & 0o111, f"{command} is not executable"


def test_readme_documents_every_config_key():
    for key in KEYS:
        assert f"``{key}``" in README, key
