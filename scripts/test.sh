#!/usr/bin/env bash
# Runs every test suite of ferry: unit tests, loopback transfer tests, the
# root suite (loop devices, mounts, chroot) and the QEMU boot suite.
# As root on Debian it first installs the system packages the suites need
# (scripts/packages.txt). Artifacts (serial logs, screenshots) go to
# ./artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."


if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    mapfile -t pkgs < <(grep -Ev '^\s*(#|$)' scripts/packages.txt)
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        # Where the machine's qemu-utils comes from bookworm-backports, the
        # QEMU system emulator must be of the same version (bookworm's 7.2
        # conflicts with it): take it and what it needs from backports.
        if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo12'; then
            if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d; then
                # The mirror is the one the machine already uses for bookworm.
                uri=$(bash scripts/debian-mirror.sh)
                printf '%s\n' 'Types: deb' "URIs: $uri" \
                    'Suites: bookworm-backports' 'Components: main' \
                    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
                    > /etc/apt/sources.list.d/bookworm-backports.sources
            fi
            for i in "${!missing[@]}"; do
                if [ "${missing[$i]}" = qemu-system-x86 ]; then
                    missing[$i]=qemu-system-x86/bookworm-backports
                    missing+=(qemu-system-common/bookworm-backports
                        qemu-system-data/bookworm-backports seabios/bookworm-backports)
                fi
            done
        fi
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

mkdir -p artifacts
export FERRY_ARTIFACTS="$PWD/artifacts"
# Debootstraps and source images are cached by a hash of their recipe
# outside the checkout, so a fresh clone on the same machine (CI's) reuses
# them; remove the directory to reclaim the space.
if [ -z "${FERRY_CACHE:-}" ] && [ "$(id -u)" = 0 ]; then
    export FERRY_CACHE=/var/cache/ferry-test
fi
cargo build --release --locked
threads=${FERRY_TEST_THREADS:-2}
status=0
# The sender's release (glibc 2.17, built by zig): the release tests, the
# old-kernel and old-userland tests and the appliance image use it. Built
# here once, before the suites that share it.
bash scripts/release.sh >/dev/null || status=1
# Unit tests, the loopback suite and the docs' examples.
cargo test --release --locked --no-fail-fast --lib --bins --test it -- --test-threads="$threads" || status=1
cargo test --release --locked --no-fail-fast --doc || status=1
# The root suite one test at a time: its tests attach loop devices, add
# and remove partition nodes and freeze file systems, each written to run
# beside the others of its own module, not beside every other module's.
cargo test --release --locked --no-fail-fast --test root -- --test-threads=1 || status=1
cargo test --release --locked --no-fail-fast --test qemu -- --test-threads="$threads" || status=1
exit "$status"
