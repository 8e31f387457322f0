"""The Debian package scripts/build-deb makes: what it holds and declares, what lintian
says of it, and what its maintainer scripts do.

The package is not installed on this machine (it is shared); the tests read it with
dpkg-deb, run the code it ships from an extracted copy, and run its maintainer scripts
as shipped with every command they call replaced by a stub that only records its
arguments (PATH holds nothing else, so a command without a stub fails the script
rather than touching this machine). Installing it in a booted Debian is the systemd
rig's job.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vmcontroller import __version__
from vmcontroller.cli import main

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "exhibition-vm-controller"
USER = "exhibition-vm"
STATE_DIR = "/var/lib/exhibition-vm-controller"
CONFIG = "/etc/exhibition-vm-controller/config.yaml"
UNITS = ("exhibition-vm-controller.service", "exhibition-vm-controller@.service")
SITE = "usr/lib/python3/dist-packages"
# Debian's packages of the Python requirements, and the system the controller drives.
REQUIRED_DEPENDS = {
    "python3-flask",
    "python3-werkzeug",  # imported by the controller itself, not only through Flask
    "python3-waitress",
    "python3-flasgger",
    "python3-yaml",
    "python3-click",
    "python3-prometheus-client",  # /metrics (vmcontroller/metrics.py)
    "libvirt-daemon-system",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-utils",
    "adduser",
}


def setup_cfg_version() -> str:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser["metadata"]["version"]


def changelog_version() -> str:
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(rf"{PACKAGE} \(([^)]+)\) \S+; urgency=\w+$", first)
    assert match, first
    return match.group(1)


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def contents(deb: Path) -> dict[str, tuple[str, str]]:
    """Path (without the leading '.') -> (mode string, owner/group), from dpkg-deb -c."""
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        entries[name.split(" -> ")[0].removeprefix(".").rstrip("/") or "/"] = (mode, owner)
    return entries


@pytest.fixture(scope="module")
def tree(deb_package, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    subprocess.run(["dpkg-deb", "-x", str(deb_package), str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def control(deb_package, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "-e", str(deb_package), str(root)], check=True)
    return root


# --- version ----------------------------------------------------------------------------


def test_the_changelog_version_is_setup_cfgs():
    """A native package: its version is the project's, without a Debian revision."""
    assert changelog_version() == setup_cfg_version() == __version__
    assert (REPO / "debian" / "source" / "format").read_text().strip() == "3.0 (native)"


def test_the_package_is_named_and_versioned_as_the_project(deb_package):
    assert deb_package.name == f"{PACKAGE}_{__version__}_all.deb"
    assert deb_field(deb_package, "Package") == PACKAGE
    assert deb_field(deb_package, "Version") == __version__
    assert deb_field(deb_package, "Architecture") == "all"


def test_the_build_leaves_nothing_in_the_checkout(deb_package):
    """scripts/build-deb builds in a temporary copy: none of what dpkg-buildpackage and
    pybuild write next to debian/ appears in the repository."""
    products = [
        "debian/exhibition-vm-controller",
        "debian/.debhelper",
        "debian/files",
        "debian/debhelper-build-stamp",
        "debian/exhibition-vm-controller.substvars",
        ".pybuild",
        "build",
    ]
    assert [p for p in products if (REPO / p).exists()] == []
    assert not list(REPO.parent.glob(f"{PACKAGE}_*"))


# --- contents ---------------------------------------------------------------------------


def test_the_controller_is_in_the_system_python_and_on_path(deb_package):
    entries = contents(deb_package)
    assert entries["/usr/bin/vmcontroller"] == ("-rwxr-xr-x", "root/root")
    modules = sorted(p.name for p in (REPO / "vmcontroller").glob("*.py"))
    for module in modules:
        assert entries[f"/{SITE}/vmcontroller/{module}"] == ("-rw-r--r--", "root/root"), module
    # Package data: the offline docs need their templates and ReDoc's bundle, the
    # dashboard its page, script and style sheet.
    for data in (
        "templates/redoc.html",
        "templates/offline_csp.html",
        "templates/flasgger/head.html",
        "static/redoc/redoc.standalone.js",
        "static/ui/index.html",
        "static/ui/dashboard.js",
        "static/ui/dashboard.css",
    ):
        assert f"/{SITE}/vmcontroller/{data}" in entries, data
    # Only the package: no tests, benchmarks or scripts of the repository.
    stray = [p for p in entries if re.search(r"/(tests|bench|scripts)(/|$)|/opt(/|$)", p)]
    assert stray == []


