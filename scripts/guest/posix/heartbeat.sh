#!/bin/sh
# Tell the Exhibition VM Controller that this guest is alive: one HTTP GET
# to URL/api/v1/heartbeat every INTERVAL seconds, until the script is killed.
#
#   heartbeat.sh [-v] [-t SECONDS] [-k TOKEN] URL [INTERVAL]
#
#   URL        the controller as the guest reaches it, e.g. http://10.0.2.2:8000
#              (QEMU user networking) or http://192.168.122.1:8000 (libvirt's
#              default network); a URL ending in /api/v1/heartbeat is used as is
#   INTERVAL   seconds between heartbeats (default 1; fractions need a sleep
#              that takes them, as GNU and busybox do)
#   -t SECONDS bound on each request (default 5): a request caught in a revert
#              or a silent network never blocks the loop for longer
#   -k TOKEN   the guest token, sent as "Authorization: Bearer TOKEN" (with
#              fetch as token=TOKEN in the query; default: $VMCTL_TOKEN)
#   -v         log every heartbeat; by default only the start, the first
#              failure of a run of failures and the recovery are logged
#
# Each request carries seq=N (1, 2, 3, ... for this run of the script) and
# boot=ID (an id of this run) in its query string, so that whoever reads the
# controller's or the guest's log can tell heartbeats apart and see a revert
# (the guest resumes from the snapshot's memory: seq jumps back, boot stays).
#
# POSIX sh, busybox ash included. Uses curl if present, else wget (GNU or
# busybox; busybox 1.35's `wget -T` crashes, so its requests are bounded with
# `timeout`), else FreeBSD's fetch; HEARTBEAT_CLIENT=curl|wget|fetch forces
# one. The host being down, refusing or not answering is logged and retried:
# the script never gives up. Exit status 2 only for a usage error.

usage() {
    echo "usage: heartbeat.sh [-v] [-t SECONDS] [-k TOKEN] URL [INTERVAL]" >&2
    exit 2
}

log() {
    echo "heartbeat: $*"
}

is_seconds() {  # a positive number: digits with at most one dot, not all zeros
    case $1 in
        '' | . | *[!0-9.]* | *.*.*) return 1 ;;
    esac
    case $1 in
        *[1-9]*) return 0 ;;
    esac
    return 1
}

verbose=0
limit=5
token=${VMCTL_TOKEN:-}
while getopts vt:k:h opt; do
    case $opt in
        v) verbose=1 ;;
        t) limit=$OPTARG ;;
        k) token=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] && [ $# -le 2 ] || usage
url=$1
interval=${2:-1}
case $url in
    http://?* | https://?*) ;;
    *) echo "heartbeat.sh: URL must start with http:// or https:// (got '$url')" >&2; usage ;;
esac
is_seconds "$interval" || { echo "heartbeat.sh: INTERVAL must be a positive number of seconds (got '$interval')" >&2; usage; }
is_seconds "$limit" || { echo "heartbeat.sh: -t needs a positive number of seconds (got '$limit')" >&2; usage; }
url=${url%/}
case $url in
    */api/v1/heartbeat) ;;
    *) url=$url/api/v1/heartbeat ;;
esac
case $url in
    *\?*) sep='&' ;;
    *) sep='?' ;;
esac

client=${HEARTBEAT_CLIENT:-}
if [ -z "$client" ]; then
    for candidate in curl wget fetch; do
        if command -v "$candidate" >/dev/null 2>&1; then
            client=$candidate
            break
        fi
    done
fi
case $client in
    curl | wget | fetch) command -v "$client" >/dev/null 2>&1 || { echo "heartbeat.sh: $client not found" >&2; exit 2; } ;;
    '') echo "heartbeat.sh: needs curl, wget or fetch" >&2; exit 2 ;;
    *) echo "heartbeat.sh: HEARTBEAT_CLIENT must be curl, wget or fetch (got '$client')" >&2; exit 2 ;;
esac

bound=""    # a `timeout` command in front of clients that cannot bound themselves
if command -v timeout >/dev/null 2>&1; then
    bound=timeout
fi
gnu_wget=0
if [ "$client" = wget ] && wget --version 2>/dev/null | grep -q 'GNU Wget'; then
    gnu_wget=1
fi
if [ "$client" = wget ] && [ $gnu_wget -eq 0 ] && [ -z "$bound" ]; then
    log "warning: no 'timeout' command: requests through busybox wget are not bounded"
fi

# One request; prints the client's complaint on failure, returns non-zero.
send() {
    case $client in
        curl)
            curl -fsS -o /dev/null --max-time "$limit" \
                ${token:+-H} ${token:+"Authorization: Bearer $token"} "$1" 2>&1 ;;
        wget)
            if [ $gnu_wget -eq 1 ]; then
                ${bound:+$bound} ${bound:+"$limit"} wget -nv -t 1 -T "$limit" -O /dev/null \
                    ${token:+--header} ${token:+"Authorization: Bearer $token"} "$1" 2>&1
            else
                ${bound:+$bound} ${bound:+"$limit"} wget -q -O /dev/null \
                    ${token:+--header} ${token:+"Authorization: Bearer $token"} "$1" 2>&1
            fi ;;
        fetch)
            # fetch sends no custom header: the token goes into the query.
            fetch -q -T "$limit" -o /dev/null "$1${token:+&token=$token}" 2>&1 ;;
    esac
}

boot=""
if [ -r /proc/sys/kernel/random/uuid ]; then
    boot=$(cut -c1-8 /proc/sys/kernel/random/uuid 2>/dev/null)
fi
[ -n "$boot" ] || boot="$$-$(date +%s 2>/dev/null)"

trap 'log "stopped after seq=$seq"; exit 0' TERM INT HUP

log "sending to $url every $interval s with $client (boot=$boot)"
seq=0
failing=0
failures=0
while :; do
    seq=$((seq + 1))
    if complaint=$(send "$url${sep}seq=$seq&boot=$boot"); then
        if [ $failing -eq 1 ]; then
            log "seq=$seq boot=$boot ok: the controller answers again after $failures failed heartbeat(s)"
        elif [ $verbose -eq 1 ]; then
            log "seq=$seq boot=$boot ok"
        fi
        failing=0
        failures=0
    else
        status=$?
        case $client:$status in
            curl:28 | *:124 | *:143 | *:137) why="no answer within $limit s" ;;
            *) why=$(printf '%s\n' "$complaint" | sed -n '$p')
               [ -n "$why" ] || why="$client exited with status $status" ;;
        esac
        failures=$((failures + 1))
        if [ $failing -eq 0 ] || [ $verbose -eq 1 ]; then
            log "seq=$seq boot=$boot FAIL: $why"
        fi
        failing=1
    fi
    sleep "$interval"
done
