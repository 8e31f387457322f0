"""The Debian package as a museum runs it: installed offline, under a real systemd.

One exhibition PC (tests/systemd_rig.py: Debian 12 booted with systemd in
systemd-nspawn, no network) serves the whole module. The fixture installs the
package from a USB bundle with the README's own commands, creates a VM with the
project's heartbeat guest and starts the service as the README says; the tests
then take it through what happens in a gallery, each starting from a healthy
exhibit and leaving one behind.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_env import BEAT, build_guest
from libvirt_env import wait_until
from systemd_rig import GUEST, REPO, USB, Machine, offline_bundle

pytestmark = pytest.mark.rig

UNIT = "exhibition-vm-controller"
CONFIG = "/etc/exhibition-vm-controller/config.yaml"
VM = "artwork"
PORT = 8000
IMAGES = "/var/lib/libvirt/images"
SCRIPTS = "/srv/scripts"  # the repository's scripts/, read-only

# The README's production steps, run here word for word (test_readme_gives_these_steps).
INSTALL = [
    f"echo 'deb [trusted=yes] file:{USB} ./' | sudo tee /etc/apt/sources.list.d/exhibition-usb.list",
    "sudo apt update",
    f"sudo apt install {USB}/exhibition-vm-controller_*.deb",
]
CONFIGURE = [
    f"sudo sed -i 's/^vm_name: .*/vm_name: {VM}/' {CONFIG}",
    f"sudo -u exhibition-vm vmcontroller check-config --config {CONFIG}",
    f"sudo systemctl enable --now {UNIT}",
]
TOKENS = [
    "sudo install -d -m 0750 -g exhibition-vm /etc/exhibition-vm-controller",
    "python3 -c 'import secrets; print(secrets.token_hex(24))' "
    "| sudo tee /etc/exhibition-vm-controller/api_token >/dev/null",
    "python3 -c 'import secrets; print(secrets.token_hex(24))' "
    "| sudo tee /etc/exhibition-vm-controller/guest_token >/dev/null",
    "sudo chgrp exhibition-vm /etc/exhibition-vm-controller/api_token "
    "/etc/exhibition-vm-controller/guest_token",
    "sudo chmod 0640 /etc/exhibition-vm-controller/api_token /etc/exhibition-vm-controller/guest_token",
]
TOKEN_CONFIG = [
    "api_token_file: /etc/exhibition-vm-controller/api_token",
    "guest_token_file: /etc/exhibition-vm-controller/guest_token",
]
CREDENTIALS = [
    f"sudo mkdir -p /etc/systemd/system/{UNIT}.service.d",
    "printf '[Service]\\nLoadCredential=api_token:/etc/exhibition-vm-controller/api_token"
    "\\nLoadCredential=guest_token:/etc/exhibition-vm-controller/guest_token\\n'"
    f" | sudo tee /etc/systemd/system/{UNIT}.service.d/tokens.conf >/dev/null",
    "sudo systemctl daemon-reload",
]
CREDENTIALS_CONFIG = [
    f"api_token_file: /run/credentials/{UNIT}.service/api_token",
    f"guest_token_file: /run/credentials/{UNIT}.service/guest_token",
]
# What only a container needs (../shared/notes/systemd.md): nspawn mounts the cgroup v1
# controllers read-only. And the README's advice for guests that ignore ACPI's power
# button (as this guest does): libvirt-guests waits that long for them at power-off.
CONTAINER_ONLY = "echo 'cgroup_controllers = [ ]' >> /etc/libvirt/qemu.conf"
GUESTS_AT_SHUTDOWN = "SHUTDOWN_TIMEOUT=30"
# The README's promise: after power-on, the artwork heartbeats again within this
# many seconds of the operating system starting (measured here: about 4 s).
BACK_AFTER_BOOT = 120
MARK = "rig: power-off from here"


def run_all(pc: Machine, steps: list[str], timeout: float = 600) -> None:
    for step in steps:
        pc.sh(step, timeout=timeout, env={"DEBIAN_FRONTEND": "noninteractive"})


# ---------------------------------------------------------------- the exhibition PC


@pytest.fixture(scope="module")
def pc(deb_package: Path) -> Iterator[Machine]:
    machine = Machine("pc").create()
    try:
        bundle = offline_bundle(deb_package, machine.home / "usb")
        machine.binds += [(bundle, USB), (build_guest().path, GUEST), (REPO / "scripts", SCRIPTS)]
        machine.boot()
        run_all(machine, [step.replace("apt install", "apt install -y") for step in INSTALL])
        machine.sh(
            f"{CONTAINER_ONLY} && echo {GUESTS_AT_SHUTDOWN} >> /etc/default/libvirt-guests"
            " && systemctl restart libvirtd"
        )
        make_vm(machine, VM, PORT)
        run_all(machine, CONFIGURE)
        wait_healthy(machine, PORT)
        yield machine
    finally:
        # The controllers, then the guests, so that libvirt-guests has none to wait for
        # at power-off (a controller still running would start its VM again).
        machine.sh(
            f"systemctl stop '{UNIT}*'; for vm in $(virsh -c qemu:///system list --name); do"
            " virsh -c qemu:///system destroy --domain $vm; done",
            check=False,
        )
        machine.remove()


def make_vm(pc: Machine, name: str, port: int) -> None:
    """The heartbeat guest as an exhibit: running, heartbeating to PORT, with 'ready' taken
    (scripts/create-demo-vm.sh, run inside)."""
    guest = f"{IMAGES}/exhibition-vm-controller-guest"
    pc.sh(f"mkdir -p {guest} && cp {GUEST}/* {guest}/")
    pc.sh(f"bash {SCRIPTS}/create-demo-vm.sh {name} {port} {guest}", timeout=300)


# ---------------------------------------------------------------- reading it


def api(pc: Machine, path: str, port: int = PORT, token: str = "", method: str = "GET"):
    """(status code, parsed JSON or text) of a request made inside the PC."""
    header = f"-H 'Authorization: Bearer {token}'" if token else ""
    out = pc.sh(
        f"curl -s -m 30 -X {method} {header} -w '\\n%{{http_code}}' "
        f"http://127.0.0.1:{port}/api/v1/{path}",
        check=False,
    ).stdout
    body, _, code = out.rpartition("\n")
    try:
        return int(code or 0), json.loads(body)
    except ValueError:
        return int(code or 0), body


def healthy(pc: Machine, port: int = PORT) -> bool:
    code, body = api(pc, "status", port)
    return code == 200 and body["vm_is_running"] and body["heartbeat"]["is_healthy"]


def wait_healthy(pc: Machine, port: int = PORT, timeout: float = 180) -> None:
    wait_until(lambda: healthy(pc, port), timeout, message=f"a healthy exhibit on :{port}")


def history(pc: Machine, port: int = PORT) -> list[dict]:
    code, body = api(pc, "events?limit=200", port)
    assert code == 200, body
    return body["events"]


def qemu_pid(pc: Machine, vm: str = VM) -> int:
    return int(pc.sh(f"cat /run/libvirt/qemu/{vm}.pid").stdout)


def beats(pc: Machine, vm: str = VM) -> int:
    """How many heartbeats the guest has reported on its console so far."""
    console = pc.path(f"{IMAGES}/{vm}.console.log")
    text = console.read_text(errors="replace") if console.exists() else ""
    return sum(1 for m in BEAT.finditer(text) if m.group(3) == "ok")


def service(pc: Machine, unit: str = UNIT) -> dict[str, str]:
    return pc.unit(unit, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText", "Result")


def restart(pc: Machine, unit: str = UNIT) -> None:
    """``systemctl restart``, blocking until READY. systemd counts every start against
    StartLimitBurst (5 in 10 minutes), by hand too, and this module starts the unit more
    often than that: reset-failed clears the count first, as the README tells admins."""
    pc.sh(f"systemctl reset-failed {unit}; systemctl restart {unit}", timeout=330)


def last_id(pc: Machine, port: int = PORT) -> int:
    events = history(pc, port)
    return max((e["id"] for e in events), default=0)


# ---------------------------------------------------------------- the tests


def test_readme_gives_these_steps() -> None:
    """The rig runs the README's production steps; they must stay the same text."""
    readme = (REPO / "README.rst").read_text()
    steps = INSTALL + CONFIGURE + TOKENS + TOKEN_CONFIG + CREDENTIALS + CREDENTIALS_CONFIG
    for step in steps + [GUESTS_AT_SHUTDOWN]:
        assert step in readme, step


