#!/usr/bin/env bash
# Make `systemd-analyze` available: the tests check the unit files in
# etc/systemd with `systemd-analyze verify`, which works on a unit file
# without a running systemd. On a machine without it (a container, a CI
# sandbox) this installs Debian's `systemd` package, which provides it;
# nothing is started. Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf 'setup-systemd-tools: %s\n' "$*" >&2; }

if command -v systemd-analyze >/dev/null 2>&1; then
    exit 0
fi
log "installing systemd (for systemd-analyze verify)"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd
command -v systemd-analyze >/dev/null 2>&1 || { log "systemd-analyze still missing"; exit 1; }
