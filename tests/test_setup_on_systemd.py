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

SCRIPTS = "/srv/scripts"
USER = "tech"


@pytest.fixture(scope="module")
def laptop() -> Iterator[Machine]:
    machine = Machine("laptop", binds=[(REPO / "scripts", SCRIPTS)], private_network=False)
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
