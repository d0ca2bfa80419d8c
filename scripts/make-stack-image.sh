#!/usr/bin/env bash
# Builds a source server of one of the stacks people migrate besides the
# plain Debian of make-source-image.sh, and prints the directory that holds
# its disk image.
#
#   scripts/make-stack-image.sh VARIANT
#
#   lvm             BIOS, MBR: sda1 ext4 /boot, sda2 an LVM PV of VG ferry-vg
#                   with LVs root (ext4) and swap_1; fstab names
#                   /dev/mapper/ferry--vg-root and the swap LV, as Debian's
#                   installer leaves it; initramfs-tools with the lvm2 hook
#   xfs-gpt         BIOS, GPT: sda1 BIOS boot, sda2 ext4 /boot, sda3 swap and
#                   sda4 ext4 /var named /dev/sda3 and /dev/sda4 in fstab,
#                   sda5 XFS root
#   btrfs           BIOS, MBR: sda1 btrfs with subvolumes @ (/) and @home
#                   (/home), fstab with subvol=, /boot inside @
#   dracut-nm       BIOS, MBR: sda1 ext4 root; dracut instead of
#                   initramfs-tools, its image for the old hardware only (an
#                   exclusive driver list without virtio); NetworkManager
#                   with a static keyfile pinned to the old NIC's name and
#                   MAC and no-auto-default=*
#   netplan-trixie  Debian 13, UEFI, GPT: sda1 ESP, sda2 ext4 root; netplan
#                   rendering for systemd-networkd, a static address matched
#                   by the old NIC's MAC
#   bullseye-bios   Debian 11, BIOS, MBR: sda1 ext4 root
#   uefi-prebuilt   UEFI, GPT: sda1 ESP whose only loader is a prebuilt GRUB
#                   at EFI/debian/grubx64.efi (its modules built in, no
#                   /boot/grub/x86_64-efi, no EFI/BOOT fallback), found by a
#                   firmware boot entry; sda2 ext4 root
#
# Each is a debootstrapped Debian configured the way the named family does
# it, otherwise like make-source-image.sh's servers: initramfs for SATA/IDE
# only, a static address on the old NIC (ens8, MAC 52:54:00:12:34:08),
# kernel and GRUB on the serial console, and a one-shot unit that prints,
# after multi-user.target, on the serial console:
#   FERRY-BOOT-MARKER root_uuid=<uuid> ipv4=<addr>/<len>@<iface>|none hostname=<name>
#       data=none links=<interfaces> mounts=<fstab targets mounted>
#       unmounted=<fstab targets not mounted>|none swaps=<active swap areas>
#
# The directory holds disk0.img, meta.env with the facts a boot check
# compares the marker with, and for uefi-prebuilt ovmf-vars.fd: the old
# machine's firmware variables with its boot entry. Images are cached under
# $FERRY_CACHE/images (default .cache/ in the repository) by a hash of this
# script, the boot-entry writer and the root file system's recipe.
set -euo pipefail

IMAGE_SIZE_MIB=2048
STATIC_IP=10.0.2.50
STATIC_PREFIX=24
GATEWAY=10.0.2.2
# The old hardware's e1000 (tests/common/boot.rs): PCI slot 8, this MAC.
OLD_NIC=ens8
OLD_MAC=52:54:00:12:34:08
VG=ferry-vg
DATA_FILE_TEXT="ferry data disk fixture"

die() { echo "make-stack-image.sh: $*" >&2; exit 1; }

variant=${1:-}
suite=bookworm
initramfs=initramfs-tools
network=ifupdown
case "$variant" in
    lvm | xfs-gpt | btrfs)
        firmware=bios rootfs_args=(bios bookworm lvm2 xfsprogs btrfs-progs) ;;
    dracut-nm)
        firmware=bios initramfs=dracut network=nm
        rootfs_args=(bios bookworm dracut network-manager -ifupdown -isc-dhcp-client) ;;
    netplan-trixie)
        firmware=uefi suite=trixie network=netplan
        rootfs_args=(uefi trixie netplan.io -ifupdown -isc-dhcp-client) ;;
    bullseye-bios) firmware=bios suite=bullseye rootfs_args=(bios bullseye) ;;
    uefi-prebuilt) firmware=uefi rootfs_args=(uefi) ;;
    *) die "usage: make-stack-image.sh lvm|xfs-gpt|btrfs|dracut-nm|netplan-trixie|bullseye-bios|uefi-prebuilt" ;;
