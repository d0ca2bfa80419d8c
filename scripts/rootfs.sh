#!/usr/bin/env bash
# Prints the path of a tarball holding a Debian root file system as a plain
# physical server would have it: minbase, the generic kernel,
# initramfs-tools, systemd, ifupdown and the GRUB of its firmware.
#
#   scripts/rootfs.sh bios|uefi [SUITE [PACKAGE|-PACKAGE]...]
#
# SUITE defaults to bookworm. Each PACKAGE is installed with apt-get after
# debootstrap (so one may replace a base package it conflicts with, as
# dracut replaces initramfs-tools); each -PACKAGE is left out of the base
# set, or purged after the installation when something else pulled it in.
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
MIRROR=$(bash "$(dirname "$0")/debian-mirror.sh")

die() { echo "rootfs.sh: $*" >&2; exit 1; }

variant=${1:-}
case "$variant" in
    bios) grub=grub-pc ;;
    uefi) grub=grub-efi-amd64 ;;
    *) die "usage: rootfs.sh bios|uefi [SUITE [PACKAGE|-PACKAGE]...]" ;;
esac
SUITE=${2:-bookworm}
case "$SUITE" in
    bullseye | bookworm | trixie) ;;
    *) die "unknown suite $SUITE (bullseye, bookworm or trixie)" ;;
esac
shift $(($# > 2 ? 2 : $#))
extra=() drop=()
for p in "$@"; do
    case "$p" in
        -*) drop+=("${p#-}") ;;
        *) extra+=("$p") ;;
    esac
done

# isc-dhcp-client: ifupdown's DHCP client, which a repaired server needs for
# "inet dhcp". iproute2: the boot marker reads addresses with `ip`.
packages=(
    linux-image-amd64 initramfs-tools systemd-sysv udev kmod
    ifupdown isc-dhcp-client iproute2 e2fsprogs "$grub"
)
base=()
for p in "${packages[@]}"; do
    for d in "${drop[@]}"; do [ "$p" = "$d" ] && continue 2; done
    base+=("$p")
done
include=$(IFS=,; echo "${base[*]}")

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FERRY_CACHE:-$repo/.cache}
# The plain bookworm systems keep the key they always had.
keyed=("${packages[@]}")
if [ ${#extra[@]} -gt 0 ] || [ ${#drop[@]} -gt 0 ]; then
    keyed=("${base[@]}" "+" "${extra[@]}" "-" "${drop[@]}")
fi
key=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$variant" "${keyed[@]}" | sha256sum | cut -c1-16)
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

echo "rootfs.sh: debootstrap $SUITE ($variant): ${base[*]}" >&2
# The .deb cache holds one suite's packages; another suite's debootstrap
# would mistake them for its own.
debs="$cache/debs"
[ "$SUITE" = bookworm ] || debs="$cache/debs-$SUITE"
mkdir -p "$debs"
DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$include" \
    --cache-dir="$debs" "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 40 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

root="$work/root"
if [ ${#extra[@]} -gt 0 ] || [ ${#drop[@]} -gt 0 ]; then
    echo "rootfs.sh: apt-get install ${extra[*]} (without ${drop[*]})" >&2
    # Maintainer scripts start no services in a chroot, and the kernel hooks
    # of an initramfs generator need /proc and a few device nodes.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    mount -t tmpfs -o mode=0755 dev "$root/dev"
    for n in null zero full random urandom tty console; do cp -a "/dev/$n" "$root/dev/"; done
    in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
    apt_failed() { tail -n 40 "$work/apt.log" >&2; die "installing ${extra[*]} failed (log above)"; }
    in_root apt-get update >"$work/apt.log" 2>&1 || apt_failed
    if [ ${#extra[@]} -gt 0 ]; then
        in_root apt-get install -y --no-install-recommends "${extra[@]}" >>"$work/apt.log" 2>&1 || apt_failed
    fi
    for d in "${drop[@]}"; do
        if in_root dpkg-query -W -f '${Status}' "$d" 2>/dev/null | grep -q 'ok installed'; then
            in_root apt-get purge -y "$d" >>"$work/apt.log" 2>&1 || apt_failed
        fi
    done
    in_root apt-get clean >>"$work/apt.log" 2>&1 || apt_failed
    umount "$root/dev" "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
fi
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
