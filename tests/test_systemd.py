"""The systemd units in etc/systemd: `systemd-analyze verify` accepts them, and they say what
the controller relies on (Type=notify with a watchdog, restart limits, hardening that
still lets it write its state file, one state file per instance of the template, the
order against libvirt at shutdown).

The Debian package (debian/, scripts/build-deb) installs the units as they are, with
the controller at /usr/bin/vmcontroller. `systemd-analyze verify` checks that
ExecStart's program exists, which it does not on this machine (the package is not
installed here), so the test verifies a copy whose ExecStart points at this checkout's
installed `vmcontroller` script, and lets `man` find the packaged manual page
(debian/vmcontroller.1) that Documentation= names. Everything else is verified as
shipped. scripts/test installs systemd-analyze (scripts/setup-test-tools.sh) where
missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from cli_invoke import invoke, shown

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "etc" / "systemd"
SERVICE = UNITS / "exhibition-vm-controller.service"
TEMPLATE = UNITS / "exhibition-vm-controller@.service"
INSTALLED = "/usr/bin/vmcontroller"
MANPAGE = REPO / "debian" / "vmcontroller.1"
HERE = str(Path(sys.executable).parent / "vmcontroller")
STATE_DIR = "/var/lib/exhibition-vm-controller"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        assert current is not None, f"{path.name}: {raw!r} outside a section"
        key, _, value = line.partition("=")
        sections[current][key.strip()].append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is missing: run scripts/test (scripts/setup-test-tools.sh "
            "installs Debian's systemd package)",
            pytrace=False,
        )
    return found


def verify(systemd_analyze: str, directory: Path, name: str) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` in `directory`, with the package's manual page on MANPATH
    (verify runs `man` for every man: page in Documentation=)."""
    manpath = directory / "man"
    (manpath / "man1").mkdir(parents=True, exist_ok=True)
    shutil.copy(MANPAGE, manpath / "man1" / MANPAGE.name)
    return subprocess.run(
        [systemd_analyze, "verify", f"./{name}"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPATH": str(manpath)},
    )


@pytest.mark.parametrize(
    "unit, name",
    [(SERVICE, SERVICE.name), (TEMPLATE, "exhibition-vm-controller@eden.service")],
    ids=["service", "template instance"],
)
def test_systemd_analyze_verify_accepts_the_unit(systemd_analyze, tmp_path, unit, name):
    text = unit.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    assert Path(HERE).is_file(), HERE
    (tmp_path / unit.name).write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={HERE} "))
    proc = verify(systemd_analyze, tmp_path, name)
    assert proc.returncode == 0, proc.stderr
    # verify exits 0 even for unknown keys; it says so on stderr, which must stay empty.
    assert proc.stderr.strip() == "", proc.stderr


def test_verify_would_catch_a_misspelt_key(systemd_analyze, tmp_path):
    """The check above is only worth something if a typo shows up on stderr."""
    text = SERVICE.read_text().replace(f"ExecStart={INSTALLED} ", f"ExecStart={HERE} ")
    (tmp_path / SERVICE.name).write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="))
    proc = verify(systemd_analyze, tmp_path, SERVICE.name)
    assert "Unknown key" in proc.stderr


def test_verify_would_catch_a_manual_page_that_is_not_shipped(systemd_analyze, tmp_path):
    """Documentation= names the packaged manual page; verify looks it up with `man`."""
    text = SERVICE.read_text().replace(f"ExecStart={INSTALLED} ", f"ExecStart={HERE} ")
    (tmp_path / SERVICE.name).write_text(text.replace("man:vmcontroller(1)", "man:vmcontrol(1)"))
    proc = verify(systemd_analyze, tmp_path, SERVICE.name)
    assert "man vmcontrol(1)" in proc.stderr


@pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_the_unit_says_what_the_controller_relies_on(path):
    unit = parse_unit(path)
    u, s = "Unit", "Service"
    after = " ".join(unit[u]["After"]).split()
    assert "libvirtd.service" in after
    # At shutdown units stop in the reverse order of After=: the controller is gone
    # before libvirt-guests saves or shuts down the VM, so it recovers nothing then.
    assert "libvirt-guests.service" in after
    assert "libvirtd.service" in " ".join(unit[u]["Wants"]).split()
    assert int(one(unit, u, "StartLimitIntervalSec")) > 0
    assert int(one(unit, u, "StartLimitBurst")) >= 1
    assert one(unit, s, "Type") == "notify"
    assert one(unit, s, "NotifyAccess") == "main"
    watchdog = int(one(unit, s, "WatchdogSec"))
    assert 10 <= watchdog <= 300
    assert one(unit, s, "Restart") == "on-failure"
    assert one(unit, s, "RestartPreventExitStatus") == "2", "a bad config is not retried"
    assert one(unit, s, "NoNewPrivileges") == "yes"
    assert one(unit, s, "ProtectSystem") == "strict"
    assert one(unit, s, "PrivateTmp") == "yes"
    assert one(unit, s, "User") not in ("", "root")
    assert "libvirt" in one(unit, s, "SupplementaryGroups").split()

    # The state file is where the unit lets the controller write.
    instance = "%i" if "@" in path.name else None
    state_dir = f"{STATE_DIR}/%i" if instance else STATE_DIR
    assert one(unit, s, "StateDirectory") == state_dir[len("/var/lib/") :]
    assert one(unit, s, "ReadWritePaths") == state_dir
    env = dict(e.split("=", 1) for e in unit[s]["Environment"])
    assert env["VMCTL_STATE_PATH"] == f"{state_dir}/state.db"

    argv = shlex.split(one(unit, s, "ExecStart"))
    assert argv[0] == INSTALLED and argv[1] == "serve", "the Debian package's /usr/bin/vmcontroller"
    config = argv[argv.index("--config") + 1]
    assert config == (
        "/etc/exhibition-vm-controller/%i.yaml"
        if instance
        else "/etc/exhibition-vm-controller/config.yaml"
    )


def test_the_exec_start_command_line_is_one_the_cli_accepts(tmp_path):
    """ExecStart's arguments, with check-config for serve and a real file for the config."""
    argv = shlex.split(one(parse_unit(TEMPLATE), "Service", "ExecStart"))[1:]
    config = tmp_path / "eden.yaml"
    config.write_text(yaml.safe_dump({"vm_name": "eden"}))
    argv[argv.index("serve")] = "check-config"
    argv[argv.index("--config") + 1] = str(config)
    result = invoke(*argv, env={"VMCTL_STATE_PATH": f"{STATE_DIR}/eden/state.db"})
    assert result.exit_code == 0, shown(result)
    assert f"state_path: {STATE_DIR}/eden/state.db" in result.stdout


def test_watchdog_leaves_room_for_the_stale_limit_documented_in_the_unit():
    from vmcontroller.config import build_config
    from vmcontroller.monitor import MAX_SLEEP, longest_locked_operation
    from vmcontroller.notify import stale_limit

    text = " ".join(SERVICE.read_text().replace("#", " ").split())
    defaults = build_config({"vm_name": "eden"})
    assert f"({stale_limit(longest_locked_operation(defaults), MAX_SLEEP):g} s by default)" in text
    assert f"({longest_locked_operation(defaults):g} s by default)" in text


@pytest.mark.parametrize("path", [SERVICE, TEMPLATE], ids=["service", "template"])
def test_the_header_describes_installation_by_the_package(path):
    """The comments at the top tell the reader what the package does, not the old
    /opt + pip recipe, and that nothing starts before the VM is named."""
    header = path.read_text().split("[Unit]", 1)[0]
    assert "Debian package exhibition-vm-controller" in " ".join(header.replace("#", " ").split())
    for gone in ("/opt/", "pip ", "venv", "useradd"):
        assert gone not in header, gone
    assert re.search(r"systemctl enable --now exhibition-vm-controller\b", header)
    docs = " ".join(parse_unit(path)["Unit"]["Documentation"]).split()
    assert f"man:{MANPAGE.stem}({MANPAGE.suffix[1:]})" in docs
