# Sourced by the admin scripts: finds the `vmcontroller` command.
# $VMCTL if set, else `vmcontroller` on PATH (the Debian package's), else the
# one installed in this checkout's .venv, else /opt/exhibition-vm-controller
# (where earlier versions of the README installed it).
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

# Whether $1 is a name the admin scripts accept for a snapshot prefix or an
# instance: letters, digits, '.', '_' or '-', starting with a letter or digit.
is_name() {
    case $1 in
        '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
}

# The value of a top-level key of a YAML config (a file, or `vmcontroller
# check-config`'s output) read from stdin: a plain, single- or double-quoted
# scalar on the key's line, a trailing comment dropped; empty for null.
config_value() {
    sed -n "s/^$1:[[:space:]]*//p" | head -n1 | sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' \
        -e "s/^'\\(.*\\)'\$/\\1/" -e "s/''/'/g" -e 's/^"\(.*\)"$/\1/' -e 's/^null$//' -e 's/^~$//'
}

# Copy a large file with progress on stderr, holes kept where the target's
# file system allows: to TARGET.partial first, renamed once complete, so an
# interrupted copy never looks like a finished one.
copy_large() {
    rm -f "$2.partial"
    dd if="$1" of="$2.partial" bs=4M conv=sparse,fsync status=progress || {
        rm -f "$2.partial"
        return 1
    }
    mv -f "$2.partial" "$2"
}
