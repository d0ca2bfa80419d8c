#!/usr/bin/env bash
# Prints the URI of the Debian archive this machine's apt already uses for
# bookworm (deb822 .sources first, then one-line .list entries), so that
# debootstrap and extra suites come from the same mirror wherever the
# machine is. FERRY_DEBIAN_MIRROR overrides it. Exits 1 with a hint when
# no such source is configured.
set -euo pipefail

if [ -n "${FERRY_DEBIAN_MIRROR:-}" ]; then
    echo "$FERRY_DEBIAN_MIRROR"
    exit 0
fi

from_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; bookworm = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, u, /[ \t]+/); uri = u[2] }
                    if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) bookworm = 1
                }
                if (bookworm && uri != "") { print uri; exit }
            }' "$f"
    done
}

from_lists() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" {
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^\[/ || $i ~ /\]$/) continue
                if ($(i + 1) == "bookworm") { print $i; exit }
                break
            }
        }'
}

# Each reader prints at most one URI per file; the first found wins.
uri=$(from_sources || true)
uri=${uri%%$'\n'*}
if [ -z "$uri" ]; then
    uri=$(from_lists || true)
fi
if [ -z "$uri" ]; then
    echo "debian-mirror.sh: no apt source for Debian bookworm is configured" >&2
    echo "hint: set FERRY_DEBIAN_MIRROR to the archive's URI, or add a bookworm source to /etc/apt/sources.list.d" >&2
    exit 1
fi
echo "$uri"
