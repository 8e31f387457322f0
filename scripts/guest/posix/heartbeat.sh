#!/bin/sh
# Tell the Exhibition VM Controller that this guest is alive: one HTTP GET
# to URL/api/v1/heartbeat every INTERVAL seconds, until the script is killed.
#
#   heartbeat.sh [-v] [-t SECONDS] [-k TOKEN] [-p COMMAND] URL [INTERVAL]
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
#   -p COMMAND a progress value with each heartbeat (see below)
#   -v         log every heartbeat; by default only the start, the first
#              failure of a run of failures and the recovery are logged
#
# Each request carries seq=N (1, 2, 3, ... for this run of the script) and
# boot=ID (an id of this run) in its query string, so that whoever reads the
# controller's or the guest's log can tell heartbeats apart and see a revert
# (the guest resumes from the snapshot's memory: seq jumps back, boot stays).
#
# Progress (-p COMMAND): a heartbeat proves that this script runs, not that
# the artwork does. With -p, COMMAND runs (sh -c COMMAND, no input, bounded by
# -t like a request) before each heartbeat, and the first line of what it
# prints goes along as progress=VALUE: percent-encoded (all but A-Z a-z 0-9
# - . _ ~), cut to 128 characters (the controller's limit; bytes that are not
# UTF-8 go as '?'). A command that fails (non-zero exit, or no answer within
# -t) or prints an empty first line sends a heartbeat without progress; that
# is logged once, as is its end. The controller can revert the VM when the
# value has not changed for a while: pick a COMMAND whose output changes as
# long as the artwork plays, e.g.
#   -p 'cat /run/artwork/frame'                      (a counter the artwork writes)
#   -p 'DISPLAY=:0 xdotool getactivewindow getwindowname'   (the window's title)
#
# POSIX sh, busybox ash included. Uses curl if present, else wget (GNU or
# busybox; busybox 1.35's `wget -T` crashes, so its requests are bounded with
# `timeout`), else FreeBSD's fetch; HEARTBEAT_CLIENT=curl|wget|fetch forces
# one; -p also needs cut and od (POSIX; busybox has both). The host being down, refusing or not answering is logged and retried:
# the script never gives up. Exit status 2 only for a usage error.

usage() {
    echo "usage: heartbeat.sh [-v] [-t SECONDS] [-k TOKEN] [-p COMMAND] URL [INTERVAL]" >&2
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
progress_cmd=""
while getopts vt:k:p:h opt; do
    case $opt in
        v) verbose=1 ;;
        t) limit=$OPTARG ;;
        k) token=$OPTARG ;;
        p) progress_cmd=$OPTARG
           [ -n "$progress_cmd" ] || { echo "heartbeat.sh: -p needs a command" >&2; usage; } ;;
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

PROGRESS_MAX=128  # characters: the controller's limit on a progress value

# pe_N: byte N as it goes into a query, for percent_encode (no fork per byte).
progress_table() {
    n=0; for c in 0 1 2 3 4 5 6 7 8 9 A B C D E F; do eval "hx_$n=$c"; n=$((n + 1)); done
    n=0
    while [ $n -lt 256 ]; do
        eval "pe_$n=%\$hx_$((n / 16))\$hx_$((n % 16))"
        n=$((n + 1))
    done
    n=48; for c in 0 1 2 3 4 5 6 7 8 9; do eval "pe_$n=$c"; n=$((n + 1)); done
    n=65; for c in A B C D E F G H I J K L M N O P Q R S T U V W X Y Z; do eval "pe_$n=$c"; n=$((n + 1)); done
    n=97; for c in a b c d e f g h i j k l m n o p q r s t u v w x y z; do eval "pe_$n=$c"; n=$((n + 1)); done
    pe_45=-; pe_46=.; pe_95=_; pe_126='~'
}

# Appends one character (its encoded bytes, $1) to $encoded while there is room.
add_char() {
    if [ $chars -lt $PROGRESS_MAX ]; then
        encoded=$encoded$1
        chars=$((chars + 1))
    fi
}

