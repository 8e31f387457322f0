# Sourced by the admin scripts: finds the `vmcontroller` command.
# $VMCTL if set, else `vmcontroller` on PATH, else the one installed in this
# checkout's .venv, else the documented install path.
find_vmcontroller() {
    if [ -n "${VMCTL:-}" ]; then
        echo "$VMCTL"
        return 0
    fi
    here=$(cd "$(dirname "$0")" && pwd)
    for candidate in "$(command -v vmcontroller 2>/dev/null || true)" \
            "$here/../../.venv/bin/vmcontroller" \
            /opt/exhibition-vm-controller/bin/vmcontroller; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