esac

[ "$(id -u)" = 0 ] || die "needs root (loop devices, mounts, chroot)"
for tool in sfdisk partx losetup mkfs.ext4 mkswap blkid zstd python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
case "$variant" in
    lvm) command -v lvcreate >/dev/null || die "lvcreate is not installed (apt-get install lvm2)" ;;
    xfs-gpt) command -v mkfs.xfs >/dev/null || die "mkfs.xfs is not installed (apt-get install xfsprogs)" ;;
    btrfs) command -v mkfs.btrfs >/dev/null || die "mkfs.btrfs is not installed (apt-get install btrfs-progs)" ;;
esac
if [ "$firmware" = uefi ]; then
    command -v mkfs.vfat >/dev/null || die "mkfs.vfat is not installed (apt-get install dosfstools)"
    command -v mcopy >/dev/null || die "mcopy is not installed (apt-get install mtools)"
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${FERRY_CACHE:-$repo/.cache}
rootfs=$(FERRY_CACHE="$cache" bash "$here/rootfs.sh" "${rootfs_args[@]}")
key=$(cat "$0" "$here/ovmf-boot-entry.py" <(basename "$rootfs") | sha256sum | cut -c1-16)
out="$cache/images/$variant-$key"

if [ -s "$out/meta.env" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$cache/images"
exec 9>"$cache/images/.$variant.lock"
flock 9
if [ -s "$out/meta.env" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache/images/.build-$variant-XXXXXX")
mnt="$work/root"
mkdir -p "$mnt"
loops=()
# A private LVM configuration: the host's LVM never scans, caches or backs
# up the fixture's volume group, and nothing asks for device-mapper, which
# this kernel may not have.
export LVM_SYSTEM_DIR="$work/lvm" LVM_SUPPRESS_FD_WARNINGS=1

cleanup() {
    local m l
    for m in $(awk -v d="$work/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        for _ in 1 2 3 4 5; do
            umount "$m" 2>/dev/null && break
            sleep 0.5
        done
    done
    for l in "${loops[@]}"; do
        partx -d "$l" 2>/dev/null || true
        losetup -d "$l" 2>/dev/null || true
    done
    if awk -v d="$work/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        echo "make-stack-image.sh: leaving $work: something is still mounted in it" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# Sets $attached to a loop device on the image, with its partition nodes
# added (the kernel scans no partition tables here).
attach() {
    attached=$(losetup -f --show "$1")
    loops+=("$attached")
    partx -a "$attached" || die "partx -a $attached failed"
    local n i
    n=$(sfdisk -J "$attached" | grep -c '"node"' || true)
    for i in $(seq 1 "$n"); do
        [ -b "${attached}p$i" ] || die "partition node ${attached}p$i did not appear after partx -a"
    done
}

# Sets $attached to a loop device over LENGTH bytes of FILE at OFFSET.
attach_range() {
    attached=$(losetup -f --show -o "$2" --sizelimit "$3" "$1")
    loops+=("$attached")
}

uuid_of() { blkid -p -s UUID -o value "$1"; }

lvm_() { "$@" --driverloaded n; }

gpt_type_linux=0FC63DAF-8483-4772-8E79-3D69D8477DE4
gpt_type_esp=C12A7328-F81F-11D2-BA4B-00A0C93EC93B

# ---- partition table and file systems ------------------------------------------
img="$work/disk0.img"
truncate -s "${IMAGE_SIZE_MIB}M" "$img"
case "$variant" in
    lvm)
        printf '%s\n' 'label: dos' 'start=2048, size=256MiB, type=83, bootable' 'type=8e' | sfdisk -q "$img" ;;
    xfs-gpt)
        printf '%s\n' 'label: gpt' \
            'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"' \
            "size=256MiB, type=$gpt_type_linux, name=\"boot\"" \
            'size=128MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"' \
            "size=384MiB, type=$gpt_type_linux, name=\"var\"" \
            "type=$gpt_type_linux, name=\"root\"" | sfdisk -q "$img" ;;
    btrfs | dracut-nm | bullseye-bios)
        printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img" ;;
    netplan-trixie | uefi-prebuilt)
        printf '%s\n' 'label: gpt' \
            "size=100MiB, type=$gpt_type_esp, name=\"EFI System\"" \
            "type=$gpt_type_linux, name=\"root\"" | sfdisk -q "$img" ;;
