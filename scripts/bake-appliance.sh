#!/usr/bin/env bash
# Bakes the image of a migration's intermediate instance: a raw disk with
# Debian bookworm, booting through BIOS and GRUB (serial console ttyS0), the
# cloud kernel, cloud-init (NoCloud), DHCP by systemd-networkd, every tool
# ferry runs, ferry itself at /usr/local/bin/ferry and its unit at
# /etc/systemd/system/ferry.service, not enabled: cloud-init writes the job's
# /etc/ferry/ferry.toml and starts it (systemd/cloud-init/user-data.yaml).
# Nothing job-specific is inside: no token, no TLS key, an empty
# /var/lib/ferry, no machine id, no cloud-init state.
#
#   scripts/bake-appliance.sh [OUT_DIR]      prints the image path on its last line
#
# The image carries the sender's release that scripts/release.sh wrote to
# FERRY_RELEASE (default dist/): its tarball and SHA256SUMS go to
# /usr/lib/ferry/sender, which ferry serves on 8080 (GET /v1/sender/<file>),
# and its binary is the appliance's ferry, so one build runs on both sides.
# FERRY_BIN names another ferry binary for the appliance. Two
# stages, each cached under $FERRY_CACHE (default .cache/ in the repository)
# by a hash of what goes into it, built under a lock and published by an
# atomic rename: the debootstrap of the package list below (rarely rebuilt),
# and the image, keyed by this script, the unit and the binary. OUT_DIR
# defaults to $FERRY_CACHE/appliance.
set -euo pipefail

# Bump when the debootstrap stage changes in a way the package list does not show.
ROOTFS_VERSION=1
SUITE=bookworm
MIRROR=$(bash "$(dirname "$0")/debian-mirror.sh")
IMAGE_SIZE_MIB=2048
HOSTNAME_DEFAULT=ferry-appliance

die() { echo "bake-appliance.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${FERRY_CACHE:-$repo/.cache}
out_dir=${1:-$cache/appliance}
release=${FERRY_RELEASE:-$repo/dist}
[ -s "$release/SHA256SUMS" ] || die "no sender release in $release (bash scripts/release.sh, or set FERRY_RELEASE)"
tarball=$(awk '$2 ~ /\.tar\.gz$/ { sub(/^\*/, "", $2); print $2; exit }' "$release/SHA256SUMS")
[ -n "$tarball" ] && [ -s "$release/$tarball" ] || die "$release/SHA256SUMS names no tarball that is there"
(cd "$release" && sha256sum --quiet -c SHA256SUMS) || die "$release/$tarball does not match its SHA256SUMS"
ferry_bin=${FERRY_BIN:-$release/${tarball%.tar.gz}/ferry}
unit="$repo/systemd/ferry.service"

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, loop devices, mounts, chroot)"
for tool in debootstrap sfdisk partx losetup mkfs.ext4 blkid zstd flock; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see scripts/packages.txt)"
done
[ -x "$ferry_bin" ] || die "no ferry binary at $ferry_bin (bash scripts/release.sh, or set FERRY_BIN)"
[ -s "$unit" ] || die "no unit at $unit"

# The appliance's system. Beside the boot essentials: cloud-init and what it
# uses; the tools ferry runs on the host side (src/cmd.rs package_of) and the
# file systems it makes, checks and grows; GRUB's BIOS and EFI images for
# repairs that install a boot loader; QEMU and OVMF for the boot test.
packages=(
    linux-image-cloud-amd64 initramfs-tools systemd-sysv udev kmod dbus
    systemd-resolved iproute2 cloud-init cloud-guest-utils
    # debootstrap does not resolve virtual packages: python3-cryptography (of
    # cloud-init) needs python3-cffi-backend-api-{min,max}.
    python3-cffi-backend
    grub-pc grub-pc-bin grub-efi-amd64-bin grub2-common
    e2fsprogs xfsprogs btrfs-progs dosfstools mtools fdisk gdisk util-linux mount
    # LVM sources: ferry grows a guest's PV and LV with lvm under a private
    # configuration (the appliance's own LVM is kept blind, below).
    lvm2
    cpio zstd coreutils
    # The boot test: the repaired disks booted under QEMU before the handoff.
    qemu-system-x86 qemu-utils ovmf
    # Windows system disks: NTFS through FUSE (ntfs-3g, ntfsresize, ntfsfix),
    # registry hives read and written offline (hivexsh).
    ntfs-3g libhivex-bin
)
include=$(IFS=,; echo "${packages[*]}")

