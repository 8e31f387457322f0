#!/usr/bin/env bash
# Create the demo VM if it does not exist: the tiny Linux guest built by
# scripts/build-guest.sh (Debian's kernel, a busybox initramfs whose init runs
# scripts/guest/posix/heartbeat.sh) under software emulation (type='qemu'),
# with QEMU user-mode networking: the guest's heartbeats to 10.0.2.2:PORT
# reach the controller on the host's 127.0.0.1:PORT. The VM is started and,
# once the guest's heartbeat loop runs, snapshotted as 'ready': every revert
# resumes that loop from the snapshot's memory.
#   scripts/create-demo-vm.sh [NAME [PORT [GUEST_DIR]]]
#     NAME       default exhibition-demo
#     PORT       the controller's port, default 8000
#     GUEST_DIR  the output of scripts/build-guest.sh, default
#                $IMAGES/exhibition-vm-controller-guest
# A VM of that name made by an earlier version of this script (or for another
# port or guest build) is replaced; any other VM of that name is left alone
# and the script stops.
set -euo pipefail

NAME=${1:-exhibition-demo}
PORT=${2:-8000}
URI=${LIBVIRT_URI:-qemu:///system}
IMAGES=${IMAGES:-/var/lib/libvirt/images}
GUEST=$(realpath -m "${3:-$IMAGES/exhibition-vm-controller-guest}")
DISK="$IMAGES/$NAME.qcow2"
CONSOLE="$IMAGES/$NAME.console.log"
export LC_ALL=C
v() { virsh -q -c "$URI" "$@"; }
log() { printf 'create-demo-vm: %s\n' "$*" >&2; }

for f in vmlinuz initrd.gz build.stamp; do
    [ -s "$GUEST/$f" ] || { log "$GUEST/$f is missing: run scripts/build-guest.sh $GUEST"; exit 1; }
done
MARK_PREFIX="exhibition-vm-controller demo guest:"
MARK="$MARK_PREFIX heartbeats to 10.0.2.2:$PORT, guest build $(cat "$GUEST/build.stamp")"

remove_vm() {
    v destroy --domain "$NAME" >/dev/null 2>&1 || true
    v undefine --domain "$NAME" --snapshots-metadata >/dev/null
    rm -f "$DISK" "$CONSOLE"
}

if v dominfo --domain "$NAME" >/dev/null 2>&1; then
    desc=$(v desc --domain "$NAME" 2>/dev/null || true)
    case $desc in "No description for domain"*) desc="" ;; esac
    xml=$(v dumpxml --domain "$NAME")
    if [ "$desc" = "$MARK" ]; then
        log "VM '$NAME' exists"
    elif [ "${desc#"$MARK_PREFIX"}" != "$desc" ]; then
        log "VM '$NAME' was made for another port or guest build ($desc): replacing it"
        remove_vm
    elif [ -z "$desc" ] && grep -qF "file='$DISK'" <<<"$xml" && ! grep -q "<kernel>" <<<"$xml"; then
        log "VM '$NAME' is the empty-disk VM of an earlier demo: replacing it with the heartbeat guest"
        remove_vm
    else
        log "a VM called '$NAME' exists and was not made by this script: leaving it alone;" \
            "choose another name (DEMO_VM=...)"
        exit 1
    fi
fi

if ! v dominfo --domain "$NAME" >/dev/null 2>&1; then
    mkdir -p "$IMAGES"
    rm -f "$DISK" "$CONSOLE"
    # A qcow2 disk is needed for internal snapshots with the guest's memory.
    qemu-img create -q -f qcow2 "$DISK" 16M
    xml=$(mktemp)
    trap 'rm -f "$xml"' EXIT
    # The one domain template, shared with the tests (tests/guest_env.py).
    sed -e "s|{name}|$NAME|g" -e "s|{description}|$MARK|g" -e "s|{guest}|$GUEST|g" \
        -e "s|{port}|$PORT|g" -e "s|{hb_timeout}|2|g" -e "s|{disk}|$DISK|g" \
        -e "s|{console}|$CONSOLE|g" "$(cd "$(dirname "$0")" && pwd)/guest/domain.xml" >"$xml"
    v define --file "$xml" >/dev/null
    log "defined VM '$NAME' (guest $GUEST, disk $DISK, console $CONSOLE)"
fi

if v snapshot-list --domain "$NAME" --name | grep -qx ready; then
    exit 0
fi
# No 'ready' snapshot yet: run the guest until its heartbeat loop shows on the
# console (nothing may answer yet: the loop logs failures and goes on), then
# take the snapshot that every revert will resume.
offset=$(stat -c %s "$CONSOLE" 2>/dev/null || echo 0)
if [ "$(v domstate --domain "$NAME")" != "running" ]; then
    v start --domain "$NAME" >/dev/null
    log "started VM '$NAME'"
fi
for _ in $(seq 1 600); do
    if tail -c +"$((offset + 1))" "$CONSOLE" 2>/dev/null | grep -q "heartbeat: seq="; then
        v snapshot-create-as --domain "$NAME" --name ready --atomic >/dev/null
        log "created snapshot 'ready' of VM '$NAME' while its heartbeat loop runs"
        exit 0
    fi
    sleep 0.2
done
log "the guest's heartbeat loop did not start within 120 s; see $CONSOLE"
exit 1