def test_the_package_installs_offline_over_debians_own_libraries(pc: Machine) -> None:
    assert pc.sh("ip -o link | grep -v ' lo:'", check=False).stdout == "", "the PC has a network"
    assert pc.sh("command -v vmcontroller").stdout.strip() == "/usr/bin/vmcontroller"
    owners = pc.sh(
        "dpkg -S /usr/lib/python3/dist-packages/flask /usr/lib/python3/dist-packages/flasgger"
    ).stdout
    assert "python3-flask:" in owners and "python3-flasgger:" in owners, owners
    versions = pc.sh("dpkg-query -W python3-flasgger python3-flask python3-waitress").stdout
    assert re.search(r"python3-flasgger\s+0\.9\.5", versions), versions
    assert "libvirt" in pc.sh("id -nG exhibition-vm").stdout.split()
    assert pc.sh("stat -c '%U %a' /var/lib/exhibition-vm-controller").stdout.split() == [
        "exhibition-vm",
        "750",
    ]
    assert pc.unit("libvirtd", "ActiveState")["ActiveState"] == "active"
    assert pc.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    # The docs pages over Debian's flasgger, which ships its own build of Swagger UI:
    # each page and every script and style sheet it loads.
    base = f"http://127.0.0.1:{PORT}"
    for page in ("/docs", "/redoc", "/openapi.json"):
        html = pc.sh(f"curl -sf {base}{page}").stdout
        for asset in re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html):
            code = pc.sh(f"curl -s -o /dev/null -w '%{{http_code}}' {base}{asset}").stdout
            assert code == "200", (page, asset, code)
        assert page == "/openapi.json" or re.search(r'src="/[^"]+\.js"', html), (page, html[:500])