esac
attach "$img"
loop=$attached

# root_dev: what holds the root file system on this machine (a partition
# node: for LVM, one over the root LV's extents).
fstab="# /etc/fstab: static file system information.
"
mounts="/" swaps=0 esp_part=""
rootflags=""
case "$variant" in
    lvm)
        mkdir -p "$LVM_SYSTEM_DIR"
        cat >"$LVM_SYSTEM_DIR/lvm.conf" <<EOF
devices { filter = [ "a|^${loop}p2\$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
EOF
        lvm_ pvcreate -q -y "${loop}p2" >/dev/null
        lvm_ vgcreate -q "$VG" "${loop}p2" >/dev/null
        # Free extents stay in the VG, as an installer leaves some.
        lvm_ lvcreate -q -an -Zn -y -L 1280M -n root "$VG" >/dev/null 2>&1 || die "lvcreate root failed"
        lvm_ lvcreate -q -an -Zn -y -L 128M -n swap_1 "$VG" >/dev/null 2>&1 || die "lvcreate swap_1 failed"
        pe_start=$(lvm_ pvs --noheadings --units b --nosuffix -o pe_start "${loop}p2" 2>/dev/null | tr -d ' ')
        extent=$(lvm_ vgs --noheadings --units b --nosuffix -o vg_extent_size "$VG" 2>/dev/null | tr -d ' ')
        part_start=$(($(partx -g -o START -n 2 "$img") * 512))
        # A linear LV is one run of extents on its PV: sets $lv_offset and
        # $lv_length (bytes in the image) of one.
        lv_range() {
            local seg first count
            seg=$(lvm_ lvs --noheadings --segments -o seg_pe_ranges "$VG/$1" 2>/dev/null | tr -d ' ')
            [[ "$seg" =~ :([0-9]+)-([0-9]+)$ ]] || die "LV $1 is not one linear segment: $seg"
            first=${BASH_REMATCH[1]}
            count=$((BASH_REMATCH[2] - first + 1))
            lv_offset=$((part_start + pe_start + first * extent))
            lv_length=$((count * extent))
        }
        lv_range swap_1
        attach_range "$img" "$lv_offset" "$lv_length"
        mkswap -q -L swap "$attached" >/dev/null
        # The root LV as partition node 2 of the disk's loop device, in place
        # of the PV: grub-mkconfig names no root on a bare loop device (it
        # takes one for loop-AES), but one on a partition node.
        lv_range root
        partx -d --nr 2 "$loop"
        addpart "$loop" 2 $((lv_offset / 512)) $((lv_length / 512)) || die "addpart $loop 2 failed"
        root_dev="${loop}p2"
        mkfs.ext4 -q -L root "$root_dev"
        mkfs.ext4 -q -L boot "${loop}p1"
        boot_dev="${loop}p1"
        fstab+="/dev/mapper/ferry--vg-root / ext4 errors=remount-ro 0 1
UUID=$(uuid_of "${loop}p1") /boot ext4 defaults 0 2
/dev/mapper/ferry--vg-swap_1 none swap sw 0 0
"
        mounts="/,/boot" swaps=1
        ;;
    xfs-gpt)
        root_dev="${loop}p5"
        mkfs.xfs -q -L root "$root_dev"
        mkfs.ext4 -q -L boot "${loop}p2"
        mkfs.ext4 -q -L var "${loop}p4"
        mkswap -q -L swap "${loop}p3" >/dev/null
        boot_dev="${loop}p2"
        fstab+="UUID=$(uuid_of "$root_dev") / xfs defaults 0 0
UUID=$(uuid_of "${loop}p2") /boot ext4 defaults 0 2
/dev/sda4 /var ext4 defaults 0 2
/dev/sda3 none swap sw 0 0
"
        mounts="/,/boot,/var" swaps=1
        ;;
    btrfs)
        root_dev="${loop}p1"
        mkfs.btrfs -q -L root "$root_dev" >/dev/null
        mkdir -p "$work/top"
        mount "$root_dev" "$work/top"
        btrfs -q subvolume create "$work/top/@" >/dev/null
        btrfs -q subvolume create "$work/top/@home" >/dev/null
        umount "$work/top"
        rootflags="subvol=@"
        u=$(uuid_of "$root_dev")
        fstab+="UUID=$u / btrfs defaults,subvol=@ 0 0
