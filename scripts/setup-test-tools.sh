#!/usr/bin/env bash
# Install the programs some tests check the project's files with, where
# missing, from the distribution's packages; nothing is started. Idempotent.
#   systemd-analyze  `verify` on the unit files in etc/systemd (works without
#                    a running systemd: containers and CI sandboxes have none)
#   nginx            `nginx -t` on etc/nginx, and a TLS proxy run on loopback
#   openssl          a throw-away certificate for that proxy
#   Xvfb, virt-viewer, matchbox-window-manager, xwd, xwininfo, convert
#                    the gallery screen's test (tests/test_display.py): an X
#                    server without hardware, the kiosk session's programs, and
#                    screenshots of the X screen turned into PNG
#   prometheus, promtool
#                    tests/test_metrics.py: `promtool test rules` on the alert
#                    rules in etc/prometheus, and a real Prometheus (started by
#                    the test on loopback) scraping a controller's /metrics
#   chromium         tests/test_dashboard.py: the dashboard in a real headless
#                    browser, driven by playwright-python (setup.cfg's test
#                    extra) through executable_path, never `playwright install`
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf 'setup-test-tools: %s\n' "$*" >&2; }

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v virt-viewer >/dev/null 2>&1 || missing+=(virt-viewer)
command -v matchbox-window-manager >/dev/null 2>&1 || missing+=(matchbox-window-manager)
command -v xwd >/dev/null 2>&1 || missing+=(x11-apps)
command -v xwininfo >/dev/null 2>&1 || missing+=(x11-utils)
[ -x /usr/bin/convert ] || missing+=(imagemagick)
{ [ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ]; } || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ "${#missing[@]}" -eq 0 ] && exit 0

log "installing ${missing[*]}"
$SUDO apt-get update -q
# policy-rc.d keeps the nginx and prometheus packages from starting their own
# servers (nginx on port 80, prometheus on 9090): the tests start their own.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created_policy=1
fi
status=0
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" || status=$?
[ "$created_policy" -eq 1 ] && $SUDO rm -f "$policy"
[ "$status" -eq 0 ] || exit "$status"
command -v systemd-analyze >/dev/null 2>&1 || { log "systemd-analyze still missing"; exit 1; }
