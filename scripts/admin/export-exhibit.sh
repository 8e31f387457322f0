#!/bin/sh
# Export the exhibit to a directory (a USB disk) so that it can be rebuilt on
# another PC with restore-exhibit.sh: the VM's disk image(s) with their
# internal snapshots, the domain XML, every snapshot's metadata, the
# controller's config, the token files it names and its state file.
#   export-exhibit.sh [-u URL] [-C CONFIG | -I NAME] DIR
#     -u URL     the controller (default: $VMCTL_URL, else the controller's config)
#     -C CONFIG  the controller's config file (default: found as `vmcontroller` finds it:
#                $VMCTL_CONFIG, else ./config.yaml, else /etc/exhibition-vm-controller/config.yaml)
#     -I NAME    the instance exhibition-vm-controller@NAME: its config
#                /etc/exhibition-vm-controller/NAME.yaml and the state file its unit sets
#     DIR        where to write: DIR/<vm>-<timestamp>/ (written as a .partial folder first)
# A running VM is stopped through the controller for the copy (maintenance on,
# staff stop), then started again through it (a clean start from the snapshot)
# and maintenance is put back as it was; the downtime is printed.
# Run as root (or a user who may read the images and the state file).
# Exit status: 0 done, 1 failed (nothing complete left behind), 2 usage error,
# 3 the controller or libvirt cannot be reached while they are needed.
. "$(dirname "$0")/common.sh"

me=export-exhibit.sh
usage() { echo "usage: $me [-u URL] [-C CONFIG | -I NAME] DIR" >&2; exit 2; }
fail() { echo "$me: $1" >&2; exit "${2:-1}"; }
url=""
config=""
instance=""
while getopts u:C:I:h opt; do
    case $opt in
        u) url=$OPTARG ;;
        C) config=$OPTARG ;;
        I) instance=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
if [ -n "$instance" ]; then
    [ -z "$config" ] || usage
    is_name "$instance" || fail "NAME must be letters, digits, '.', '_' or '-'" 2
    config=/etc/exhibition-vm-controller/$instance.yaml
    # As the unit exhibition-vm-controller@.service sets it for the instance.
    VMCTL_STATE_PATH=/var/lib/exhibition-vm-controller/$instance/state.db
    export VMCTL_STATE_PATH
fi
dest=$1
[ -d "$dest" ] || fail "$dest is not a directory (mount the USB disk first)" 2
[ -w "$dest" ] || fail "cannot write to $dest" 2
for tool in virsh qemu-img python3 sha256sum dd; do
    command -v "$tool" >/dev/null || fail "$tool not found (needed for the export)"
done
vmctl=$(find_vmcontroller) || fail "vmcontroller not found (set VMCTL)" 3

# ----------------------------------------------------------------- what to export
effective=$("$vmctl" check-config ${config:+--config} ${config:+"$config"}) || exit 2
source_file=$(printf '%s\n' "$effective" | sed -n 's/^# effective configuration (file: \(.*\), then VMCTL_\* overrides)$/\1/p')
[ -n "$source_file" ] && [ "$source_file" != none ] \
    || fail "no controller config file found: name it with -C CONFIG" 2
source_file=$(realpath "$source_file")
ctl() { "$vmctl" "$@" --config "$source_file" ${url:+--url} ${url:+"$url"}; }
vm=$(printf '%s\n' "$effective" | config_value vm_name)
uri=$(printf '%s\n' "$effective" | config_value libvirt_uri)
state=$(printf '%s\n' "$effective" | config_value state_path)
# check-config masks the token files' paths as secrets: read them from the file.
api_token_file=${VMCTL_API_TOKEN_FILE:-$(config_value api_token_file <"$source_file")}
guest_token_file=${VMCTL_GUEST_TOKEN_FILE:-$(config_value guest_token_file <"$source_file")}
v() { LC_ALL=C virsh -q -c "$uri" "$@"; }