# ---- stage 1: the debootstrap -------------------------------------------------
rootfs_key=$(printf '%s\n' "$ROOTFS_VERSION" "$SUITE" "${packages[@]}" | sha256sum | cut -c1-16)
rootfs="$cache/appliance/rootfs-$SUITE-$rootfs_key.tar.zst"
mkdir -p "$cache/appliance" "$cache/debs" "$cache/rootfs" "$out_dir"

# Unmounts everything under $1 (deepest first); fails if something stays.
umount_under() {
    local m
    for m in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        for _ in 1 2 3 4 5; do
            umount "$m" 2>/dev/null && break
            sleep 0.5
        done
    done
    ! awk -v d="$1/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

work=""
loop=""
cleanup() {
    [ -n "$work" ] || return 0
    local kept=""
    umount_under "$work" || kept=1
    if [ -n "$loop" ]; then
        partx -d "$loop" 2>/dev/null || true
        losetup -d "$loop" 2>/dev/null || echo "bake-appliance.sh: could not detach $loop" >&2
    fi
    if [ -n "$kept" ]; then
        echo "bake-appliance.sh: leaving $work: something is still mounted in it" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

if [ ! -s "$rootfs" ]; then
    # The same lock as scripts/rootfs.sh: one debootstrap at a time on the
    # shared .deb cache.
    exec 9>"$cache/rootfs/.build.lock"
    flock 9
    if [ ! -s "$rootfs" ]; then
        work=$(mktemp -d "$cache/appliance/.rootfs-XXXXXX")
        echo "bake-appliance.sh: debootstrap $SUITE: ${packages[*]}" >&2
        start=$SECONDS
        DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$include" \
            --cache-dir="$cache/debs" "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
            || { tail -n 20 "$work/debootstrap.log" >&2
                 tail -n 40 "$work/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
                 die "debootstrap failed (logs above)"; }
        umount_under "$work" || die "debootstrap left mounts under $work"
        printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$work/root/etc/apt/sources.list"
        rm -f "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*_Packages
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$work/root" -I 'zstd -T0 -3' \
            -cf "$work/rootfs.tar.zst" .
        mv -f "$work/rootfs.tar.zst" "$rootfs"
        echo "bake-appliance.sh: debootstrap took $((SECONDS - start)) s" >&2
        cleanup
        work=""
    fi
    exec 9>&-
fi

# ---- stage 2: the image -------------------------------------------------------
key=$(cat "$0" "$unit" <(sha256sum <"$ferry_bin") "$release/SHA256SUMS" <(basename "$rootfs") | sha256sum | cut -c1-16)
out="$out_dir/ferry-appliance-$key.img"
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi
exec 9>"$out_dir/.bake.lock"
flock 9
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi

start=$SECONDS
work=$(mktemp -d "$out_dir/.bake-XXXXXX")
mnt="$work/root"
mkdir -p "$mnt"
img="$work/disk.img"
truncate -s "${IMAGE_SIZE_MIB}M" "$img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img"
loop=$(losetup -f --show "$img")
# The kernel scans no partition tables here: add the node by BLKPG.
partx -a "$loop" || die "partx -a $loop failed"
part="${loop}p1"
[ -b "$part" ] || die "partition node $part did not appear after partx -a"
mkfs.ext4 -q -L ferry-root "$part"
root_uuid=$(blkid -s UUID -o value "$part")
[ -n "$root_uuid" ] || die "no UUID on $part"
mount "$part" "$mnt"
tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$rootfs" -C "$mnt"

# -- identity: none yet; cloud-init and systemd make it on first boot
echo "$HOSTNAME_DEFAULT" >"$mnt/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$HOSTNAME_DEFAULT" >"$mnt/etc/hosts"
: >"$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id"
rm -rf "$mnt/var/lib/cloud" && mkdir -p "$mnt/var/lib/cloud"
printf '# /etc/fstab: static file system information.\nUUID=%s / ext4 errors=remount-ro 0 1\n' \
    "$root_uuid" >"$mnt/etc/fstab"

# -- LVM: the appliance has no volume group of its own, and the target disks
# carry the guests'. Its own LVM (udev's pvscan, lvm2-monitor, any lvm
# command run without ferry's private LVM_SYSTEM_DIR) sees no device at all,
# so it never activates, caches or clashes with a guest's VG (two VGs of
# the same name, a guest's system.devices); ferry's commands carry their
# own configuration, which accepts only the PV they work on.
cat >"$mnt/etc/lvm/lvm.conf" <<'EOF'
# ferry appliance: this system's LVM sees no device (see bake-appliance.sh).
devices {
	global_filter = [ "r|.*|" ]
	use_devicesfile = 0
	scan_lvs = 0
}
global {
	event_activation = 0
	use_lvmpolld = 0
}
activation {
	auto_activation_volume_list = [ ]
	monitoring = 0
}
backup {
	backup = 0
	archive = 0
}
EOF
rm -f "$mnt/etc/lvm/devices/system.devices"

# -- udev: no re-read of a disk's table when a writer closes it. udev
# watches block devices and, on the close of one opened for writing,
# re-reads its partition table: the target's partitions vanish and come
# back while ferry grows or checks them. ferry makes the nodes it needs.
mkdir -p "$mnt/etc/udev/rules.d"
cat >"$mnt/etc/udev/rules.d/99-ferry-nowatch.rules" <<'EOF'
# ferry appliance: target disks are written by ferry alone (see bake-appliance.sh).
ACTION=="add|change", SUBSYSTEM=="block", OPTIONS+="nowatch"
EOF

# -- network: DHCP on every Ethernet NIC, names by systemd-resolved
cat >"$mnt/etc/systemd/network/80-ferry-dhcp.network" <<'EOF'
# The intermediate instance takes its address from the cloud's DHCP.
[Match]
Type=ether

[Network]
DHCP=yes
EOF

# -- cloud-init: NoCloud (a cloud's image adds its own datasource here); the
# network is systemd-networkd's above. The module lists are Debian's minus
# what an appliance without logins must not do or does not have: no users,
# passwords or ssh keys (no sshd), no `mounts` (a cloud's ephemeral disk
# stays unmounted: it may be a target), no locale generation, no rsyslog.
cat >"$mnt/etc/cloud/cloud.cfg.d/90-ferry.cfg" <<'EOF'
# ferry appliance: the job's configuration arrives as user-data.
datasource_list: [ NoCloud, None ]
network:
  config: disabled
users: {}
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - set_hostname
  - update_hostname
  - update_etc_hosts
cloud_config_modules:
  - grub-dpkg
  - apt-configure
  - ntp
  - timezone
  - disable-ec2-metadata
  - runcmd
cloud_final_modules:
  - package-update-upgrade-install
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - phone-home
  - final-message
  - power-state-change
EOF

# -- the loop and device-mapper drivers before ferry.service starts: its
# unit's device ACL names block-loop and block-device-mapper, which resolve
# only once the drivers are registered.
printf '# ferry: loop devices and LVM volumes of the repair; its unit allows\n# block-loop and block-device-mapper.\nloop\ndm_mod\n' \
    >"$mnt/etc/modules-load.d/ferry.conf"

# -- ferry, not enabled, and the sender's release it serves
install -m 0755 "$ferry_bin" "$mnt/usr/local/bin/ferry"
# A cargo build --release binary carries line tables (profile.release
# debug = 1); the release's is stripped already.
if command -v strip >/dev/null; then strip --strip-debug "$mnt/usr/local/bin/ferry"; fi
install -d -m 0755 "$mnt/usr/lib/ferry/sender"
install -m 0644 "$release/$tarball" "$release/SHA256SUMS" "$mnt/usr/lib/ferry/sender/"
install -m 0644 "$unit" "$mnt/etc/systemd/system/ferry.service"
install -d -m 0700 "$mnt/etc/ferry"
rm -rf "$mnt/var/lib/ferry"
install -d -m 0700 "$mnt/var/lib/ferry"

# -- boot: GRUB on the serial console, root by UUID
cat >"$mnt/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF

# A private /dev for the chroot: the image's tools see its disk and the
# by-uuid link that udev would make (without it grub-mkconfig writes
# root=/dev/loopNp1), and nothing is created in the host's /dev.
mount -t proc proc "$mnt/proc"
mount -t sysfs sysfs "$mnt/sys"
mount -t tmpfs -o mode=0755 dev "$mnt/dev"
mount -t tmpfs -o mode=0755 run "$mnt/run"
for n in null zero full random urandom tty console; do cp -a "/dev/$n" "$mnt/dev/"; done
mkdir -p "$mnt/dev/disk/by-uuid" "$mnt/dev/pts" "$mnt/dev/shm"
ln -s /proc/self/fd "$mnt/dev/fd"
cp -a "$loop" "$part" "$mnt/dev/"
ln -s "../../$(basename "$part")" "$mnt/dev/disk/by-uuid/$root_uuid"

in_root() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

filter=$(in_root LVM_SUPPRESS_FD_WARNINGS=1 lvm config devices/global_filter 2>"$work/lvm.log") \
    || { cat "$work/lvm.log" >&2; die "the appliance's lvm cannot read its lvm.conf"; }
[ "$filter" = 'global_filter="r|.*|"' ] || die "the appliance's lvm.conf filter is $filter"
# The initramfs carries lvm.conf too: made again with the blind one.
in_root update-initramfs -u -k all >"$work/initramfs.log" 2>&1 \
    || { cat "$work/initramfs.log" >&2; die "update-initramfs failed"; }

in_root systemctl enable systemd-networkd.service systemd-resolved.service >"$work/enable.log" 2>&1 \
    || { cat "$work/enable.log" >&2; die "enabling systemd-networkd failed"; }
# The appliance does not change itself during a migration.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer >>"$work/enable.log" 2>&1 \
    || { cat "$work/enable.log" >&2; die "masking the apt timers failed"; }
[ ! -e "$mnt/etc/systemd/system/multi-user.target.wants/ferry.service" ] \
    || die "ferry.service is enabled in the image; cloud-init enables it"

kver=$(basename "$(ls -d "$mnt"/lib/modules/* | head -n1)")
[ -s "$mnt/boot/initrd.img-$kver" ] || die "no initramfs for $kver"
if ! grep -q '/virtio_blk\.ko' "$mnt/lib/modules/$kver/modules.builtin"; then
    # Through a file: grep -q closing the pipe early would fail lsinitramfs.
    in_root lsinitramfs "/boot/initrd.img-$kver" >"$work/initramfs.list"
    grep -q '/virtio_blk\.ko' "$work/initramfs.list" || die "the initramfs of $kver lacks virtio_blk"
fi

echo "grub-pc grub-pc/install_devices multiselect $loop" | in_root debconf-set-selections
in_root grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 \
    || { cat "$work/grub.log" >&2; die "grub-install failed"; }
in_root update-grub >"$work/update-grub.log" 2>&1 \
    || { cat "$work/update-grub.log" >&2; die "update-grub failed"; }
grep -q "root=UUID=$root_uuid" "$mnt/boot/grub/grub.cfg" \
    || die "grub.cfg does not boot root=UUID=$root_uuid: $(grep -m1 'linux\s' "$mnt/boot/grub/grub.cfg")"
# The device the installer saw was a loop device: a later grub-pc upgrade on
# the instance asks debconf, which must name the instance's own disk.
echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | in_root debconf-set-selections

# The boot test runs the migrated disks under QEMU, UEFI ones with OVMF.
for f in /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img /usr/share/OVMF/OVMF_CODE.fd /usr/share/OVMF/OVMF_VARS.fd; do
    [ -e "$mnt$f" ] || die "the image lacks $f, which the boot test needs"
done

# Nothing of the bake stays in the image.
rm -rf "$mnt"/tmp/* "$mnt"/var/tmp/* "$mnt"/var/log/*.log "$mnt"/var/cache/apt/*.bin
for m in run dev sys proc; do umount "$mnt/$m"; done
used_mib=$(df -m --output=used "$mnt" | tail -n1 | tr -d ' ')
umount "$mnt"
e2fsck -fn "$part" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck of the image failed"; }
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"
loop=""

mv -f "$img" "$out"
echo "bake-appliance.sh: baked in $((SECONDS - start)) s: kernel $kver, root UUID $root_uuid," \
    "${used_mib} MiB used of ${IMAGE_SIZE_MIB} MiB, $(du -m "$out" | cut -f1) MiB allocated" >&2
echo "$out"