def test_the_units_config_and_docs_are_where_debian_puts_them(deb_package, tree):
    entries = contents(deb_package)
    for unit in UNITS:
        path = f"/lib/systemd/system/{unit}"
        assert entries[path] == ("-rw-r--r--", "root/root"), unit
        assert (tree / path[1:]).read_text() == (REPO / "etc" / "systemd" / unit).read_text()
    # The configuration holds no secrets (tokens live in files of their own).
    assert entries[CONFIG] == ("-rw-r--r--", "root/root")
    assert (tree / CONFIG[1:]).read_text() == (REPO / "etc" / "config.example.yaml").read_text()
    assert "/usr/share/man/man1/vmcontroller.1.gz" in entries
    assert "/usr/share/doc/exhibition-vm-controller/copyright" in entries
    # The monitoring examples (README: Metrics), for the museum's Prometheus and Grafana.
    examples = "/usr/share/doc/exhibition-vm-controller/examples"
    # And the opening hours of a museum (README: Opening hours).
    names = ("alerts.yml", "alerts.test.yml", "exhibition-vm-controller.json")
    for name in (*names, "museum-schedule.yaml"):
        assert f"{examples}/{name}" in entries or f"{examples}/{name}.gz" in entries, name
    # The state directory is the postinst's to make (owned by the user, who does not
    # exist when dpkg unpacks): nothing of it in the archive.
    assert not [p for p in entries if p.startswith("/var")]


PROFILES = "/etc/exhibition-vm-controller/vm-profiles"
PROFILE_FILES = sorted(p.name for p in (REPO / "etc" / "vm-profiles").iterdir())


def test_the_conffiles_are_the_configuration_and_the_vm_profiles(control):
    """Both are the admin's to adjust; dpkg keeps their changes over an upgrade."""
    assert sorted((control / "conffiles").read_text().split()) == sorted(
        [CONFIG, *(f"{PROFILES}/{name}" for name in PROFILE_FILES)]
    )


def test_the_vm_import_templates_are_installed_as_in_the_checkout(deb_package, tree):
    entries = contents(deb_package)
    assert "winxp.xml" in PROFILE_FILES and "README" in PROFILE_FILES
    for name in PROFILE_FILES:
        path = f"{PROFILES}/{name}"
        assert entries[path] == ("-rw-r--r--", "root/root"), path
        assert (tree / path[1:]).read_text() == (REPO / "etc" / "vm-profiles" / name).read_text()
    # Where the installed `vm import` looks first.
    from vmcontroller.vmimport import SYSTEM_TEMPLATES

    assert str(SYSTEM_TEMPLATES) == PROFILES


def test_the_gallery_screens_launcher_session_and_setup_are_shipped(deb_package, tree):
    """vmcontroller-kiosk on PATH for the kiosk session, the session itself where display
    managers find it, and the set-up script with the files it installs (README: The
    gallery screen); the viewer and the session's programs are only suggested."""
    entries = contents(deb_package)
    shipped = {
        "/usr/bin/vmcontroller-kiosk": REPO / "scripts" / "vmcontroller-kiosk",
        "/usr/sbin/vmcontroller-setup-display": REPO / "scripts" / "setup-display",
        "/usr/share/xsessions/exhibition-kiosk.desktop": REPO
        / "etc/display/exhibition-kiosk.desktop",
    }
    for name in (
        "exhibition-kiosk.desktop",
        "vmcontroller-kiosk.desktop",
        "50-exhibition-kiosk.conf",
        "packages",
    ):
        shipped[f"/usr/share/{PACKAGE}/display/{name}"] = REPO / "etc" / "display" / name
    for path, source in shipped.items():
        mode = "-rwxr-xr-x" if "bin/" in path else "-rw-r--r--"
        assert entries[path] == (mode, "root/root"), path
        assert (tree / path[1:]).read_bytes() == source.read_bytes(), path
    session = (tree / "usr/share/xsessions/exhibition-kiosk.desktop").read_text()
    assert "Exec=vmcontroller-kiosk --session" in session.splitlines()
    suggests = {d.strip() for d in deb_field(deb_package, "Suggests").split(",")}
    assert suggests >= {"virt-viewer", "lightdm", "matchbox-window-manager"}, suggests