v version >/dev/null || fail "libvirt ($uri) does not answer" 3
v dominfo --domain "$vm" >/dev/null || fail "libvirt ($uri) does not know the VM $vm (vm_name of $source_file)"
work=$(mktemp -d) || fail "cannot make a temporary folder"
partial=""
cleanup() {
    rm -rf "$work"
    [ -z "$partial" ] || rm -rf "$partial"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

v dumpxml --domain "$vm" --inactive --security-info >"$work/domain.xml" \
    || fail "cannot read the definition of $vm"
# One line per disk image: TARGET<TAB>FILE; other disks (CD-ROMs, block
# devices) are named on stderr and not exported.
python3 - "$work/domain.xml" >"$work/disks" <<'PY' || fail "cannot read the disks of $vm"
import sys
import xml.etree.ElementTree as ET

for disk in ET.parse(sys.argv[1]).getroot().iterfind("./devices/disk"):
    target = disk.find("target").get("dev")
    source = disk.find("source")
    path = None if source is None else source.get("file")
    if disk.get("device", "disk") == "disk" and disk.get("type") == "file" and path:
        print(f"{target}\t{path}")
    else:
        what = path or (source.attrib if source is not None else "empty")
        print(f"not exported: {disk.get('device')} {target} ({what})", file=sys.stderr)
PY
[ -s "$work/disks" ] || fail "$vm has no disk image file to export"
tab=$(printf '\t')
needed=0
while IFS=$tab read -r target file; do
    [ -r "$file" ] || fail "cannot read the disk image $file"
    if qemu-img info -U "$file" | grep -q '^backing file:'; then
        fail "$file has a backing file (external snapshots): not supported; merge it first (qemu-img convert)"
    fi
    needed=$((needed + $(du -k --apparent-size "$file" | cut -f1)))
done <"$work/disks"
free=$(df -Pk "$dest" | awk 'NR == 2 { print $4 }')
[ "$free" -gt $((needed + 10240)) ] \
    || fail "$dest has $((free / 1024)) MiB free, the export needs about $((needed / 1024)) MiB"

stamp=$(date +%Y%m%d-%H%M%S)
final="$dest/$vm-$stamp"
[ ! -e "$final" ] || fail "$final already exists"
partial="$dest/.$vm-$stamp.partial"
mkdir -p "$partial/disks" "$partial/snapshots" "$partial/config" "$partial/tokens" "$partial/state" \
    || fail "cannot write to $dest"
manifest="$partial/manifest.txt"
{
    echo "format=exhibition-vm-export 1"
    echo "created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname)"
    echo "vm=$vm"
    [ -z "$instance" ] || echo "instance=$instance"
    echo "libvirt_uri=$uri"
    echo "vmcontroller=$("$vmctl" --version | awk '{ print $NF }')"
    echo "libvirt=$(v version --daemon 2>/dev/null | sed -n 's/^Running hypervisor: //p;s/^Running against daemon: /libvirtd /p' | paste -sd ';' -)"
    echo "qemu_img=$(qemu-img --version | head -n1)"
} >"$manifest"

# ------------------------------------------------------------ definition and metadata
cp "$work/domain.xml" "$partial/domain.xml"
n=0
for snapshot in $(v snapshot-list --domain "$vm" --topological --name); do
    n=$((n + 1))
    index=$(printf '%02d' "$n")
    v snapshot-dumpxml --domain "$vm" --snapshotname "$snapshot" --security-info \
        >"$partial/snapshots/$index.xml" || fail "cannot read snapshot $snapshot"
    echo "snapshot.$index=$snapshot" >>"$manifest"
done
current=$(v snapshot-current --domain "$vm" --name 2>/dev/null)
[ -z "$current" ] || echo "snapshot.current=$current" >>"$manifest"
echo "autostart=$(v dominfo --domain "$vm" | sed -n 's/^Autostart: *//p')" >>"$manifest"

cp "$source_file" "$partial/config/config.yaml" || fail "cannot read $source_file"
echo "config=$source_file" >>"$manifest"
for pair in "api_token_file=$api_token_file" "guest_token_file=$guest_token_file"; do
    key=${pair%%=*}
    path=${pair#*=}
    [ -n "$path" ] || continue
    cp "$path" "$partial/tokens/$key" || fail "cannot read the token file $path"
    echo "token.$key=$path" >>"$manifest"
done

# ------------------------------------------------------------- the disks, VM stopped
resume=""     # what to give back afterwards: 'start' and/or 'enable'
stopped_at=""
give_back() {
    case $resume in *start*)
        ctl start >/dev/null || echo "$me: could not start $vm again: run 'vmcontroller start'" >&2 ;;
    esac
    case $resume in *enable*)
        ctl revert enable >/dev/null || echo "$me: could not end maintenance: run 'vmcontroller revert enable'" >&2 ;;
    esac
    if [ -n "$stopped_at" ]; then
        echo "$me: $vm was down for $(($(date +%s) - stopped_at)) s" >&2
        echo "downtime_seconds=$(($(date +%s) - stopped_at))" >>"$manifest"
    fi
    resume=""
    stopped_at=""
}
trap 'give_back; cleanup' EXIT