UUID=$u /home btrfs defaults,subvol=@home 0 0
"
        mounts="/,/home"
        ;;
    dracut-nm | bullseye-bios)
        root_dev="${loop}p1"
        mkfs.ext4 -q -L root "$root_dev"
        if [ "$variant" = dracut-nm ]; then
            fstab+="UUID=$(uuid_of "$root_dev") / ext4 defaults 0 1
"
        else
            fstab+="/dev/sda1 / ext4 errors=remount-ro 0 1
"
        fi
        ;;
    netplan-trixie | uefi-prebuilt)
        esp_part=1
        root_dev="${loop}p2"
        mkfs.ext4 -q -L root "$root_dev"
        mkfs.vfat -F 32 -n ESP "${loop}p1" >/dev/null 2>&1 || die "mkfs.vfat ${loop}p1 failed"
        fstab+="UUID=$(uuid_of "$root_dev") / ext4 errors=remount-ro 0 1
UUID=$(uuid_of "${loop}p1") /boot/efi vfat umask=0077 0 1
"
        mounts="/,/boot/efi"
        ;;
esac
root_uuid=$(uuid_of "$root_dev")
mount ${rootflags:+-o "$rootflags"} "$root_dev" "$mnt"
case "$variant" in
    lvm | xfs-gpt)
        mkdir -p "$mnt/boot"
        mount "$boot_dev" "$mnt/boot"
        ;;
esac
if [ "$variant" = xfs-gpt ]; then
    mkdir -p "$mnt/var"
    mount "${loop}p4" "$mnt/var"
fi
if [ "$variant" = btrfs ]; then
    mkdir -p "$mnt/home"
    mount -o subvol=@home "$root_dev" "$mnt/home"
fi

# ---- the system ---------------------------------------------------------------
tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$rootfs" -C "$mnt"
hostname="src-$variant"
echo "$hostname" >"$mnt/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$hostname" >"$mnt/etc/hosts"
printf '%s' "$fstab" >"$mnt/etc/fstab"
[ -n "$esp_part" ] && mkdir -p "$mnt/boot/efi"

case "$network" in
    ifupdown)
        cat >"$mnt/etc/network/interfaces" <<EOF
# The old server's network: a static address on its onboard NIC.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto $OLD_NIC
iface $OLD_NIC inet static
    address $STATIC_IP/$STATIC_PREFIX
    gateway $GATEWAY
EOF
        ;;
    nm)
        mkdir -p "$mnt/etc/NetworkManager/conf.d" "$mnt/etc/NetworkManager/system-connections"
        printf '%s\n' '[main]' 'plugins=keyfile' 'no-auto-default=*' \
            >"$mnt/etc/NetworkManager/conf.d/90-server.conf"
        cat >"$mnt/etc/NetworkManager/system-connections/$OLD_NIC.nmconnection" <<EOF
[connection]
id=$OLD_NIC
uuid=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03
type=ethernet
interface-name=$OLD_NIC
autoconnect=true

[ethernet]
mac-address=$OLD_MAC

[ipv4]
method=manual
address1=$STATIC_IP/$STATIC_PREFIX,$GATEWAY
dns=10.0.2.3;

[ipv6]
method=ignore
EOF
        chmod 0600 "$mnt/etc/NetworkManager/system-connections/$OLD_NIC.nmconnection"
        ;;
    netplan)
        mkdir -p "$mnt/etc/netplan"
        cat >"$mnt/etc/netplan/50-server.yaml" <<EOF