def test_ready_is_reported_only_once_the_api_answers(pc: Machine) -> None:
    """``systemctl restart`` returns when the unit is READY; the API must answer by then."""
    before = service(pc)["MainPID"]
    restart(pc)
    code, body = api(pc, "status")
    state = service(pc)
    assert code == 200, body
    assert state["ActiveState"] == "active" and state["MainPID"] != before
    assert state["StatusText"], state
    wait_healthy(pc)


def test_a_frozen_controller_is_restarted_by_the_watchdog_and_the_guest_runs_on(
    pc: Machine,
) -> None:
    wait_healthy(pc)
    before = service(pc)
    qemu = qemu_pid(pc)
    since = last_id(pc)
    pc.sh(f"kill -STOP {before['MainPID']}")

    def restarted() -> bool:
        now = service(pc)
        return now["MainPID"] not in ("0", before["MainPID"]) and now["ActiveState"] == "active"

    wait_until(restarted, 120, message="systemd's watchdog to restart the controller")
    after = service(pc)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    journal = pc.sh(f"journalctl -u {UNIT} --since '-3min' --no-pager").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    wait_healthy(pc)
    assert qemu_pid(pc) == qemu, "the guest was restarted"
    new = [e for e in history(pc) if e["id"] > since]
    assert [e["action"] for e in new if e["action"] in ("revert", "start")] == [], new
    assert any(e["action"] == "adopt" for e in new), new


def test_systemctl_restart_leaves_a_healthy_guest_alone(pc: Machine) -> None:
    wait_healthy(pc)
    qemu = qemu_pid(pc)
    since = last_id(pc)
    restart(pc)
    wait_healthy(pc)
    assert qemu_pid(pc) == qemu
    new = [e for e in history(pc) if e["id"] > since]
    assert [e["action"] for e in new] == ["adopt"], new


def test_stop_then_a_libvirtd_restart_then_start_recovers(pc: Machine) -> None:
    wait_healthy(pc)
    pc.sh(f"systemctl stop {UNIT}", timeout=60)
    pc.sh("systemctl restart libvirtd", timeout=60)
    pc.sh(f"systemctl reset-failed {UNIT}; systemctl start {UNIT}", timeout=330)
    wait_healthy(pc)
    count = beats(pc)
    wait_until(lambda: beats(pc) >= count + 3, 30, message="heartbeats going on")


