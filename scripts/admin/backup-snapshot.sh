#!/bin/sh
# Take a timestamped backup snapshot of the exhibition VM, e.g. from cron:
#   backup-snapshot.sh [-u URL] [-p PREFIX] [-k KEEP]
#     -u URL     the controller (default: $VMCTL_URL, else the controller's config)
#     -p PREFIX  name prefix (default: backup): PREFIX-2026-11-25-173000
#     -k KEEP    then delete all but the newest KEEP snapshots named PREFIX-<timestamp>
#                (snapshots with other names, 'ready' included, are never touched)
# Each snapshot holds the VM's memory: the disk image grows by about the VM's RAM.
# Exit status: 0 done; otherwise that of `vmcontroller` (1 the API refused or
# failed, 2 usage error, 3 controller unreachable).
. "$(dirname "$0")/common.sh"

usage() { echo "usage: backup-snapshot.sh [-u URL] [-p PREFIX] [-k KEEP]" >&2; exit 2; }
url=""
prefix=backup
keep=""
while getopts u:p:k:h opt; do
    case $opt in
        u) url=$OPTARG ;;
        p) prefix=$OPTARG ;;
        k) keep=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage
if ! is_name "$prefix"; then
    echo "backup-snapshot.sh: PREFIX must be letters, digits, '.', '_' or '-', starting with a letter or digit" >&2
    exit 2
fi
case $keep in
    '') ;;
    *[!0-9]* | 0) echo "backup-snapshot.sh: KEEP must be a whole number from 1" >&2; exit 2 ;;
esac
vmctl=$(find_vmcontroller) || { echo "backup-snapshot.sh: vmcontroller not found (set VMCTL)" >&2; exit 3; }

name="$prefix-$(date +%Y-%m-%d-%H%M%S)"
"$vmctl" snapshot create ${url:+--url} ${url:+"$url"} "$name" || exit $?
[ -n "$keep" ] || exit 0

snapshots=$("$vmctl" snapshots ${url:+--url} ${url:+"$url"}) || exit $?
# Timestamps sort like dates: the oldest first; all but the last KEEP go.
old=$(printf '%s\n' "$snapshots" \
    | grep -E "^$(printf '%s' "$prefix" | sed 's/\./\\./g')-[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}\$" \
    | sort | awk -v keep="$keep" '{ name[NR] = $0 } END { for (i = 1; i <= NR - keep; i++) print name[i] }')
status=0
for snapshot in $old; do
    "$vmctl" snapshot delete ${url:+--url} ${url:+"$url"} "$snapshot" || status=$?
done
exit $status
