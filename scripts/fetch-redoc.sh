#!/usr/bin/env bash
# Fetch ReDoc's standalone bundle into the package, for the offline /redoc page.
#
# Why: exhibition PCs have no internet, so /redoc cannot load ReDoc from a CDN
# and flasgger bundles no ReDoc. The files this script writes are committed;
# run it again only to move to another ReDoc version (change REDOC_VERSION and
# REDOC_INTEGRITY together, then check the notes below still hold).
#
# What it does: `npm pack redoc@$REDOC_VERSION` into a temporary directory
# (npm checks the tarball against the registry's integrity hash; this script
# checks it again against the pinned one), extracts it and copies into
# vmcontroller/static/redoc/:
#   redoc.standalone.js              the bundle the /redoc page loads
#   LICENSE                          ReDoc's MIT licence
#   redoc.standalone.js.LICENSE.txt  licence notices of the code bundled in it
#   VERSION                          the version and sha256 of the files above
#
# Checked for 2.5.4: the bundle loads no fonts (its default theme names
# "Roboto" and "Montserrat" but links no stylesheet; the /redoc page sets local
# font stacks anyway). Its sidebar shows a Redocly logo image from a CDN
# (cdn.redoc.ly); the /redoc page's Content-Security-Policy (img-src 'self'
# data:) keeps the browser from requesting it and ReDoc hides the image.
# ReDoc 3.x loads icons from cdn.redocly.com at run time, hence 2.x.
#
# Needs: npm (talks to the npm registry), tar, sha256sum, openssl, base64.
# Usage: scripts/fetch-redoc.sh
set -euo pipefail

REDOC_VERSION="2.5.4"
REDOC_INTEGRITY="sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ=="

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$(cd "$here/.." && pwd)/vmcontroller/static/redoc"

log() { printf 'fetch-redoc: %s\n' "$*" >&2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "npm pack redoc@$REDOC_VERSION in $tmp"
tarball="$(cd "$tmp" && npm pack --silent "redoc@$REDOC_VERSION" | tail -n 1)"
tarball="$tmp/$tarball"

actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w 0)"
if [ "$actual" != "$REDOC_INTEGRITY" ]; then
    log "integrity mismatch for $tarball"
    log "  expected $REDOC_INTEGRITY"
    log "  got      $actual"
    exit 1
fi
log "integrity ok ($REDOC_INTEGRITY)"

tar -xzf "$tarball" -C "$tmp"
pkg="$tmp/package"
packed_version="$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$pkg/package.json" | head -n 1)"
if [ "$packed_version" != "$REDOC_VERSION" ]; then
    log "package.json says version $packed_version, expected $REDOC_VERSION"
    exit 1
fi

mkdir -p "$dest"
for src in bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt LICENSE; do
    install -m 0644 "$pkg/$src" "$dest/$(basename "$src")"
    log "copied $src -> $dest/$(basename "$src")"
done

if grep -q 'fonts.googleapis' "$dest/redoc.standalone.js"; then
    log "WARNING: this bundle mentions fonts.googleapis.com: check /redoc offline"
fi

{
    printf 'redoc %s (npm, %s)\n' "$REDOC_VERSION" "$REDOC_INTEGRITY"
    (cd "$dest" && sha256sum redoc.standalone.js redoc.standalone.js.LICENSE.txt LICENSE)
} > "$dest/VERSION"
log "wrote $dest/VERSION:"
sed 's/^/    /' "$dest/VERSION" >&2
