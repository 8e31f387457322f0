#!/bin/sh
# Rebuild the exhibit from an export made by export-exhibit.sh, on a new PC
# or on the same one after a disaster. Run as root, with the controller's
# service stopped.
#   restore-exhibit.sh [--replace] [--images DIR] EXPORT
#     EXPORT        the folder export-exhibit.sh made (holds manifest.txt)
#     --images DIR  put the disk images into DIR (default: where they were),
#                   the domain's and the snapshots' XML rewritten to match
#     --replace     replace a VM of that name and files that differ from the
#                   export (default: refuse, changing nothing)
# Checks every checksum first, and every refusal comes before any change.
# Files already in place with the export's content are left alone, so a
# second run after a failure finishes the work.
# Exit status: 0 done, 1 refused or failed, 2 usage error.
. "$(dirname "$0")/common.sh"

me=restore-exhibit.sh
usage() { echo "usage: $me [--replace] [--images DIR] EXPORT" >&2; exit 2; }
fail() { echo "$me: $1" >&2; exit "${2:-1}"; }
replace=""
images=""
export_dir=""
while [ $# -gt 0 ]; do
    case $1 in
        --replace) replace=yes ;;
        --images) [ $# -ge 2 ] || usage; images=$2; shift ;;
        --images=*) images=${1#--images=} ;;
        -h | --help | -*) usage ;;
        *) [ -z "$export_dir" ] || usage; export_dir=$1 ;;
    esac
    shift
done
[ -n "$export_dir" ] || usage
manifest="$export_dir/manifest.txt"
[ -f "$manifest" ] || fail "$export_dir holds no manifest.txt: not an export of export-exhibit.sh" 2
for tool in virsh python3 sha256sum dd; do
    command -v "$tool" >/dev/null || fail "$tool not found (needed for the restore)"
done
value() { sed -n "s/^$1=//p" "$manifest" | head -n1; }
keys() { sed -n "s/^$1\\.\\([^=]*\\)=.*/\\1/p" "$manifest"; }
[ "$(value format)" = "exhibition-vm-export 1" ] || fail "$manifest: unknown format '$(value format)'"

echo "$me: checking the checksums of $export_dir" >&2
(cd "$export_dir" && sha256sum --check --quiet --strict SHA256SUMS) >&2 \
    || fail "the export is damaged (checksums above do not match): refused, nothing changed"

vm=$(value vm)
uri=$(value libvirt_uri)
v() { LC_ALL=C virsh -q -c "$uri" "$@"; }
v version >/dev/null || fail "libvirt ($uri) does not answer: start libvirtd (scripts/setup-libvirt.sh)"
if [ -n "$images" ]; then
    mkdir -p "$images" || fail "cannot make $images"
    images=$(realpath "$images")
fi

# What goes where: one line per file, SOURCE<TAB>TARGET<TAB>KIND.
tab=$(printf '\t')
plan=$(mktemp) || fail "cannot make a temporary file"
work=$(mktemp -d) || fail "cannot make a temporary folder"
trap 'rm -rf "$plan" "$work"' EXIT
trap 'exit 1' INT TERM HUP
for target in $(keys disk); do
    old=$(value "disk.$target")
    new=$old
    [ -z "$images" ] || new="$images/$(basename "$old")"
    printf '%s\t%s\t%s\n' "$(value "diskfile.$target")" "$new" disk >>"$plan"
    printf '%s\t%s\n' "$old" "$new" >>"$work/moves"
done
printf '%s\t%s\t%s\n' config/config.yaml "$(value config)" config >>"$plan"
for key in $(keys token); do
    printf '%s\t%s\t%s\n' "tokens/$key" "$(value "token.$key")" token >>"$plan"
done
[ -z "$(value state)" ] || printf '%s\t%s\t%s\n' state/state.db "$(value state)" state >>"$plan"

# ------------------------------------------------------ every refusal before any change
refusals=""
if v dominfo --domain "$vm" >/dev/null 2>&1; then
    refusals="$refusals
  libvirt already has a VM named $vm"
fi
while IFS=$tab read -r from to kind; do
    if [ -e "$to" ] && ! cmp -s "$export_dir/$from" "$to"; then
        refusals="$refusals
  $to exists and differs from the export's $from"
    fi
done <"$plan"
if [ -n "$refusals" ] && [ -z "$replace" ]; then
    fail "refused, nothing changed:$refusals
(stop the controller and give --replace to overwrite them)"
fi

