#!/usr/bin/env bash
# Builds a Windows-shaped system disk from Debian packages only, and prints
# the directory that holds it.
#
#   scripts/make-windows-image.sh virtio|no-virtio
#
#   virtio     the VirtIO drivers installed as the virtio-win installer
#              leaves them: viostor (storage, boot start) and netkvm
#              (network) services in the SYSTEM hive, their .sys files in
#              Windows/System32/drivers
#   no-virtio  the same system without them (a server that only ever ran on
#              VMware or bare metal)
#
# The disk: MBR, one NTFS partition (mkntfs from ntfs-3g) holding
# Windows/System32/config/SYSTEM and SOFTWARE, registry hives written with
# hivexsh (libhivex-bin) on top of an empty hive made below, with the keys
# that matter to a migration: Select\Current, the driver services, partmgr's
# SanPolicy (2, offline shared, the Windows Server default that leaves data
# disks offline without their letters) and the version under
# Microsoft\Windows NT\CurrentVersion. The driver files are placeholders.
#
# What this proves and what it cannot: ferry recognises the disk, reads the
# registry and the volume, refuses a system without VirtIO drivers, sets the
# SAN policy (read back by hivexget, which ferry does not use to write) and
# grows the NTFS with ntfsresize. Whether Windows boots with those drivers
# on the cloud's hardware only a real Windows boot shows; nothing here can
# boot Windows.
#
# The directory holds disk0.img (sparse) and meta.env. Images are cached
# under $FERRY_CACHE/images (default .cache/ in the repository) by a hash of
# this script.
set -euo pipefail

IMAGE_SIZE_MIB=256
PRODUCT_NAME="Windows Server 2019 Datacenter"
SAN_POLICY=2

die() { echo "make-windows-image.sh: $*" >&2; exit 1; }

variant=${1:-}
case "$variant" in
    virtio | no-virtio) ;;
    *) die "usage: make-windows-image.sh virtio|no-virtio" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (loop devices, FUSE mounts)"
