#!/bin/sh
# Maintenance mode on or off: while on, the controller logs failures and
# reverts nothing (work inside the VM, then take a new 'ready' snapshot).
#   maintenance.sh [-u URL] on|off|status
#     -u URL   the controller (default: $VMCTL_URL, else the controller's config)
# Exit status: 0 done; otherwise that of `vmcontroller` (1 the API refused or
# failed, 2 usage error, 3 controller unreachable).
. "$(dirname "$0")/common.sh"

usage() { echo "usage: maintenance.sh [-u URL] on|off|status" >&2; exit 2; }
url=""
while getopts u:h opt; do
    case $opt in
        u) url=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
vmctl=$(find_vmcontroller) || { echo "maintenance.sh: vmcontroller not found (set VMCTL)" >&2; exit 3; }

case $1 in
    on) exec "$vmctl" revert disable ${url:+--url} ${url:+"$url"} ;;
    off) exec "$vmctl" revert enable ${url:+--url} ${url:+"$url"} ;;
    status)
        enabled=$("$vmctl" status ${url:+--url} ${url:+"$url"} --field auto_revert_enabled) || exit $?
        if [ "$enabled" = true ]; then echo "maintenance: off (automatic revert enabled)"
        else echo "maintenance: on (automatic revert disabled)"; fi ;;
    *) usage ;;
esac