# ----------------------------------------------------------------- the files
group=""
getent group exhibition-vm >/dev/null 2>&1 && group=exhibition-vm
user=""
getent passwd exhibition-vm >/dev/null 2>&1 && user=exhibition-vm
if v dominfo --domain "$vm" >/dev/null 2>&1; then
    echo "$me: replacing the VM $vm" >&2
    v destroy --domain "$vm" >/dev/null 2>&1
    v undefine --domain "$vm" --snapshots-metadata --managed-save >/dev/null \
        || fail "cannot undefine the existing VM $vm"
fi
while IFS=$tab read -r from to kind; do
    if [ -e "$to" ] && cmp -s "$export_dir/$from" "$to"; then
        echo "$me: $to already in place" >&2
        continue
    fi
    dir=$(dirname "$to")
    case $kind in
        disk)
            mkdir -p "$dir" || fail "cannot make $dir"
            echo "$me: copying the disk image to $to" >&2
            copy_large "$export_dir/$from" "$to" || fail "copying $to failed"
            chmod 0600 "$to" ;;
        config | token)
            # The README's token recipe: readable by root and the service's group only.
            [ -d "$dir" ] || install -d -m 0750 ${group:+-g} ${group:+"$group"} "$dir" \
                || fail "cannot make $dir"
            install -m 0640 ${group:+-g} ${group:+"$group"} "$export_dir/$from" "$to" \
                || fail "cannot write $to" ;;
        state)
            [ -d "$dir" ] || install -d -m 0750 ${user:+-o} ${user:+"$user"} ${user:+-g} ${user:+"$user"} "$dir" \
                || fail "cannot make $dir"
            # A write-ahead log left beside the old file would be replayed into the restored one.
            rm -f "$to-wal" "$to-shm" "$to-journal"
            install -m 0640 ${user:+-o} ${user:+"$user"} ${user:+-g} ${user:+"$user"} "$export_dir/$from" "$to" \
                || fail "cannot write $to" ;;
    esac
done <"$plan"

# ------------------------------------------------- the domain and its snapshots
cp "$export_dir/domain.xml" "$work/domain.xml"
for f in "$export_dir"/snapshots/*.xml; do
    [ -e "$f" ] && cp "$f" "$work/snapshot-$(basename "$f")"
done
if [ -n "$images" ]; then
    # A real XML edit: every disk source naming a moved image, in the domain
    # and in each snapshot's copy of it (a revert uses the snapshot's copy).
    python3 - "$work/moves" "$work"/*.xml <<'PY' || fail "cannot rewrite the disk paths"
import sys
import xml.etree.ElementTree as ET

moves = dict(line.rstrip("\n").split("\t") for line in open(sys.argv[1]))
ET.register_namespace("qemu", "http://libvirt.org/schemas/domain/qemu/1.0")
for name in sys.argv[2:]:
    tree = ET.parse(name)
    for source in tree.getroot().iter("source"):
        if source.get("file") in moves:
            source.set("file", moves[source.get("file")])
    tree.write(name, encoding="unicode")
PY
fi
# Files the VM needs that an export does not carry: said, not fatal (an ISO
# can come later; a kernel for direct boot must be put back before a start).
python3 - "$work/domain.xml" <<'PY' >&2
import os
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
named = [e.text for e in root.iterfind("./os/*") if e.tag in ("kernel", "initrd", "loader")]
named += [s.get("file") for s in root.iterfind("./devices/disk/source")]
for path in named:
    if path and not os.path.exists(path):
        print(f"restore-exhibit.sh: warning: the VM names {path}, which is not on this PC")
PY
v define --file "$work/domain.xml" >/dev/null || fail "libvirt refused the domain XML"
for index in $(keys snapshot | grep -v '^current$'); do
    name=$(value "snapshot.$index")
    v snapshot-create --domain "$vm" --xmlfile "$work/snapshot-$index.xml" --redefine >/dev/null \
        || fail "libvirt refused the metadata of snapshot $name"
done
[ "$(value autostart)" != enable ] || v autostart --domain "$vm" >/dev/null \
    || fail "cannot mark $vm to start with libvirtd"
current=$(value snapshot.current)
[ -z "$current" ] || v snapshot-current --domain "$vm" --snapshotname "$current" >/dev/null \
    || fail "cannot make $current the current snapshot"

service=exhibition-vm-controller
[ -z "$(value instance)" ] || service="exhibition-vm-controller@$(value instance)"
cat <<EOF
Restored $vm from $export_dir (exported $(value created) on $(value host)).
  disks:     $(cut -f2,3 "$plan" | grep "${tab}disk\$" | cut -f1 | paste -sd ' ' -)
  snapshots: $(v snapshot-list --domain "$vm" --name | paste -sd ' ' -)${current:+ (current: $current)}
  config:    $(value config)
Next:
  vmcontroller check-config --config $(value config)
  sudo systemctl enable --now $service
  vmcontroller status       # the controller reverts $vm to its snapshot and starts it
EOF
