#!/usr/bin/env bash
# Install libvirt + QEMU from Debian/Ubuntu packages and make sure libvirtd
# answers on qemu:///system. Run it as root or as a user who may sudo.
# Idempotent: a second run changes nothing and never starts a second daemon.
# Its last line says what it changed.
#
# On a host booted with systemd (a Debian or Ubuntu PC) the distribution's
# libvirt-daemon-system package brings libvirtd.service, which is enabled and
# started; a user who is not root is added to the 'libvirt' group, which
# qemu:///system admits (effective at the next login). On a machine without
# systemd (containers, CI sandboxes) libvirtd is started in the foreground
# under `tini -s`, a subreaper, so that QEMU processes are reaped at once
# (otherwise every destroy/revert waits ~1.3 s for PID 1).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf 'setup-libvirt: %s\n' "$*" >&2; }
changed=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

have_systemd=0
if [ -d /run/systemd/system ]; then have_systemd=1; fi

# The same package names on Debian 12 and Ubuntu 22.04/24.04.
need_pkgs=()
for pkg in libvirt-clients qemu-system-x86 qemu-utils; do
    installed "$pkg" || need_pkgs+=("$pkg")
done
if [ "$have_systemd" -eq 1 ]; then
    installed libvirt-daemon-system || need_pkgs+=(libvirt-daemon-system)
else
    # Without systemd the daemon alone: libvirt-daemon-system's units and
    # maintainer scripts expect a running systemd.
    command -v libvirtd >/dev/null 2>&1 || need_pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu)
    command -v tini >/dev/null 2>&1 || need_pkgs+=(tini)
fi

apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -q
    # libvirt-daemon-driver-qemu is a package of its own only on newer releases;
    # where it is not, libvirt-daemon carries the QEMU driver.
    if ! apt_install "${need_pkgs[@]}"; then
        fallback=()
        for pkg in "${need_pkgs[@]}"; do
            [ "$pkg" = libvirt-daemon-driver-qemu ] || fallback+=("$pkg")
        done
        log "retrying without libvirt-daemon-driver-qemu"
        apt_install "${fallback[@]}"
    fi
    changed+=("installed ${need_pkgs[*]}")
fi

if [ "$have_systemd" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    user=$(id -un)
    if ! id -nG "$user" | tr ' ' '\n' | grep -qx libvirt && \
       ! getent group libvirt | cut -d: -f4 | tr ',' '\n' | grep -qx "$user"; then
        log "adding $user to the group libvirt (effective at the next login, or in 'newgrp libvirt')"
        $SUDO adduser --quiet "$user" libvirt
        changed+=("added $user to the group libvirt")
    fi
fi

answers() { timeout 10 $SUDO virsh -c qemu:///system list --all >/dev/null 2>&1; }

if [ "$have_systemd" -eq 1 ]; then
    if ! systemctl is-enabled --quiet libvirtd.service 2>/dev/null; then
        log "enabling libvirtd.service (it starts at every boot)"
        $SUDO systemctl enable libvirtd.service 2>/dev/null
        changed+=("enabled libvirtd.service")
    fi
    if ! systemctl is-active --quiet libvirtd.service; then
        log "starting libvirtd.service"
        $SUDO systemctl start libvirtd.service
        changed+=("started libvirtd.service")
    fi
elif ! answers; then
    # libvirtd parses its compiled-in default user before reading qemu.conf,
    # so the user must exist even though QEMU will run as root here.
    getent group kvm >/dev/null || $SUDO groupadd -r kvm
    getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || $SUDO useradd -r -g libvirt-qemu -G kvm libvirt-qemu
    conf=/etc/libvirt/qemu.conf
    marker="# exhibition-vm-controller: sandbox settings"
    if ! grep -qF "$marker" "$conf" 2>/dev/null; then
        log "writing sandbox settings to $conf"
        $SUDO tee -a "$conf" >/dev/null <<EOF
$marker
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
        changed+=("wrote sandbox settings to $conf")
    fi
    $SUDO mkdir -p /run/libvirt /var/log/libvirt /var/lib/libvirt/images
    if ! pgrep -x virtlogd >/dev/null; then
        $SUDO virtlogd -d
        changed+=("started virtlogd")
    fi
    if ! pgrep -x libvirtd >/dev/null; then
        log "starting libvirtd under tini"
        $SUDO setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd.out 2>&1 &
        changed+=("started libvirtd under tini (log: /var/log/libvirt/libvirtd.out)")
    fi
fi

summary() {
    if [ "${#changed[@]}" -eq 0 ]; then
        log "changed nothing: libvirtd answers on qemu:///system"
    else
        log "changed: $(printf '%s; ' "${changed[@]}" | sed 's/; $//')"
    fi
}
for _ in $(seq 1 100); do
    if answers; then
        summary
        exit 0
    fi
    sleep 0.2
done
if [ "$have_systemd" -eq 1 ]; then
    log "libvirtd did not answer within 20 s; see: journalctl -u libvirtd"
else
    log "libvirtd did not answer within 20 s; see /var/log/libvirt/libvirtd.out"
fi
exit 1
