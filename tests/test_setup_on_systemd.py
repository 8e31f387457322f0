"""scripts/setup-libvirt.sh on a PC booted with systemd, run by a user who may sudo.

A gallery PC or an office laptop is not the CI sandbox: libvirtd must come from
libvirt-daemon-system as a systemd service, enabled for the next boot, and the
person running the script is not root. A fresh Debian 12 booted with systemd
(tests/systemd_rig.py), with the host's network so that apt reaches the mirror,
plays that machine. Ubuntu uses the same package names; no Ubuntu mirror is
reachable here, so only Debian is run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from systemd_rig import REPO, Machine

pytestmark = pytest.mark.rig

CHECKOUT = "/srv/checkout"  # this repository, read-only, as a clone on the PC
SCRIPTS = f"{CHECKOUT}/scripts"
USER = "tech"


@pytest.fixture(scope="module")
def laptop() -> Iterator[Machine]:
    machine = Machine("laptop", binds=[(REPO, CHECKOUT)], private_network=False)
    machine.create()
    try:
        machine.boot()
        machine.sh(
            f"useradd --create-home --shell /bin/bash {USER}"
            f" && echo '{USER} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{USER}"
        )
        yield machine
    finally:
        machine.remove()


def setup_libvirt(machine: Machine):
    return machine.sh(
        f"cd /home/{USER} && sudo -u {USER} bash {SCRIPTS}/setup-libvirt.sh",
        check=False,
        timeout=900,
    )


def test_setup_libvirt_installs_enables_and_starts_the_systemd_service(laptop: Machine) -> None:
    first = setup_libvirt(laptop)
    assert first.returncode == 0, first.stderr
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("setup-libvirt: changed: installed "), first.stderr
    assert "libvirt-daemon-system" in last and f"added {USER} to the group libvirt" in last, last
    assert laptop.sh("systemctl is-enabled libvirtd.service").stdout.strip() == "enabled"
    assert laptop.sh("systemctl is-active libvirtd.service").stdout.strip() == "active"
    # A new login of the user has the group, and with it qemu:///system.
    laptop.sh(f"sudo -u {USER} virsh -c qemu:///system list --all")

    again = setup_libvirt(laptop)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines() == [
        "setup-libvirt: changed nothing: libvirtd answers on qemu:///system"
    ]


def test_setup_libvirt_starts_a_stopped_service_and_says_so(laptop: Machine) -> None:
    laptop.sh(
        "systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket"
    )
    out = setup_libvirt(laptop)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "setup-libvirt: changed: started libvirtd.service"
    assert laptop.sh("systemctl is-active libvirtd.service").stdout.strip() == "active"


def test_setup_display_makes_the_kiosk_session_start_at_boot_and_says_what_it_changed(
    laptop: Machine,
) -> None:
    """README's "The gallery screen" on a PC booted with systemd, run by a sudo user
    (after setup-libvirt, which made the group libvirt). No screen exists in the
    container, so what is shown is the set-up: packages, user, session, autologin,
    boot target; tests/test_display.py shows the launcher itself under Xvfb."""

    def setup_display():
        return laptop.sh(
            f"cd /home/{USER} && sudo -u {USER} bash {SCRIPTS}/setup-display",
            check=False,
            timeout=1200,
        )

    first = setup_display()
    assert first.returncode == 0, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("setup-display: changed: installed virt-viewer lightdm"), last
    assert "made user exhibition" in last and last.endswith("reboot to see the screen"), last
    groups = laptop.sh("id -nG exhibition").stdout.split()
    assert {"libvirt", "audio", "video"} <= set(groups), groups
    assert laptop.sh("systemctl get-default").stdout.strip() == "graphical.target"
    assert laptop.sh("systemctl is-enabled lightdm.service").stdout.strip() == "enabled"
    conf = laptop.sh("cat /etc/lightdm/lightdm.conf.d/50-exhibition-kiosk.conf").stdout
    assert "autologin-user=exhibition" in conf.splitlines(), conf
    session = laptop.sh("cat /usr/share/xsessions/exhibition-kiosk.desktop").stdout
    assert "Exec=vmcontroller-kiosk --session" in session.splitlines(), session
    assert laptop.sh("command -v vmcontroller-kiosk").stdout.strip() == (
        "/usr/local/bin/vmcontroller-kiosk"
    )
    laptop.sh("command -v virt-viewer matchbox-window-manager Xorg xset")

    again = setup_display()
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines()[-1] == "setup-display: changed nothing", again.stderr
