#!/usr/bin/env bash
# Build a tiny Linux guest that heartbeats, from Debian's own packages:
#   scripts/build-guest.sh OUTDIR
# writes OUTDIR/vmlinuz (Debian's cloud kernel), OUTDIR/initrd.gz (busybox
# and an init that runs scripts/guest/posix/heartbeat.sh) and OUTDIR/busybox
# (the same static busybox, for running the heartbeat script under busybox on
# the host). Nothing is installed: the two .debs are fetched with
# `apt-get download` into GUEST_CACHE (default
# /var/cache/exhibition-vm-controller/debs, for a user other than root
# ~/.cache/exhibition-vm-controller/debs) and unpacked with `dpkg-deb -x`.
#
# The guest boots with `console=ttyS0 hb_url=http://10.0.2.2:PORT` on its
# kernel command line (optional: hb_interval=SECONDS between heartbeats,
# hb_timeout=SECONDS bound on each request). It configures QEMU user-mode
# networking statically (10.0.2.15, gateway 10.0.2.2, which QEMU turns into
# the host's 127.0.0.1) and runs `heartbeat.sh -v -t TIMEOUT URL INTERVAL`, so
# every heartbeat ("heartbeat: seq=N boot=ID ok") shows on the serial console.
#
# With hb_screen=1 on the command line (and a VGA device in the domain) init
# also runs /usr/share/vmcontroller/screen.sh on the VGA text console
# /dev/tty1, an "artwork" whose screen a screen check can judge while the
# heartbeats go on: keys typed on the guest's keyboard (`virsh send-key
# --domain D KEY_F`) switch it between m(oving, the mode at boot), f(rozen),
# b(lack) and e(rror dialog); see the script below for the layout. Keep the
# kernel off that screen: no console=tty0 then (consoleblank=0 keeps it lit).
# With hb_progress=1 too, each heartbeat carries the artwork's frame counter as
# its progress value (heartbeat.sh -p): it stops when the artwork freezes.
#
# A second run with the same inputs (this script, the heartbeat script, the
# package versions) does nothing; OUTDIR/build.stamp records them.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HEARTBEAT="$REPO/scripts/guest/posix/heartbeat.sh"
[ $# -eq 1 ] || { echo "usage: scripts/build-guest.sh OUTDIR" >&2; exit 2; }
OUT=$(realpath -m "$1")
if [ "$(id -u)" -eq 0 ]; then
    CACHE=${GUEST_CACHE:-/var/cache/exhibition-vm-controller/debs}
else
    CACHE=${GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/exhibition-vm-controller/debs}
fi
KERNEL_META=${GUEST_KERNEL_PACKAGE:-linux-image-cloud-amd64}
# Loaded with insmod in this order (dependencies first); the cloud kernel has
# virtio networking only as modules and no e1000. A module the kernel has
# built in is simply not found and skipped. pvpanic and pvpanic-mmio (the
# driver of QEMU's ISA panic device, <panic model='isa'/>, found through ACPI)
# tell QEMU when the guest kernel panics, so that libvirt reports "Crashed".
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net pvpanic pvpanic-mmio"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf 'build-guest: %s\n' "$*" >&2; }

mkdir -p "$OUT" "$CACHE"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$OUT/.lock"
    flock 9
fi

kernel_package() {
    apt-cache depends "$KERNEL_META" 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
candidate() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

KPKG=$(kernel_package)
BUSYBOX_VERSION=$(candidate busybox-static)
if [ -z "$KPKG" ] || [ -z "$BUSYBOX_VERSION" ]; then
    log "package lists do not know $KERNEL_META or busybox-static: apt-get update"
    $SUDO apt-get update -q >&2
    KPKG=$(kernel_package)
    BUSYBOX_VERSION=$(candidate busybox-static)
fi
[ -n "$KPKG" ] || { log "no kernel package behind $KERNEL_META (set GUEST_KERNEL_PACKAGE)"; exit 1; }
KVER=${KPKG#linux-image-}
KPKG_VERSION=$(candidate "$KPKG")
[ -n "$KPKG_VERSION" ] && [ -n "$BUSYBOX_VERSION" ] || { log "no candidate for $KPKG or busybox-static"; exit 1; }

stamp=$( { echo "$KPKG=$KPKG_VERSION"; echo "busybox-static=$BUSYBOX_VERSION";
           sha256sum < "$0"; sha256sum < "$HEARTBEAT"; } | sha256sum | cut -c1-16)
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.gz" ] && [ -x "$OUT/busybox" ] \
        && [ "$(cat "$OUT/build.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$OUT is up to date ($KPKG $KPKG_VERSION, busybox $BUSYBOX_VERSION)"
    exit 0
fi

# The .deb of PACKAGE=VERSION, downloaded once into the cache.
fetch_deb() {
    local deb="$CACHE/$1=$2.deb" tmp
    if [ ! -s "$deb" ]; then
        log "downloading $1 $2"
        tmp=$(mktemp -d "$CACHE/download.XXXXXX")
        # apt drops root to _apt for downloads; let it write there.
        if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
        (cd "$tmp" && apt-get download -q "$1=$2" >&2)
        mv "$tmp"/*.deb "$deb"
        rmdir "$tmp"
    fi
    echo "$deb"
}

began=$(date +%s.%N)
kernel_deb=$(fetch_deb "$KPKG" "$KPKG_VERSION")
busybox_deb=$(fetch_deb busybox-static "$BUSYBOX_VERSION")

W=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$W"' EXIT
dpkg-deb -x "$kernel_deb" "$W/kernel"
dpkg-deb -x "$busybox_deb" "$W/busybox"
BB="$W/busybox/bin/busybox"
R="$W/root"
mkdir -p "$R/bin" "$R/proc" "$R/sys" "$R/dev" "$R/lib/modules" "$R/usr/share/vmcontroller"
cp "$BB" "$R/bin/busybox"
cp "$HEARTBEAT" "$R/usr/share/vmcontroller/heartbeat.sh"

: >"$R/lib/modules/order"
for module in $MODULES; do
    found=$(find "$W/kernel/lib/modules/$KVER" -name "$module.ko*" | head -n1)
    if [ -z "$found" ]; then
        log "module $module not found in $KPKG: assuming it is built in"
        continue
    fi
    case $found in
        *.ko.xz) "$BB" unxz -c "$found" >"$R/lib/modules/$module.ko" ;;
        *.ko.gz) "$BB" gunzip -c "$found" >"$R/lib/modules/$module.ko" ;;
        *.ko) cp "$found" "$R/lib/modules/$module.ko" ;;
        *) log "cannot unpack $found"; exit 1 ;;
    esac
    echo "$module" >>"$R/lib/modules/order"
done

# The screen of the "artwork" (hb_screen=1), on the 80 x 25 VGA text console.
# Row 1: a status line (black on white) with the mode and, in columns 61-79,
# the guest's uptime in seconds: it changes every second in every mode but
# black. Rows 3-25: the artwork. moving: a frame counter on row 3 and on rows
# 5-24 bars that shift at every tick; frozen: the artwork stays as it is, the
# clock ticks on; black: the whole screen black, nothing written any more;
# error: an "Application Error" box on rows 8-18, columns 6-75, over the
# frozen artwork, then as frozen. Reading one key with a one-second timeout is
# both the tick and the keyboard. The cursor is hidden, so a screen on which
# nothing is written stays the same to the pixel.
cat >"$R/usr/share/vmcontroller/screen.sh" <<'SCREEN'
#!/bin/busybox sh
# The test guest's screen; stdin and stdout are /dev/tty1 (see build-guest.sh).
E=$(printf '\033')
stty -icanon -echo -isig 2>/dev/null
mode=moving
n=0
hashes=$(printf '%70s' '' | tr ' ' '#')

status() {
    printf '%s' "$E[0m$E[1;1H$E[30;47m heartbeat guest   mode: $mode   keys: m f b e$E[K$E[0m"
}
clock() {
    printf '%s%19s%s' "$E[1;61H$E[30;47m" "uptime $(cut -d. -f1 /proc/uptime) s" "$E[0m"
}
artwork() {
    echo "$n" >/run/artwork-frame  # what the heartbeat's progress reads (hb_progress=1)
    s="$E[3;1H$E[1;33m frame $n$E[K$E[0m"
    r=5
    while [ $r -le 24 ]; do
        s="$s$E[$r;1H$E[K$E[$r;$(((n * 3 + r * 5) % 72 + 1))H$E[1;3$((r % 6 + 1))m<=====>$E[0m"
        r=$((r + 1))
    done
    printf '%s' "$s"
}
boxline() {  # row, text: one line of the box, framed and padded
    printf '%s#%-68s#' "$E[$1;6H" "$2"
}
box() {
    printf '%s' "$E[1;37;44m$E[8;6H$hashes"
    boxline 9 "  Application Error"
    printf '%s' "$E[10;6H$hashes$E[0;30;47m"
    boxline 11 ""
    boxline 12 "  The instruction at 0x0041f3a2 referenced memory at 0x00000000."
    boxline 13 '  The memory could not be "read".'
    boxline 14 ""
    boxline 15 "  Click OK to terminate the program."
    boxline 16 ""
    boxline 17 "                              [  OK  ]"
    printf '%s' "$E[18;6H$hashes$E[0m"
}
blank() {
    printf '%s' "$E[0m$E[?25l$E[2J"
}

blank
status
artwork
clock
while :; do
    key=""
    read -t 1 -n 1 key
    case $key in
        # The status line last: once it shows the new mode, the screen is complete.
        m) mode=moving; blank; artwork; status ;;
        f) mode=frozen; status ;;
        b) mode=black; blank ;;
        e) mode=error; box; status ;;
    esac
    case $mode in
        moving) n=$((n + 1)); artwork; clock ;;
        frozen | error) clock ;;
    esac
done
SCREEN

cat >"$R/init" <<'INIT'
#!/bin/busybox sh
# init of the heartbeat guest built by exhibition-vm-controller's scripts/build-guest.sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || echo "guest: insmod $m failed"
done
url=http://10.0.2.2:8000
interval=1
limit=5
screen=0
progress=0
for word in $(cat /proc/cmdline); do
    case $word in
        hb_url=*) url=${word#hb_url=} ;;
        hb_interval=*) interval=${word#hb_interval=} ;;
        hb_timeout=*) limit=${word#hb_timeout=} ;;
        hb_screen=*) screen=${word#hb_screen=} ;;
        hb_progress=*) progress=${word#hb_progress=} ;;
    esac
done
mkdir -p /run /tmp  # heartbeat.sh -p keeps the command's output in a file in /tmp
if [ "$screen" = 1 ] && [ -e /dev/tty1 ]; then
    echo "guest: the artwork's screen runs on tty1 (keys m f b e)"
    while :; do
        sh /usr/share/vmcontroller/screen.sh </dev/tty1 >/dev/tty1 2>&1
        echo "guest: screen script exited with status $?; starting it again"
        sleep 1
    done &
fi
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "guest: up after $(cut -d' ' -f1 /proc/uptime) s; heartbeats to $url every $interval s"
set --  # hb_progress=1: each heartbeat carries the screen's frame counter as progress
if [ "$progress" = 1 ]; then set -- -p "cat /run/artwork-frame"; fi
while :; do
    sh /usr/share/vmcontroller/heartbeat.sh -v -t "$limit" "$@" "$url" "$interval"
    echo "guest: heartbeat script exited with status $?; starting it again"
    sleep 1
done
INIT
chmod 755 "$R/init"

cp "$W/kernel/boot/vmlinuz-$KVER" "$W/vmlinuz"
(cd "$R" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9n >"$W/initrd.gz"
cp "$BB" "$W/busybox-host"
# Replace the outputs by renaming: a VM booting from them never sees half a file.
mv -f "$W/vmlinuz" "$OUT/vmlinuz"
mv -f "$W/initrd.gz" "$OUT/initrd.gz"
mv -f "$W/busybox-host" "$OUT/busybox"
echo "$stamp" >"$OUT/build.stamp"
log "built $OUT in $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s:" \
    "$KPKG $KPKG_VERSION, busybox $BUSYBOX_VERSION;" \
    "vmlinuz $(du -k "$OUT/vmlinuz" | cut -f1) KiB, initrd.gz $(du -k "$OUT/initrd.gz" | cut -f1) KiB"