# The old server's network, as Ubuntu's installer writes it.
network:
  version: 2
  renderer: networkd
  ethernets:
    $OLD_NIC:
      match:
        macaddress: "$OLD_MAC"
      set-name: $OLD_NIC
      addresses:
        - $STATIC_IP/$STATIC_PREFIX
      routes:
        - to: default
          via: $GATEWAY
      nameservers:
        addresses: [10.0.2.3]
EOF
        chmod 0600 "$mnt/etc/netplan/50-server.yaml"
        ln -sf /lib/systemd/system/systemd-networkd.service \
            "$mnt/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
        ;;
esac

# SATA/IDE hardware of the old server, and the file systems its root needs.
old_modules=(libata ata_piix ata_generic libahci ahci scsi_mod sd_mod crc32c_generic ext4)
case "$variant" in
    xfs-gpt) old_modules+=(xfs) ;;
    btrfs) old_modules+=(btrfs) ;;
    lvm) old_modules+=(dm_mod) ;;
esac
if [ "$initramfs" = initramfs-tools ]; then
    sed -i 's/^MODULES=.*/MODULES=list/' "$mnt/etc/initramfs-tools/initramfs.conf"
    printf '%s\n' '# SATA/IDE hardware of the old server.' "${old_modules[@]}" \
        >"$mnt/etc/initramfs-tools/modules"
    # No swap partition to resume from is looked for at boot.
    echo RESUME=none >"$mnt/etc/initramfs-tools/conf.d/resume"
else
    # A generic image would hold every storage driver, virtio's too; this
    # server's is made for its own hardware: an exclusive driver list, and
    # none of the modules that add virtio when they see a virtual machine.
    cat >"$mnt/etc/dracut.conf.d/10-old-hardware.conf" <<EOF
# The old server's SATA/IDE hardware only.
hostonly="no"
drivers=" ${old_modules[*]} "
omit_dracutmodules+=" qemu qemu-net virtiofs nvdimm "
omit_drivers+=" virtio.* nd_virtio "
EOF
fi

cat >"$mnt/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF

cat >"$mnt/usr/local/sbin/ferry-boot-marker" <<'EOF'
#!/bin/sh
# Test fixture: tells the boot check on the serial console that this system
# reached multi-user.target, with which root, address and name, and which of
# its fstab's file systems and swap areas are in use.
root_uuid=$(findmnt -n -o UUID /)
[ -n "$root_uuid" ] || root_uuid=$(blkid -s UUID -o value "$(findmnt -n -o SOURCE /)")
ipv4=none
i=0
while [ $i -lt 60 ]; do
    a=$(ip -4 -o addr show scope global | awk '{ print $4 "@" $2; exit }')
    if [ -n "$a" ]; then ipv4=$a; break; fi
    sleep 1
    i=$((i + 1))
done
data=none
if mountpoint -q /data; then data=$(findmnt -n -o UUID /data); fi
links=$(ls /sys/class/net | grep -v '^lo$' | paste -sd, -)
mounted="" unmounted=""
for target in $(awk '!/^[ \t]*#/ && NF >= 3 && $3 != "swap" && $4 !~ /(^|,)noauto(,|$)/ { print $2 }' /etc/fstab); do
    if mountpoint -q "$target"; then mounted="$mounted,$target"; else unmounted="$unmounted,$target"; fi
done
swaps=$(($(wc -l </proc/swaps) - 1))
[ -n "$unmounted" ] || unmounted=,none
line="FERRY-BOOT-MARKER root_uuid=$root_uuid ipv4=$ipv4 hostname=$(hostname) data=$data links=${links:-none} mounts=${mounted#,} unmounted=${unmounted#,} swaps=$swaps"
echo "$line" >/dev/ttyS0
echo "$line"
EOF
chmod 0755 "$mnt/usr/local/sbin/ferry-boot-marker"
cat >"$mnt/etc/systemd/system/ferry-boot-marker.service" <<'EOF'
[Unit]
Description=Boot marker for the boot check (test fixture)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferry-boot-marker

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/ferry-boot-marker.service \
    "$mnt/etc/systemd/system/multi-user.target.wants/ferry-boot-marker.service"