def test_the_package_depends_on_debians_python_libraries_and_libvirt(deb_package):
    depends = [d.strip() for d in deb_field(deb_package, "Depends").split(",")]
    names = {re.split(r"[\s(:]", d, maxsplit=1)[0] for d in depends}
    assert names >= REQUIRED_DEPENDS, REQUIRED_DEPENDS - names
    assert any(d.startswith("python3") and ":any" in d for d in depends), depends
    # Debian 12 ships python3-flasgger 0.9.5: no pin may rule it out.
    flasgger = [d for d in depends if d.startswith("python3-flasgger")]
    assert flasgger == ["python3-flasgger"], flasgger


def test_the_units_start_the_installed_command(tree):
    script = tree / "usr" / "bin" / "vmcontroller"
    assert script.read_text().startswith("#!/usr/bin/python3\n")
    # The script setuptools writes finds `main` through the installed metadata.
    assert "'console_scripts', 'vmcontroller'" in script.read_text()
    (entry_points,) = (tree / SITE).glob("exhibition_vm_controller-*/entry_points.txt")
    assert "vmcontroller = vmcontroller.cli:main" in entry_points.read_text().splitlines()
    for unit in UNITS:
        exec_start = [
            line.split("=", 1)[1]
            for line in (tree / "lib/systemd/system" / unit).read_text().splitlines()
            if line.startswith("ExecStart=")
        ]
        assert len(exec_start) == 1, unit
        argv = shlex.split(exec_start[0])
        assert argv[0] == "/usr/bin/vmcontroller" and argv[1] == "serve", unit
        assert (tree / argv[0][1:]).is_file()