@pytest.mark.parametrize("how", ["group-readable files", "systemd credentials"])
def test_the_readme_token_recipes_leave_a_working_service(pc: Machine, how: str) -> None:
    wait_healthy(pc)
    # The guest here sends no token: keep it from being reverted while tokens are on.
    code, body = api(pc, "revert/disable", method="POST")
    assert code == 200, body
    saved = pc.sh(f"cat {CONFIG}").stdout
    try:
        run_all(pc, TOKENS)
        if how == "systemd credentials":
            pc.sh(
                "chmod 0600 /etc/exhibition-vm-controller/*_token && chgrp root /etc/exhibition-vm-controller/*_token"
            )
            run_all(pc, CREDENTIALS)
            lines = CREDENTIALS_CONFIG
        else:
            run_all(pc, [f"sudo -u exhibition-vm vmcontroller check-config --config {CONFIG}"])
            lines = TOKEN_CONFIG
        pc.sh(f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} >> {CONFIG}")
        restart(pc)
        assert service(pc)["ActiveState"] == "active"
        staff = pc.sh("cat /etc/exhibition-vm-controller/api_token").stdout.strip()
        guest = pc.sh("cat /etc/exhibition-vm-controller/guest_token").stdout.strip()
        assert api(pc, "status")[0] == 401
        assert api(pc, "status", token=staff)[0] == 200
        assert api(pc, "heartbeat", token=guest)[0] == 200
        assert api(pc, "heartbeat")[0] == 401
        code, body = api(pc, "revert/enable", method="POST", token=staff)
        assert code == 200, body
    finally:
        pc.path(CONFIG).write_text(saved)
        pc.sh(
            f"rm -rf /etc/systemd/system/{UNIT}.service.d /etc/exhibition-vm-controller/*_token"
            " && systemctl daemon-reload"
        )
        restart(pc)
        api(pc, "revert/enable", method="POST")
    wait_healthy(pc)