# No login prompt on the serial console races the marker's line.
ln -sf /dev/null "$mnt/etc/systemd/system/serial-getty@ttyS0.service"

# ---- inside the system: initramfs and GRUB, with its own tools -----------------
mount -t proc proc "$mnt/proc"
mount -t sysfs sysfs "$mnt/sys"
mount -t tmpfs -o mode=0755 dev "$mnt/dev"
mount -t tmpfs -o mode=0755 run "$mnt/run"
for n in null zero full random urandom tty console; do cp -a "/dev/$n" "$mnt/dev/"; done
mkdir -p "$mnt/dev/disk/by-uuid" "$mnt/dev/pts" "$mnt/dev/shm"
ln -s /proc/self/fd "$mnt/dev/fd"
cp -a "$loop" "$loop"p* "$mnt/dev/"
for p in "$loop"p*; do
    u=$(uuid_of "$p" || true)
    [ -n "$u" ] && ln -sf "../../$(basename "$p")" "$mnt/dev/disk/by-uuid/$u"
done

in_root() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

kver=$(basename "$(ls -d "$mnt"/lib/modules/* | head -n1)")
initrd="/boot/initrd.img-$kver"
if [ "$initramfs" = initramfs-tools ]; then
    in_root update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 \
        || { cat "$work/initramfs.log" >&2; die "update-initramfs failed"; }
    in_root lsinitramfs "$initrd" >"$work/initramfs.list"
else
    in_root dracut -f "$initrd" "$kver" >"$work/initramfs.log" 2>&1 \
        || { tail -n 40 "$work/initramfs.log" >&2; die "dracut failed"; }
    in_root lsinitrd "$initrd" >"$work/initramfs.list"
fi
if grep virtio "$work/initramfs.list" >&2; then
    die "the initramfs holds virtio modules (above); the source must not"
fi
for m in "${old_modules[@]}"; do
    case "$m" in libata | scsi_mod | crc32c_generic) continue ;; esac
    grep -qE "/${m//_/[-_]}\.ko(\.(xz|zst|gz))?\$" "$work/initramfs.list" || die "the initramfs lacks $m"
done
if [ "$variant" = lvm ]; then
    grep -qE 'sbin/lvm$' "$work/initramfs.list" || die "the initramfs lacks lvm (the lvm2 hook)"
fi

case "$variant" in
    netplan-trixie | uefi-prebuilt) ;;
    *)
        echo "grub-pc grub-pc/install_devices multiselect /dev/sda" | in_root debconf-set-selections
        in_root grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 \
            || { cat "$work/grub.log" >&2; die "grub-install (BIOS) failed"; }
        ;;
esac
esp="$work/esp"
if [ "$variant" = netplan-trixie ]; then
    echo "grub-efi-amd64 grub2/force_efi_extra_removable boolean true" | in_root debconf-set-selections
    # As make-source-image.sh: a tmpfs named after the ESP stands in for the
    # FAT this kernel cannot mount, and is copied into it afterwards.
    mount -t tmpfs "${loop}p1" "$mnt/boot/efi"
    in_root grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram \
        "$loop" >"$work/grub.log" 2>&1 \
        || { cat "$work/grub.log" >&2; die "grub-install (UEFI) failed"; }
    [ -s "$mnt/boot/efi/EFI/BOOT/BOOTX64.EFI" ] || die "grub-install left no EFI/BOOT/BOOTX64.EFI"
    cp -a "$mnt/boot/efi" "$esp"
    umount "$mnt/boot/efi"
fi
if [ "$variant" = uefi-prebuilt ]; then
    # The loader as a distribution signs it: one image with its modules
    # built in, its prefix on the ESP, where a three-line grub.cfg finds the
    # system's own. Nothing under /boot/grub but grub.cfg.
    mkdir -p "$esp/EFI/debian"
    in_root grub-mkimage -O x86_64-efi -o /tmp/grubx64.efi -p /EFI/debian \
        part_gpt part_msdos fat ext2 normal configfile search search_fs_uuid search_label \
        linux gzio echo test ls cat serial terminal all_video efi_gop sleep reboot halt \
        loadenv minicmd boot chain >"$work/grub.log" 2>&1 \
        || { cat "$work/grub.log" >&2; die "grub-mkimage failed"; }
    mv "$mnt/tmp/grubx64.efi" "$esp/EFI/debian/grubx64.efi"
    printf '%s\n' "search.fs_uuid $root_uuid root" "set prefix=(\$root)'/boot/grub'" \
        'configfile $prefix/grub.cfg' >"$esp/EFI/debian/grub.cfg"
    mkdir -p "$mnt/boot/grub"
