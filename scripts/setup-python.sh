#!/usr/bin/env bash
# Create .venv in the repository and install the controller with its test
# dependencies into it, its runtime libraries at exactly the versions Debian 12
# ships (requirements/debian12.txt: the Debian package runs on those).
# Idempotent; reinstalls only when setup.cfg, setup.py or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { printf 'setup-python: %s\n' "$*" >&2; }

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "installing python3"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    log "Python >= 3.10 is needed; $("$PYTHON" --version 2>&1) found"
    exit 1
fi
# Debian and Ubuntu ship venv's pip bootstrap in a separate package.
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3-venv"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi
constraints=requirements/debian12.txt
stamp=.venv/.installed-$(cat setup.cfg setup.py "$constraints" | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    log "installing vmcontroller and its test dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -c "$constraints" -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# Coverage of Python processes the tests start (scripts/test): a .pth file runs at every
# start of .venv's Python and starts coverage.py there only while COVERAGE_PROCESS_START
# names a configuration; without it, it costs one environment look-up.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$site/vmcontroller-coverage.pth"
line='import os; os.environ.get("COVERAGE_PROCESS_START") and __import__("coverage").process_startup()'
if [ "$(cat "$pth" 2>/dev/null)" != "$line" ]; then
    printf '%s\n' "$line" > "$pth"
fi
