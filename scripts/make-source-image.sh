#!/usr/bin/env bash
# Builds a source server's disk image(s) the way a real physical server has
# them, and prints the directory that holds them.
#
#   scripts/make-source-image.sh bios-mbr|bios-gpt|uefi-gpt|bios-mbr-data
#
#   bios-mbr       BIOS, MBR: sda1 ext4 root
#   bios-gpt       BIOS, GPT: sda1 BIOS boot, sda2 ext4 /boot, sda3 swap, sda4 ext4 root
#   uefi-gpt       UEFI, GPT: sda1 EFI system partition (FAT), sda2 ext4 root
#   bios-mbr-data  bios-mbr plus a data disk: sdb1 ext4 on /data (on a RAID HBA
#                  whose driver the initramfs lacks, so it is always sdb)
#   cloud-ready    bios-mbr as the cloud wants it: virtio drivers in the
#                  initramfs, fstab by UUID, DHCP on the cloud NIC. Not a
#                  source: the control that the cloud hardware of the boot
#                  check boots a system that has what it needs.
#
# Like a server installed on SATA/IDE hardware: fstab names /dev/sda*, the
# network is ifupdown with a static address on the old NIC's name, the
# initramfs holds only ATA/SCSI drivers (MODULES=list, no virtio), GRUB is
# installed for the disk as it was (root=UUID=..., as Debian's installer
# leaves it), kernel and GRUB talk on the serial console.
#
# A test fixture, not part of what ferry does: a one-shot unit prints, after
# multi-user.target, a marker line on the serial console:
#   FERRY-BOOT-MARKER root_uuid=<uuid> ipv4=<addr>/<len>@<iface>|none hostname=<name>
#       data=<uuid of /data>|none links=<network interfaces>
#
# The directory holds disk0.img (and disk1.img), sparse, and meta.env with
# the facts a boot check compares the marker with. Images are cached under
# $FERRY_CACHE/images (default .cache/ in the repository) by a hash of this
# script and of the root file system's recipe.
set -euo pipefail

IMAGE_SIZE_MIB=1536
DATA_SIZE_MIB=256
STATIC_IP=10.0.2.50
STATIC_PREFIX=24
GATEWAY=10.0.2.2
# The e1000 of the old hardware sits in PCI slot 8 (see tests/common/boot.rs),
# which systemd names ens8; the cloud's virtio NIC lands elsewhere.
OLD_NIC=ens8
DATA_FILE_TEXT="ferry data disk fixture"

die() { echo "make-source-image.sh: $*" >&2; exit 1; }

variant=${1:-}
case "$variant" in
    bios-mbr | bios-gpt | bios-mbr-data | cloud-ready) firmware=bios ;;
    uefi-gpt) firmware=uefi ;;
    *) die "usage: make-source-image.sh bios-mbr|bios-gpt|uefi-gpt|bios-mbr-data|cloud-ready" ;;
esac

[ "$(id -u)" = 0 ] || die "needs root (loop devices, mounts, chroot)"
for tool in sfdisk partx losetup mkfs.ext4 mkswap blkid zstd; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [ "$firmware" = uefi ]; then
    command -v mkfs.vfat >/dev/null || die "mkfs.vfat is not installed (apt-get install dosfstools)"
    command -v mcopy >/dev/null || die "mcopy is not installed (apt-get install mtools)"
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${FERRY_CACHE:-$repo/.cache}
rootfs=$(FERRY_CACHE="$cache" bash "$here/rootfs.sh" "$firmware")
key=$(cat "$0" <(basename "$rootfs") | sha256sum | cut -c1-16)
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

# Unmounts everything under the work directory, detaches our loop devices,
# and deletes the work directory only when nothing is mounted in it.
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
        echo "make-source-image.sh: leaving $work: something is still mounted in it" >&2
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

uuid_of() { blkid -s UUID -o value "$1"; }

# ---- disk 0: partition table and file systems --------------------------------
truncate -s "${IMAGE_SIZE_MIB}M" "$work/disk0.img"
case "$variant" in
    bios-mbr | bios-mbr-data | cloud-ready)
        printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk0.img"
        ;;
    bios-gpt)
        printf '%s\n' 'label: gpt' \
            'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"' \
            'size=200MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="boot"' \
            'size=128MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"' \
            'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"' | sfdisk -q "$work/disk0.img"
        ;;
    uefi-gpt)
        printf '%s\n' 'label: gpt' \
            'size=100MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI System"' \
            'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"' | sfdisk -q "$work/disk0.img"
        ;;