fi
if [ -d "$esp" ]; then
    (cd "$esp" && MTOOLS_SKIP_CHECK=1 mcopy -s -o -i "${loop}p1" ./* ::/) 2>"$work/mcopy.log" \
        || { cat "$work/mcopy.log" >&2; die "copying the ESP into ${loop}p1 failed"; }
fi
in_root update-grub >"$work/update-grub.log" 2>&1 \
    || { cat "$work/update-grub.log" >&2; die "update-grub failed"; }
cfg="$mnt/boot/grub/grub.cfg"
if [ "$variant" = lvm ]; then
    # On the server, / is /dev/mapper/ferry--vg-root, and Debian's
    # grub-mkconfig names a root on LVM by its device path; here that path
    # is the partition node standing in for the LV.
    sed -i "s|root=$root_dev |root=/dev/mapper/ferry--vg-root |" "$cfg"
    grep -q "root=/dev/mapper/ferry--vg-root" "$cfg" \
        || die "grub.cfg does not boot root=/dev/mapper/ferry--vg-root: $(grep -m1 '^\s*linux\s' "$cfg")"
else
    grep -q "root=UUID=$root_uuid" "$cfg" \
        || die "grub.cfg does not boot root=UUID=$root_uuid: $(grep -m1 '^\s*linux\s' "$cfg")"
fi
if [ "$variant" = btrfs ]; then
    grep -q "rootflags=subvol=@" "$cfg" || die "grub.cfg lacks rootflags=subvol=@"
fi
if [ "$variant" = uefi-prebuilt ]; then
    [ ! -e "$mnt/boot/grub/x86_64-efi" ] || die "/boot/grub/x86_64-efi exists; the prebuilt loader must not need it"
fi

for m in run dev sys proc; do umount "$mnt/$m"; done
for m in home var boot; do
    if mountpoint -q "$mnt/$m"; then umount "$mnt/$m"; fi
done
umount "$mnt"

ovmf_vars=none
if [ "$variant" = uefi-prebuilt ]; then
    # The old machine's firmware knows where the loader is: a boot entry
    # in its variables, kept beside the disk image as that machine's NVRAM.
    guid=$(sfdisk --part-uuid "$img" 1)
    start=$(partx -g -o START -n 1 "$img")
    sectors=$(partx -g -o SECTORS -n 1 "$img")
    # The old machine's disk is on port 0 of the AHCI controller in PCI slot 6
    # (tests/common/boot.rs).
    python3 "$here/ovmf-boot-entry.py" /usr/share/OVMF/OVMF_VARS.fd "$work/ovmf-vars.fd" \
        0x6 0 1 "$start" "$sectors" "$guid" '\EFI\debian\grubx64.efi' debian \
        || die "writing the firmware boot entry failed"
    ovmf_vars=ovmf-vars.fd
fi

for l in "${loops[@]}"; do
    partx -d "$l" 2>/dev/null || true
    losetup -d "$l"
done
loops=()

cat >"$work/meta.env" <<EOF
VARIANT=$variant
FIRMWARE=$firmware
SUITE=$suite
HOSTNAME=$hostname
ROOT_UUID=$root_uuid
DATA_UUID=none
DATA_FILE_TEXT="$DATA_FILE_TEXT"
STATIC_IPV4=$STATIC_IP/$STATIC_PREFIX
OLD_NIC=$OLD_NIC
KERNEL=$kver
DISKS=1
FSTAB_MOUNTS=$mounts
FSTAB_SWAPS=$swaps
OVMF_VARS=$ovmf_vars
EOF

rm -rf "$mnt" "$esp" "$work/top" "$work/lvm" "$work"/*.log "$work/initramfs.list"
mv -T "$work" "$out"
trap - EXIT
echo "$out"
