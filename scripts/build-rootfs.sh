#!/usr/bin/env bash
# Build a minimal Debian 12 root file system that boots with systemd as PID 1
# inside systemd-nspawn: the "exhibition PC" of the systemd test rig
# (tests/systemd_rig.py). Nothing of the project is in it; the rig installs
# the project's .deb into a copy, as a museum would.
#   scripts/build-rootfs.sh OUTDIR
# The build (debootstrap, about a minute and 250 MB) is kept in OUTDIR and
# redone only when this script changes: OUTDIR/build.stamp holds the hash of
# what it was built from. The mirror is the host's own Debian mirror
# (DEBIAN_MIRROR overrides it).
set -euo pipefail

OUT=$(realpath -m "${1:?usage: build-rootfs.sh OUTDIR}")
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,iproute2,sudo,curl,ca-certificates,apt-utils
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf 'build-rootfs: %s\n' "$*" >&2; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -hs -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources \
             | awk '{print $2}' || true)
fi
if [ -z "$mirror" ]; then
    mirror=$(grep -hs -m1 -E '^deb [^ ]+ '"$SUITE"' ' /etc/apt/sources.list | awk '{print $2}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

stamp=$( { cat "$0"; echo "$SUITE $INCLUDE"; } | sha256sum | cut -c1-16)
if [ -f "$OUT/build.stamp" ] && [ "$(cat "$OUT/build.stamp")" = "$stamp" ]; then
    log "$OUT is up to date"
    exit 0
fi

for tool in debootstrap systemd-nspawn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "installing debootstrap and systemd-container"
        $SUDO apt-get update -q
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            debootstrap systemd-container
        break
    fi
done

work="$OUT.building"
$SUDO rm -rf "$work"
$SUDO mkdir -p "$work"
log "debootstrap $SUITE from $mirror into $work (about a minute)"
$SUDO debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$mirror" \
    > "$work.log" 2>&1 || { tail -n 20 "$work.log" >&2; log "debootstrap failed; log: $work.log"; exit 1; }
# A journal on disk, so that what happened before a reboot or power-off can be read
# from the root file system afterwards.
$SUDO mkdir -p "$work/root/var/log/journal"
echo "exhibition-pc" | $SUDO tee "$work/root/etc/hostname" >/dev/null
printf '127.0.0.1\tlocalhost\n127.0.1.1\texhibition-pc\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    | $SUDO tee "$work/root/etc/hosts" >/dev/null
# No password login: the rig enters the container with nsenter.
$SUDO rm -f "$work/root/etc/securetty"
echo "$stamp" | $SUDO tee "$work/build.stamp" >/dev/null
$SUDO rm -rf "$OUT"
$SUDO mv "$work" "$OUT"
$SUDO rm -f "$work.log"
log "built $OUT/root"
