#!/usr/bin/env bash
# Install libvirt + QEMU from Debian/Ubuntu packages and make sure libvirtd
# answers on qemu:///system. Idempotent: a second run changes nothing and
# never starts a second daemon.
#
# On a host booted with systemd the distribution's units are used. On a
# machine without systemd (containers, CI sandboxes) libvirtd is started in
# the foreground under `tini -s`, a subreaper, so that QEMU processes are
# reaped at once (otherwise every destroy/revert waits ~1.3 s for PID 1).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf 'setup-libvirt: %s\n' "$*" >&2; }

need_pkgs=()
command -v virsh >/dev/null 2>&1 || need_pkgs+=(libvirt-clients)
command -v libvirtd >/dev/null 2>&1 || need_pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need_pkgs+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need_pkgs+=(qemu-utils)
have_systemd=0
if [ -d /run/systemd/system ]; then have_systemd=1; fi
if [ "$have_systemd" -eq 0 ] && ! command -v tini >/dev/null 2>&1; then need_pkgs+=(tini); fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -q
    # libvirt-daemon-driver-qemu only exists as a separate package on newer
    # releases; fall back to the umbrella package where it does not.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${need_pkgs[@]}"; then
        log "retrying with libvirt-daemon-system"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends libvirt-clients libvirt-daemon-system \
            qemu-system-x86 qemu-utils
    fi
fi

answers() { timeout 10 virsh -c qemu:///system list --all >/dev/null 2>&1; }

if answers; then
    log "libvirtd already answers on qemu:///system"
    exit 0
fi

if [ "$have_systemd" -eq 1 ]; then
    log "starting libvirtd through systemd"
    $SUDO systemctl enable --now libvirtd.service 2>/dev/null \
        || $SUDO systemctl start libvirtd.service
else
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
    fi
    $SUDO mkdir -p /run/libvirt /var/log/libvirt /var/lib/libvirt/images
    pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
    if ! pgrep -x libvirtd >/dev/null; then
        log "starting libvirtd under tini"
        $SUDO setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd.out 2>&1 &
    fi
fi

for _ in $(seq 1 100); do
    if answers; then
        log "libvirtd answers on qemu:///system"
        exit 0
    fi
    sleep 0.2
done
log "libvirtd did not answer within 20 s; see /var/log/libvirt/libvirtd.out"
exit 1