esac
attach "$work/disk0.img"
loop=$attached

boot_part="" swap_part="" esp_part=""
case "$variant" in
    bios-mbr | bios-mbr-data | cloud-ready) root_part=1 ;;
    bios-gpt) boot_part=2 swap_part=3 root_part=4 ;;
    uefi-gpt) esp_part=1 root_part=2 ;;
esac

mkfs.ext4 -q -L root "${loop}p$root_part"
root_uuid=$(uuid_of "${loop}p$root_part")
mount "${loop}p$root_part" "$mnt"
fstab="# /etc/fstab: static file system information.
/dev/sda$root_part / ext4 errors=remount-ro 0 1
"
[ "$variant" = cloud-ready ] && fstab="${fstab//\/dev\/sda$root_part /UUID=$root_uuid }"
if [ -n "$boot_part" ]; then
    mkfs.ext4 -q -L boot "${loop}p$boot_part"
    mkdir -p "$mnt/boot"
    mount "${loop}p$boot_part" "$mnt/boot"
    fstab+="/dev/sda$boot_part /boot ext4 defaults 0 2
"
fi
if [ -n "$swap_part" ]; then
    mkswap -q -L swap "${loop}p$swap_part" >/dev/null
    fstab+="/dev/sda$swap_part none swap sw 0 0
"
fi
if [ -n "$esp_part" ]; then
    mkfs.vfat -F 32 -n ESP "${loop}p$esp_part" >/dev/null 2>&1 || die "mkfs.vfat ${loop}p$esp_part failed"
    fstab+="/dev/sda$esp_part /boot/efi vfat umask=0077 0 1
"
fi

# ---- disk 1: the data disk ----------------------------------------------------
data_uuid=none
if [ "$variant" = bios-mbr-data ]; then
    truncate -s "${DATA_SIZE_MIB}M" "$work/disk1.img"
    printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$work/disk1.img"
    attach "$work/disk1.img"
    dloop=$attached
    mkfs.ext4 -q -L data "${dloop}p1"
    data_uuid=$(uuid_of "${dloop}p1")
    mkdir -p "$work/data"
    mount "${dloop}p1" "$work/data"
    printf '%s\n' "$DATA_FILE_TEXT" >"$work/data/hello.txt"
    umount "$work/data"
    fstab+="/dev/sdb1 /data ext4 defaults 0 2
"
fi

# ---- the system ---------------------------------------------------------------
tar --numeric-owner --xattrs --xattrs-include='*' -I zstd -xpf "$rootfs" -C "$mnt"
hostname="src-$variant"
echo "$hostname" >"$mnt/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$hostname" >"$mnt/etc/hosts"
printf '%s' "$fstab" >"$mnt/etc/fstab"
[ "$variant" = bios-mbr-data ] && mkdir -p "$mnt/data"
[ -n "$esp_part" ] && mkdir -p "$mnt/boot/efi"

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
if [ "$variant" = cloud-ready ]; then
    # The cloud's virtio NIC sits in PCI slot 3 (tests/common/boot.rs): ens3.
    printf '%s\n' 'auto lo' 'iface lo inet loopback' '' 'auto ens3' 'iface ens3 inet dhcp' \
        >"$mnt/etc/network/interfaces"
fi

# An initramfs for SATA/IDE disks only, as on a server that never saw virtio.
sed -i 's/^MODULES=.*/MODULES=list/' "$mnt/etc/initramfs-tools/initramfs.conf"
cat >"$mnt/etc/initramfs-tools/modules" <<EOF
# SATA/IDE hardware of the old server.
libata
ata_piix
ata_generic
libahci
ahci
scsi_mod
sd_mod
crc32c_generic
ext4
EOF
[ "$variant" = cloud-ready ] && printf '%s\n' virtio_pci virtio_blk virtio_net >>"$mnt/etc/initramfs-tools/modules"

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
# reached multi-user.target, with which root, address and name.
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
line="FERRY-BOOT-MARKER root_uuid=$root_uuid ipv4=$ipv4 hostname=$(hostname) data=$data links=${links:-none}"
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
# A private /dev: the image's tools see its disk and by-uuid links as on the
# server, and nothing is created in the host's /dev.
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
    [ -n "$u" ] && ln -s "../../$(basename "$p")" "$mnt/dev/disk/by-uuid/$u"
