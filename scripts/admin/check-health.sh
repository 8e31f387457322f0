#!/bin/sh
# Health check of an Exhibition VM Controller, with Nagios plugin exit codes,
# for Nagios/Icinga or for cron:
#   check-health.sh [-u URL] [-w SECONDS] [-c SECONDS] [-t SECONDS]
#     -u URL      the controller (default: $VMCTL_URL, else the controller's config)
#     -w SECONDS  WARNING when the last heartbeat is older (default: the
#                 controller's heartbeat_timeout, i.e. whenever it is not healthy)
#     -c SECONDS  CRITICAL when the last heartbeat is older (default 60)
#     -t SECONDS  how long to wait for the controller (default 10)
# Prints one line, "VMCTL <STATE> - <what is wrong or what is fine> | perfdata",
# and exits with
#   0 OK        the VM runs, heartbeats are fresh, recovery is armed;
#   1 WARNING   maintenance mode, a stop by staff, heartbeats late, controller starting;
#   2 CRITICAL  controller unreachable, VM down and nobody recovering it, the
#               restart-loop guard tripped, the reference snapshot missing,
#               heartbeats older than -c;
#   3 UNKNOWN   the check itself failed (bad option, token refused, odd answer).
# From cron, for a mail when something is wrong:
#   */5 * * * * /opt/exhibition-vm-controller/scripts/admin/check-health.sh >/dev/null || echo problem
. "$(dirname "$0")/common.sh"

OK=0 WARNING=1 CRITICAL=2 UNKNOWN=3
say() {  # STATE TEXT [PERFDATA]
    case $1 in 0) word=OK ;; 1) word=WARNING ;; 2) word=CRITICAL ;; *) word=UNKNOWN ;; esac
    echo "VMCTL $word - $2${3:+ | $3}"
    exit "$1"
}
usage() { say $UNKNOWN "usage: check-health.sh [-u URL] [-w SECONDS] [-c SECONDS] [-t SECONDS]"; }
is_number() { case $1 in '' | . | *[!0-9.]* | *.*.*) return 1 ;; esac; return 0; }

url=""
warn=""
crit=60
limit=10
while getopts u:w:c:t:h opt; do
    case $opt in
        u) url=$OPTARG ;;
        w) warn=$OPTARG; is_number "$warn" || usage ;;
        c) crit=$OPTARG; is_number "$crit" || usage ;;
        t) limit=$OPTARG; is_number "$limit" || usage ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage
vmctl=$(find_vmcontroller) || say $UNKNOWN "vmcontroller not found (set VMCTL)"

answer=$("$vmctl" status ${url:+--url} ${url:+"$url"} --timeout "$limit" \
    --field vm_name --field vm_state --field snapshot_exists --field auto_revert_enabled \
    --field stopped_by_staff --field heartbeat.is_healthy --field heartbeat.seconds_since_last \
    --field heartbeat.timeout --field recovery.guard.state --field recovery.guard.recent_recoveries \
    --field recovery.count 2>&1)
case $? in
    0) ;;
    3) say $CRITICAL "controller unreachable: ${answer#vmcontroller: }" ;;
    1) case $answer in
           *"(HTTP 503)"*) say $WARNING "controller starting: ${answer#vmcontroller: }" ;;
           *) say $UNKNOWN "the controller refused the check: ${answer#vmcontroller: }" ;;
       esac ;;
    *) say $UNKNOWN "$(printf '%s\n' "$answer" | tail -n 1)" ;;
esac
{
    read -r vm; read -r state; read -r snapshot; read -r auto; read -r staff
    read -r healthy; read -r since; read -r timeout; read -r guard; read -r recent; read -r count
} <<FIELDS
$answer
FIELDS
[ -n "$warn" ] || warn=$timeout
older() { [ "$since" != null ] && awk -v a="$since" -v b="$1" 'BEGIN { exit !(a > b) }'; }

worst=$OK
problems=""
report() {  # STATE TEXT
    [ "$1" -gt "$worst" ] && worst=$1
    problems="${problems:+$problems; }$2"
}
if [ "$guard" = failed ]; then
    report $CRITICAL "recovery guard tripped: automatic recovery stopped until staff start or restart the VM"
fi
if [ "$snapshot" != true ]; then
    report $CRITICAL "reference snapshot missing: no recovery possible"
fi
if [ "$staff" = true ]; then
    report $WARNING "VM stopped by staff"
elif [ "$state" != running ]; then
    if [ "$auto" = true ]; then report $CRITICAL "VM is $state"
    else report $WARNING "VM is $state"; fi
fi
if [ "$auto" != true ]; then
    report $WARNING "maintenance mode (automatic revert disabled)"
fi
if [ "$staff" != true ] && [ "$state" = running ]; then
    if [ "$since" = null ]; then
        report $WARNING "no heartbeat since the controller started"
    elif older "$crit" && [ "$auto" = true ]; then
        report $CRITICAL "last heartbeat $since s ago (critical above $crit s)"
    elif older "$warn" || [ "$healthy" != true ]; then
        report $WARNING "last heartbeat $since s ago (not healthy)"
    fi
fi

value=$since
[ "$since" != null ] || value=U   # Nagios: no value
perf="since_last=${value}s;$warn;$crit;0 recoveries=${count}c recent_recoveries=$recent;;;0"
if [ $worst -eq $OK ]; then
    say $OK "$vm running, last heartbeat $since s ago, $recent recent recoveries" "$perf"
fi
say $worst "$vm: $problems" "$perf"
