#!/usr/bin/env bash
# Create the demo VM if it does not exist: an empty 64 MiB qcow2 disk and
# 64 MiB of RAM under software emulation (type='qemu'), started, with a
# 'ready' snapshot. No guest OS is needed: SeaBIOS idles and the VM counts as
# running, which is enough to watch the controller revert it.
#   scripts/create-demo-vm.sh [NAME]      (default: exhibition-demo)
set -euo pipefail

NAME=${1:-exhibition-demo}
URI=${LIBVIRT_URI:-qemu:///system}
IMAGES=${IMAGES:-/var/lib/libvirt/images}
DISK="$IMAGES/$NAME.qcow2"
export LC_ALL=C
v() { virsh -q -c "$URI" "$@"; }
log() { printf 'create-demo-vm: %s\n' "$*" >&2; }

if v dominfo --domain "$NAME" >/dev/null 2>&1; then
    log "VM '$NAME' exists"
else
    mkdir -p "$IMAGES"
    [ -f "$DISK" ] || qemu-img create -q -f qcow2 "$DISK" 64M
    xml=$(mktemp)
    trap 'rm -f "$xml"' EXIT
    cat >"$xml" <<XML
<domain type='qemu'>
  <name>$NAME</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DISK'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>
  </devices>
</domain>
XML
    v define --file "$xml" >/dev/null
    log "defined VM '$NAME' (disk $DISK)"
fi
if [ "$(v domstate --domain "$NAME")" != "running" ]; then
    v start --domain "$NAME" >/dev/null
    log "started VM '$NAME'"
fi
if ! v snapshot-list --domain "$NAME" --name | grep -qx ready; then
    v snapshot-create-as --domain "$NAME" --name ready --atomic >/dev/null
    log "created snapshot 'ready' of VM '$NAME'"
fi