# Sets $encoded to $1 percent-encoded, cut to PROGRESS_MAX characters. A byte
# that does not belong to a well-formed UTF-8 character becomes '?', one per
# broken sequence, as the controller's decoder would count it (U+FFFD).
percent_encode() {
    encoded=""
    chars=0
    need=0      # continuation bytes still expected for the character in $pending
    pending=""
    lo=128 hi=191  # the range the next continuation byte must be in
    for b in $(printf '%s' "$1" | cut -b 1-$((PROGRESS_MAX * 4)) | od -An -v -tu1); do
        [ "$b" -eq 10 ] && continue  # the newline cut ends its line with
        if [ $need -gt 0 ]; then
            if [ "$b" -ge $lo ] && [ "$b" -le $hi ]; then
                eval "pending=\$pending\$pe_$b"
                need=$((need - 1))
                lo=128 hi=191
                [ $need -eq 0 ] && add_char "$pending"
                continue
            fi
            add_char %3F
            need=0
        fi
        if [ "$b" -lt 128 ]; then
            eval "add_char \"\$pe_$b\""
            continue
        fi
        eval "pending=\$pe_$b"
        lo=128 hi=191
        case $b in
            19[4-9] | 20[0-9] | 21[0-9] | 22[0-3]) need=1 ;;
            224) need=2 lo=160 ;;
            237) need=2 hi=159 ;;
            22[5-9] | 23[0-9]) need=2 ;;
            240) need=3 lo=144 ;;
            24[1-3]) need=3 ;;
            244) need=3 hi=143 ;;
            *) add_char %3F ;;
        esac
    done
    [ $need -eq 0 ] || add_char %3F
}

cr=$(printf '\r')
progress_state=""  # what the command did last time: "", ok, or why it gave no value

# Sets $progress to the encoded first line of what the -p command prints, or
# to "" when it fails or prints nothing; logs when that changes.
read_progress() {
    progress=""
    # Through a file, not $(...): busybox's timeout ends the shell but not what
    # it started, which would hold a pipe open and the heartbeats with it.
    if ${bound:+$bound} ${bound:+"$limit"} sh -c "$progress_cmd" </dev/null >"$progress_file" 2>/dev/null; then
        line=""
        IFS= read -r line <"$progress_file" || :
        line=${line%"$cr"}
        if [ -n "$line" ]; then
            percent_encode "$line"
            progress=$encoded
            state=ok
        else
            state="the command printed nothing"
        fi
    else
        status=$?
        case $status in
            124 | 143 | 137) state="the command failed (no output within $limit s)" ;;
            *) state="the command failed (exit status $status)" ;;
        esac
    fi
    if [ "$state" != "$progress_state" ]; then
        if [ "$state" != ok ]; then
            log "progress: $state: heartbeats go without progress"
        elif [ -n "$progress_state" ]; then
            log "progress: the command prints a value again"
        fi
        progress_state=$state
    fi
}

boot=""
if [ -r /proc/sys/kernel/random/uuid ]; then
    boot=$(cut -c1-8 /proc/sys/kernel/random/uuid 2>/dev/null)
fi
[ -n "$boot" ] || boot="$$-$(date +%s 2>/dev/null)"

progress_file=""
if [ -n "$progress_cmd" ]; then
    progress_file=$(mktemp "${TMPDIR:-/tmp}/heartbeat-progress.XXXXXX" 2>/dev/null) \
        || { echo "heartbeat.sh: -p needs a temporary file in ${TMPDIR:-/tmp} (set TMPDIR)" >&2; exit 2; }
    [ -n "$bound" ] || log "warning: no 'timeout' command: the progress command is not bounded"
    progress_table
fi

trap 'log "stopped after seq=$seq"; [ -z "$progress_file" ] || rm -f "$progress_file"; exit 0' TERM INT HUP

log "sending to $url every $interval s with $client (boot=$boot)${progress_cmd:+; progress from: $progress_cmd}"
seq=0
failing=0
failures=0
progress=""
while :; do
    seq=$((seq + 1))
    [ -z "$progress_cmd" ] || read_progress
    if complaint=$(send "$url${sep}seq=$seq&boot=$boot${progress:+&progress=$progress}"); then
        if [ $failing -eq 1 ]; then
            log "seq=$seq boot=$boot ok: the controller answers again after $failures failed heartbeat(s)"
        elif [ $verbose -eq 1 ]; then
            log "seq=$seq boot=$boot ok${progress:+ progress=$progress}"
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