fields=$(ctl status --field vm_state --field auto_revert_enabled 2>"$work/status.err")
status=$?
if [ $status -eq 0 ]; then
    vm_state=$(printf '%s\n' "$fields" | sed -n 1p)
    if [ "$(printf '%s\n' "$fields" | sed -n 2p)" = true ]; then
        ctl revert disable >/dev/null || fail "the controller refused maintenance mode"
        resume=enable
    fi
    if [ "$vm_state" != "shut off" ]; then
        echo "$me: stopping $vm through the controller for the copy" >&2
        stopped_at=$(date +%s)
        ctl stop >/dev/null || fail "the controller could not stop $vm"
        resume="start $resume"
    fi
elif [ $status -eq 3 ]; then
    [ "$(v domstate --domain "$vm")" = "shut off" ] \
        || fail "the controller does not answer ($(cat "$work/status.err")) and $vm is running: start the controller, or shut the VM down, and try again" 3
    echo "$me: the controller does not answer; $vm is shut off, copying without it" >&2
else
    cat "$work/status.err" >&2
    fail "the controller refused the status" "$status"
fi
[ "$(v domstate --domain "$vm")" = "shut off" ] || fail "$vm is not shut off; refusing to copy a disk in use"

while IFS=$tab read -r target file; do
    name="$target-$(basename "$file")"
    echo "$me: copying $file ($(du -h --apparent-size "$file" | cut -f1))" >&2
    copy_large "$file" "$partial/disks/$name" || fail "copying $file failed"
    echo "disk.$target=$file" >>"$manifest"
    echo "diskfile.$target=disks/$name" >>"$manifest"
done <"$work/disks"
give_back

# ------------------------------------------- the state file, after the restart
if [ -e "$state" ]; then
    # The controller keeps the file open: SQLite's backup API takes a consistent copy.
    python3 - "$state" "$partial/state/state.db" <<'PY' || fail "cannot copy the state file $state"
import sqlite3
import sys

source = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
target = sqlite3.connect(sys.argv[2])
with target:
    source.backup(target)
target.close()
source.close()
PY
    echo "state=$state" >>"$manifest"
else
    echo "$me: no state file at $state (the controller starts a new one)" >&2
fi

# The restore comes along, for a new PC that has only the package.
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$partial/tools" || fail "cannot write to $partial"
for f in restore-exhibit.sh common.sh; do
    cp "$here/$f" "$partial/tools/$f" || fail "cannot copy $here/$f"
done
cp "$here/restore-README.txt" "$partial/README.txt" || fail "cannot copy $here/restore-README.txt"
(cd "$partial" && find . -type f ! -name SHA256SUMS | LC_ALL=C sort | sed 's|^\./||' \
    | while IFS= read -r f; do sha256sum -- "$f"; done >SHA256SUMS) || fail "cannot write checksums"
sync
mv "$partial" "$final" || fail "cannot rename $partial to $final"
partial=""
echo "$me: exported $vm ($(du -sh "$final" | cut -f1)) to" >&2
echo "$final"