done

in_root() { chroot "$mnt" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

kver=$(basename "$(ls -d "$mnt"/lib/modules/* | head -n1)")
in_root update-initramfs -u -k "$kver" >"$work/initramfs.log" 2>&1 \
    || { cat "$work/initramfs.log" >&2; die "update-initramfs failed"; }
initrd="/boot/initrd.img-$kver"
in_root lsinitramfs "$initrd" >"$work/initramfs.list"
if [ "$variant" = cloud-ready ]; then
    grep -q '/virtio_blk\.ko' "$work/initramfs.list" || die "the cloud-ready initramfs lacks virtio_blk"
elif grep virtio "$work/initramfs.list" >&2; then
    die "the initramfs holds virtio modules (above); the source must not"
fi
for m in ata_piix ahci sd_mod ext4; do
    grep -q "/$m\.ko" "$work/initramfs.list" || die "the initramfs lacks $m"
done

if [ "$firmware" = bios ]; then
    echo "grub-pc grub-pc/install_devices multiselect /dev/sda" | in_root debconf-set-selections
    in_root grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 \
        || { cat "$work/grub.log" >&2; die "grub-install (BIOS) failed"; }
else
    echo "grub-efi-amd64 grub2/force_efi_extra_removable boolean true" | in_root debconf-set-selections
    # This kernel cannot mount FAT. grub-install only needs the ESP's mount
    # point to name the ESP's device (it probes the FAT itself), so a tmpfs
    # whose source is that device stands in as the staging directory, and its
    # files are copied into the FAT afterwards.
    mount -t tmpfs "${loop}p$esp_part" "$mnt/boot/efi"
    in_root grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram \
        "$loop" >"$work/grub.log" 2>&1 \
        || { cat "$work/grub.log" >&2; die "grub-install (UEFI) failed"; }
    [ -s "$mnt/boot/efi/EFI/BOOT/BOOTX64.EFI" ] || die "grub-install left no EFI/BOOT/BOOTX64.EFI"
    (cd "$mnt/boot/efi" && MTOOLS_SKIP_CHECK=1 mcopy -s -o -i "${loop}p$esp_part" ./* ::/) 2>"$work/mcopy.log" \
        || { cat "$work/mcopy.log" >&2; die "copying the ESP into ${loop}p$esp_part failed"; }
    umount "$mnt/boot/efi"
fi
in_root update-grub >"$work/update-grub.log" 2>&1 \
    || { cat "$work/update-grub.log" >&2; die "update-grub failed"; }
grep -q "root=UUID=$root_uuid" "$mnt/boot/grub/grub.cfg" \
    || die "grub.cfg does not boot root=UUID=$root_uuid: $(grep -m1 'linux\s' "$mnt/boot/grub/grub.cfg")"

for m in run dev sys proc; do umount "$mnt/$m"; done
[ -n "$boot_part" ] && umount "$mnt/boot"
umount "$mnt"
for l in "${loops[@]}"; do
    partx -d "$l" 2>/dev/null || true
    losetup -d "$l"
done
loops=()

cat >"$work/meta.env" <<EOF
VARIANT=$variant
FIRMWARE=$firmware
HOSTNAME=$hostname
ROOT_UUID=$root_uuid
DATA_UUID=$data_uuid
DATA_FILE_TEXT="$DATA_FILE_TEXT"
STATIC_IPV4=$STATIC_IP/$STATIC_PREFIX
OLD_NIC=$OLD_NIC
KERNEL=$kver
DISKS=$(ls "$work"/disk*.img | wc -l)
EOF

rm -rf "$mnt" "$work"/*.log "$work/initramfs.list"
mv -T "$work" "$out"
trap - EXIT
# Builds of other recipes stay: a checkout of another version may share this
# cache (FERRY_CACHE) and be using them right now. Remove .cache/ to reclaim.
echo "$out"