def test_the_shipped_command_accepts_the_shipped_configuration(tree, tmp_path):
    """The code and the conffile as extracted from the package, nothing from the checkout:
    `vmcontroller check-config` as the unit's user would run it after naming the VM."""
    site = tree / SITE
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")},
        "PYTHONPATH": str(site),
        "VMCTL_STATE_PATH": str(tmp_path / "state.db"),
    }
    where = subprocess.run(
        [sys.executable, "-c", "import vmcontroller; print(vmcontroller.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.strip() == str(site / "vmcontroller" / "__init__.py")
    run = [sys.executable, str(tree / "usr" / "bin" / "vmcontroller")]
    version = subprocess.run(
        [*run, "--version"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert version.stdout.strip() == f"vmcontroller, version {__version__}", version.stderr
    check = subprocess.run(
        [*run, "check-config", "--config", str(tree / CONFIG[1:])],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert "vm_name: your-vm-name" in check.stdout


def test_the_manual_page_lists_every_command():
    page = (REPO / "debian" / "vmcontroller.1").read_text()
    section = page.split(".SH COMMANDS", 1)[1].split(".SH ", 1)[0]
    listed = re.findall(r"^\.TP\n\.B (\S+)$", section, flags=re.MULTILINE)
    assert listed == list(main.commands)


# --- lintian ----------------------------------------------------------------------------


def test_lintian_reports_no_error(deb_package):
    argv = ["lintian", str(deb_package)]
    if os.geteuid() == 0:
        argv.insert(1, "--allow-root")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    tags = proc.stdout.splitlines()
    assert not [t for t in tags if t.startswith("E:")], proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- maintainer scripts -----------------------------------------------------------------

# Every command the maintainer scripts may call; each stub records its arguments.
STUBBED = [
    "adduser",
    "deluser",
    "delgroup",
    "getent",
    "dpkg-statoverride",
    "install",
    "rm",
    "find",
    "systemctl",
    "deb-systemd-helper",
    "deb-systemd-invoke",
    "py3compile",
    "pypy3compile",
    "py3clean",
]


def run_maintscript(control: Path, tmp_path: Path, script: str, *args: str, systemd: bool):
    """Run one maintainer script as shipped, with stubs for every command it calls.

    The one change to its text: /run/systemd/system (how the scripts tell a host booted
    with systemd) becomes a directory of the test, present or not as `systemd` says."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    for name in STUBBED:
        stub = stubs / name
        # deb-systemd-helper: the unit is neither known nor enabled (a first install).
        failing = "debian-installed|was-enabled" if name == "deb-systemd-helper" else "--list"
        stub.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "{name} $*" >> "{log}"\n'
            f'case "$1" in {failing}) exit 1;; esac\n'
            "exit 0\n"
        )
        stub.chmod(0o755)
    booted = tmp_path / "run-systemd-system"
    if systemd:
        booted.mkdir(exist_ok=True)
    text = (control / script).read_text().replace("/run/systemd/system", str(booted))
    copy = tmp_path / script
    copy.write_text(text)
    env = {"PATH": str(stubs), "LC_ALL": "C"}
    proc = subprocess.run(
        ["/bin/sh", str(copy), *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


def starts(calls: list[str]) -> list[str]:
    """Calls that would start, restart or enable a unit."""
    return [
        c
        for c in calls
        if c.split()[0] in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper")
        and re.search(r"\s(start|restart|try-restart|reload-or-restart|enable)\s", c + " ")
    ]


@pytest.mark.parametrize("systemd", [True, False], ids=["systemd", "no systemd"])
def test_a_first_install_makes_the_user_and_state_dir_and_starts_nothing(
    control, tmp_path, systemd
):
    calls = run_maintscript(control, tmp_path, "postinst", "configure", "", systemd=systemd)
    assert (
        "adduser --system --group --quiet --home /var/lib/exhibition-vm-controller "
        "--no-create-home --shell /usr/sbin/nologin exhibition-vm"
    ) in calls
    assert f"adduser --quiet {USER} libvirt" in calls
    assert f"install -d -o {USER} -g {USER} -m 0750 {STATE_DIR}" in calls
    assert starts(calls) == []


def test_an_upgrade_restarts_only_running_controllers(control, tmp_path):
    calls = run_maintscript(control, tmp_path, "postinst", "configure", "1.2.0", systemd=True)
    assert starts(calls) == [
        "deb-systemd-invoke try-restart exhibition-vm-controller.service",
        "deb-systemd-invoke try-restart exhibition-vm-controller@*.service",
    ]
    # Nothing stops the controller before the upgrade: there is no preinst, and the
    # prerm of the version being replaced leaves it running.
    assert not (control / "preinst").exists()
    assert run_maintscript(control, tmp_path, "prerm", "upgrade", "1.3.1", systemd=True) == [
        "py3clean -p exhibition-vm-controller"
    ]


def test_removal_stops_the_controller_and_every_instance(control, tmp_path):
    calls = run_maintscript(control, tmp_path, "prerm", "remove", systemd=True)
    assert (
        "deb-systemd-invoke stop exhibition-vm-controller.service "
        "exhibition-vm-controller@*.service"
    ) in calls


def test_purge_removes_the_state_and_keeps_the_user(control, tmp_path):
    calls = run_maintscript(control, tmp_path, "postrm", "purge", systemd=True)
    assert f"rm -rf {STATE_DIR}" in calls
    assert "deb-systemd-helper purge exhibition-vm-controller.service" in calls
    assert any(c.startswith("find /etc/systemd/system ") and "-delete" in c for c in calls)
    assert not [c for c in calls if c.split()[0] in ("deluser", "delgroup")]
    # A plain remove keeps the state: a reinstall finds maintenance mode and history.
    removed = run_maintscript(control, tmp_path, "postrm", "remove", systemd=True)
    assert not [c for c in removed if c.startswith(("rm ", "find "))]
