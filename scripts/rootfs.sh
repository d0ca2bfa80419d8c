#!/usr/bin/env bash
# Prints the path of a tarball holding a Debian bookworm root file system as
# a plain physical server would have it: minbase, the generic kernel,
# initramfs-tools, systemd, ifupdown and the GRUB of its firmware.
#
#   scripts/rootfs.sh bios|uefi
#
# The tarball is cached under $FERRY_CACHE (default: .cache/ in the
# repository), named by a hash of this recipe, so a second run fetches
# nothing. Builds take a lock and publish with an atomic rename, so callers
# running at the same time neither build twice nor see a half-written file.
# Unpack with:
#   tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf TARBALL -C DIR
set -euo pipefail

# Bump when the build steps below change in a way the package list does not show.
RECIPE_VERSION=3
SUITE=bookworm
MIRROR=${FERRY_DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "rootfs.sh: $*" >&2; exit 1; }

variant=${1:-}
case "$variant" in
    bios) grub=grub-pc ;;
    uefi) grub=grub-efi-amd64 ;;
    *) die "usage: rootfs.sh bios|uefi" ;;
esac

# isc-dhcp-client: ifupdown's DHCP client, which a repaired server needs for
# "inet dhcp". iproute2: the boot marker reads addresses with `ip`.
packages=(
    linux-image-amd64 initramfs-tools systemd-sysv udev kmod
    ifupdown isc-dhcp-client iproute2 e2fsprogs "$grub"
)
include=$(IFS=,; echo "${packages[*]}")

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FERRY_CACHE:-$repo/.cache}
key=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$variant" "${packages[@]}" | sha256sum | cut -c1-16)
out="$cache/rootfs/$SUITE-$variant-$key.tar.zst"

if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the root file system needs root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
command -v zstd >/dev/null || die "zstd is not installed (apt-get install zstd)"

mkdir -p "$cache/rootfs" "$cache/debs"
# One build at a time: the .deb cache is shared between variants, and two
# debootstraps on two cores are slower than one after the other.
exec 9>"$cache/rootfs/.build.lock"
flock 9
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache/rootfs/.build-XXXXXX")
cleanup() {
    # debootstrap may leave proc/sys mounted on failure; never delete a tree
    # that still has something mounted inside it.
    local m
    for m in $(awk -v d="$work/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if awk -v d="$work/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        echo "rootfs.sh: leaving $work: something is still mounted in it" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "rootfs.sh: debootstrap $SUITE ($variant): ${packages[*]}" >&2
DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$include" \
    --cache-dir="$cache/debs" "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 40 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

root="$work/root"
# debootstrap points apt at the mirror it used; a server has its suite's
# updates and security lines too, harmless for a fixture that never upgrades.
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages
# The image script sets these per server.
: >"$root/etc/hostname"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
: >"$root/etc/machine-id"

tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -I 'zstd -T0 -3' -cf "$work/rootfs.tar.zst" .
mv -f "$work/rootfs.tar.zst" "$out"
echo "$out"