for tool in sfdisk losetup mkntfs ntfs-3g hivexsh hivexget python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install fdisk ntfs-3g libhivex-bin python3)"
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${FERRY_CACHE:-$repo/.cache}
key=$(sha256sum "$0" | cut -c1-16)
out="$cache/images/windows-$variant-$key"
if [ -s "$out/meta.env" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$cache/images"
exec 9>"$cache/images/.windows-$variant.lock"
flock 9
if [ -s "$out/meta.env" ]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache/images/.build-windows-$variant-XXXXXX")
mnt="$work/mnt"
loop=""
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || true; fi
    if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# An empty hive: the base block and one 4 KiB bin holding the root key (nk)
# and its security descriptor (sk), the rest of the bin a free cell. hivex
# edits hives but does not create them.
empty_hive() {
    python3 - "$1" "$2" <<'EOF'
import struct, sys

path, name = sys.argv[1], sys.argv[2]

def cell(body):
    size = (len(body) + 4 + 7) // 8 * 8
    return struct.pack("<i", -size) + bytes(body) + bytes(size - 4 - len(body))

nk_off, sk_off = 0x20, 0x80
nk = bytearray(0x4C) + b"ROOT"
nk[0:2] = b"nk"
struct.pack_into("<H", nk, 0x02, 0x2C)          # root key, no delete, ASCII name
struct.pack_into("<I", nk, 0x10, 0xFFFFFFFF)    # no parent
struct.pack_into("<IIII", nk, 0x14, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF)  # no subkeys
struct.pack_into("<II", nk, 0x24, 0, 0xFFFFFFFF)  # no values
struct.pack_into("<II", nk, 0x2C, sk_off, 0xFFFFFFFF)  # security, no class
struct.pack_into("<HH", nk, 0x48, 4, 0)         # name length, class length
descriptor = bytes([1, 0, 0x04, 0x80]) + bytes(16)  # self-relative, empty
sk = b"sk" + bytes(2) + struct.pack("<IIII", sk_off, sk_off, 1, len(descriptor)) + descriptor

hbin = bytearray(4096)
hbin[0:4] = b"hbin"
struct.pack_into("<II", hbin, 4, 0, 4096)
nkc, skc = cell(nk), cell(sk)
assert nk_off + len(nkc) <= sk_off
hbin[nk_off:nk_off + len(nkc)] = nkc
gap = sk_off - (nk_off + len(nkc))
if gap:
    struct.pack_into("<i", hbin, nk_off + len(nkc), gap)
hbin[sk_off:sk_off + len(skc)] = skc
free = sk_off + len(skc)
struct.pack_into("<i", hbin, free, 4096 - free)

base = bytearray(4096)
base[0:4] = b"regf"
struct.pack_into("<II", base, 4, 1, 1)          # sequence numbers
struct.pack_into("<IIII", base, 0x14, 1, 3, 0, 1)  # version 1.3, primary, direct memory load
struct.pack_into("<III", base, 0x24, nk_off, 4096, 1)  # root cell, bins size, clustering
n = name.encode("utf-16-le")[:62]
base[0x30:0x30 + len(n)] = n
checksum = 0
for i in range(0, 0x1FC, 4):
    checksum ^= struct.unpack_from("<I", base, i)[0]
struct.pack_into("<I", base, 0x1FC, checksum)
with open(path, "wb") as f:
    f.write(bytes(base) + bytes(hbin))
EOF
}

img="$work/disk0.img"
truncate -s "${IMAGE_SIZE_MIB}M" "$img"
printf 'label: dos\nstart=2048, type=7, bootable\n' | sfdisk -q "$img"
start=$((2048 * 512))
size=$(( (IMAGE_SIZE_MIB * 1024 * 1024) - start ))
loop=$(losetup -f --show -o "$start" --sizelimit "$size" "$img")
mkntfs -Q -F -q -L Windows -p 2048 -H 255 -S 63 "$loop"
mkdir -p "$mnt"
ntfs-3g "$loop" "$mnt"
mkdir -p "$mnt/Windows/System32/config" "$mnt/Windows/System32/drivers" "$mnt/Users"
for d in disk storahci; do
    printf 'MZ placeholder for %s.sys (test fixture)\n' "$d" >"$mnt/Windows/System32/drivers/$d.sys"
done

system="$work/SYSTEM"
software="$work/SOFTWARE"
empty_hive "$system" 'SYSTEM'
empty_hive "$software" 'SOFTWARE'

{
    cat <<'EOF'
add Select
cd Select
setval 3
Current
dword:0x1
Default
dword:0x1
LastKnownGood
dword:0x1
cd \
add ControlSet001
cd ControlSet001
add Control
add Services
cd Services
add disk
cd disk
setval 3
Start
dword:0x0
Type
dword:0x1
ImagePath
expandstring:System32\drivers\disk.sys
cd ..
add storahci
cd storahci
setval 3
Start
dword:0x0
Type
dword:0x1
ImagePath
expandstring:System32\drivers\storahci.sys
cd ..
add partmgr
cd partmgr
add Parameters
cd Parameters
setval 1
SanPolicy
EOF
    echo "dword:$SAN_POLICY"
    if [ "$variant" = virtio ]; then
        cat <<'EOF'
cd \ControlSet001\Services
add viostor
cd viostor
setval 5
Start
dword:0x0
Type
dword:0x1
ErrorControl
dword:0x1
Group
string:SCSI miniport
ImagePath
expandstring:\SystemRoot\System32\drivers\viostor.sys
cd ..
add netkvm
cd netkvm
setval 3
Start
dword:0x3
Type
dword:0x1
ImagePath
expandstring:\SystemRoot\System32\drivers\netkvm.sys
EOF
    fi
    echo commit
} | hivexsh -w "$system"

{
    cat <<'EOF'
add Microsoft
cd Microsoft
add Windows NT
cd Windows NT
add CurrentVersion
cd CurrentVersion
setval 5
ProductName
EOF
    echo "string:$PRODUCT_NAME"
    cat <<'EOF'
CurrentVersion
string:6.3
CurrentBuild
string:17763
EditionID
string:ServerDatacenter
InstallationType
string:Server
commit
EOF
} | hivexsh -w "$software"

# Both hives read back by the tool that wrote them, before they are used.
[ "$(hivexget "$system" '\Select' Current)" = 1 ] || die "the SYSTEM hive did not take Select\\Current"
[ "$(hivexget "$software" '\Microsoft\Windows NT\CurrentVersion' ProductName)" = "$PRODUCT_NAME" ] ||
    die "the SOFTWARE hive did not take ProductName"

cp "$system" "$mnt/Windows/System32/config/SYSTEM"
cp "$software" "$mnt/Windows/System32/config/SOFTWARE"
if [ "$variant" = virtio ]; then
    for d in viostor netkvm; do
        printf 'MZ placeholder for %s.sys (test fixture)\n' "$d" >"$mnt/Windows/System32/drivers/$d.sys"
    done
fi
umount "$mnt"
# ntfs-3g writes its last changes after the unmount returns.
for _ in $(seq 100); do
    pgrep -f "ntfs-3g $loop" >/dev/null || break
    sleep 0.1
done
ntfsfix --no-action "$loop" >/dev/null || die "ntfsfix --no-action finds the fresh NTFS unclean"
losetup -d "$loop"
loop=""

cat >"$work/meta.env" <<EOF
VARIANT=$variant
PRODUCT_NAME="$PRODUCT_NAME"
SAN_POLICY=$SAN_POLICY
VIRTIO=$([ "$variant" = virtio ] && echo yes || echo no)
NTFS_START=$start
DISKS=1
EOF
rm -rf "$mnt"
mv "$work" "$out"
trap - EXIT
echo "$out"