def test_an_upgrade_restarts_the_controller_without_reverting_the_artwork(pc: Machine) -> None:
    wait_healthy(pc)
    before = service(pc)["MainPID"]
    qemu = qemu_pid(pc)
    since = last_id(pc)
    pc.sh(
        f"apt-get install -y --reinstall {USB}/exhibition-vm-controller_*.deb",
        timeout=300,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    wait_healthy(pc)
    assert service(pc)["MainPID"] != before
    assert qemu_pid(pc) == qemu
    assert [e["action"] for e in history(pc) if e["id"] > since] == ["adopt"]


def test_the_controller_stops_before_libvirt_guests_at_shutdown_and_comes_back_at_boot(
    pc: Machine,
) -> None:
    wait_healthy(pc)
    since = last_id(pc)
    pc.sh(f"echo {MARK} | systemd-cat -t vmctl-rig")
    status = pc.poweroff()
    assert status == 0, pc.log()
    lines = _journal(pc.root / "var" / "log" / "journal")
    lines = lines[max(i for i, line in enumerate(lines) if MARK in line) :]
    stopped = _first(lines, f"Stopped {UNIT}.service")
    guests = _first(lines, "Stopping libvirt-guests.service")
    assert stopped is not None and guests is not None, "\n".join(lines[-80:])
    assert stopped < guests, "the controller still ran while libvirt-guests stopped the VM"
    back_by_boot(pc, pc.boot)
    new = [e for e in history(pc) if e["id"] > since]
    automatic = [e for e in new if e["trigger"] not in ("startup", "api")]
    assert automatic == [], f"a recovery fired at shutdown or boot: {new}"


def test_a_reboot_brings_libvirtd_the_vm_and_the_controller_back(pc: Machine) -> None:
    wait_healthy(pc)
    back_by_boot(pc, pc.reboot)
    assert pc.unit("libvirtd", "ActiveState")["ActiveState"] == "active"


def test_two_instances_of_the_template_watch_two_vms_apart(pc: Machine) -> None:
    for name, port in (("eden", 8001), ("lumen", 8002)):
        make_vm(pc, name, port)
        pc.sh(
            f"sed -e 's/^vm_name: .*/vm_name: {name}/' -e 's/^api_port: .*/api_port: {port}/' "
            f"{CONFIG} > /etc/exhibition-vm-controller/{name}.yaml"
        )
        pc.sh(f"systemctl enable --now {UNIT}@{name}", timeout=330)
    for port in (8001, 8002):
        wait_healthy(pc, port)
    for name in ("eden", "lumen"):
        assert pc.path(f"/var/lib/exhibition-vm-controller/{name}/state.db").exists()
    lumen_since = last_id(pc, 8002)
    eden_since = last_id(pc, 8001)
    pc.sh("virsh -c qemu:///system destroy --domain eden")

    def eden_recovered() -> bool:
        return any(
            e["action"] == "revert" and e["outcome"] == "succeeded"
            for e in history(pc, 8001)
            if e["id"] > eden_since
        )

    wait_until(eden_recovered, 120, message="eden's controller to revert eden")
    wait_healthy(pc, 8001)
    assert [e for e in history(pc, 8002) if e["id"] > lumen_since] == []
    assert healthy(pc, 8002)


def back_by_boot(pc: Machine, boot) -> None:
    """Boot (or reboot) the PC and wait, within the README's bound from the moment the
    operating system starts, for the guest to heartbeat again to a healthy controller."""
    boot()
    started = pc.started_at
    count = beats(pc)

    def back() -> bool:
        return beats(pc) > count and healthy(pc)

    wait_until(
        back, BACK_AFTER_BOOT - (time.monotonic() - started), message="the exhibit after boot"
    )
    print(
        f"operating system start to a heartbeat the controller took: {time.monotonic() - started:.1f} s"
    )


def test_a_configuration_the_service_cannot_read_stops_it_with_one_line_and_no_restarts(
    pc: Machine,
) -> None:
    """The failure the issue saw under systemd: a config unreadable to the service's
    user was a traceback, then restarts until the start limit. Now it is one line,
    exit status 2, which the unit does not restart."""
    wait_healthy(pc)
    pc.sh(f"systemctl stop {UNIT} && chmod 0600 {CONFIG} && systemctl reset-failed {UNIT}")
    try:
        pc.sh(f"systemctl start {UNIT}", check=False, timeout=120)
        wait_until(lambda: service(pc)["ActiveState"] == "failed", 60, message="the unit to fail")
        state = service(pc)
        assert state["Result"] == "exit-code" and state["NRestarts"] == "0", state
        assert pc.unit(UNIT, "ExecMainStatus")["ExecMainStatus"] == "2"
        journal = pc.sh(f"journalctl -u {UNIT} --since '-1min' --no-pager -o cat").stdout
        assert "configuration error: cannot read config file" in journal, journal
        assert "Traceback" not in journal, journal
    finally:
        pc.sh(
            f"chmod 0644 {CONFIG} && systemctl reset-failed {UNIT}; systemctl start {UNIT}",
            timeout=330,
        )
    wait_healthy(pc)


def _journal(directory: Path) -> list[str]:
    out = subprocess.run(
        ["journalctl", "-D", str(directory), "-o", "short-monotonic", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return out.splitlines()


def _first(lines: list[str], text: str) -> float | None:
    for line in lines:
        if text in line:
            return float(line.split("]", 1)[0].strip("[ "))
    return None


def test_the_gallery_screen_is_set_up_from_the_usb_stick(pc: Machine) -> None:
    """README's "The gallery screen" on the PC without internet: the packaged set-up
    script takes the display's packages from the stick that offline-bundle made."""
    out = pc.sh(
        "sudo vmcontroller-setup-display",
        check=False,
        timeout=900,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("setup-display: changed: installed virt-viewer"), last
    pc.sh("command -v virt-viewer matchbox-window-manager Xorg vmcontroller-kiosk")
    assert {"libvirt", "audio", "video"} <= set(pc.sh("id -nG exhibition").stdout.split())
    assert pc.sh("systemctl get-default").stdout.strip() == "graphical.target"
    wait_healthy(pc)


def test_the_hardening_is_in_force(pc: Machine) -> None:
    """The unit's sandbox as systemd applies it to the running controller: its view of
    the file system is read-only but for its state directory, and systemd's own
    assessment stays at its best grade."""
    wait_healthy(pc)
    pid = service(pc)["MainPID"]
    inside = pc.sh(
        f"nsenter --target {pid} --mount sh -c 'touch /etc/probe /usr/probe 2>&1;"
        " touch /var/lib/exhibition-vm-controller/probe && rm /var/lib/exhibition-vm-controller/probe"
        " && echo state-writable'",
        check=False,
    )
    assert inside.stdout.count("Read-only file system") == 2, inside
    assert "state-writable" in inside.stdout, inside
    report = pc.sh(f"systemd-analyze security {UNIT} --no-pager", check=False).stdout
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", report)
    assert level, report[-1500:]
    print(f"systemd-analyze security: {level.group(1)} {level.group(2)}")
    assert level.group(2) == "OK", report
