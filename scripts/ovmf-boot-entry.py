#!/usr/bin/env python3
"""Writes a copy of OVMF's empty variable store holding one firmware boot
entry, as `efibootmgr` leaves it on an installed server: Boot0000 pointing
at a loader file on a GPT partition, and BootOrder naming it first.

    ovmf-boot-entry.py VARS_IN VARS_OUT PCI_DEVICE SATA_PORT PART_NUMBER PART_START PART_SECTORS PART_GUID PATH DESCRIPTION

PCI_DEVICE is the AHCI controller's slot on the root bus and SATA_PORT the
disk's port on it; PART_START and PART_SECTORS are in 512-byte sectors;
PATH is the loader's path on the partition with backslashes
(\\EFI\\debian\\grubx64.efi).

A test fixture: a server whose only loader is named by an NVRAM entry boots
on its old machine because the entry is there; the entry stays behind with
that machine's firmware, which is why the same disk on a new machine finds
no loader. The device path is the whole one, from the PCI root through
the old machine's SATA port to the file, which OVMF matches against the
disk QEMU is told to boot from.
"""
import struct
import sys
import uuid

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
AUTH_VARIABLE_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
NV_BS_RT = 0x7
VAR_ADDED = 0x3F


def device_path(pci_device, sata_port, part_number, start, sectors, part_guid, path):
    acpi = struct.pack("<BBHII", 0x02, 0x01, 12, 0x0A0341D0, 0)  # PciRoot(0x0)
    pci = struct.pack("<BBHBB", 0x01, 0x01, 6, 0, pci_device)  # Pci(dev,0)
    sata = struct.pack("<BBHHHH", 0x03, 0x12, 10, sata_port, 0xFFFF, 0)
    hd = struct.pack(
        "<BBHIQQ16sBB",
        0x04,  # media device path
        0x01,  # hard drive
        42,
        part_number,
        start,
        sectors,
        uuid.UUID(part_guid).bytes_le,
        0x02,  # GPT
        0x02,  # GUID signature
    )
    name = (path + "\0").encode("utf-16-le")
    file_node = struct.pack("<BBH", 0x04, 0x04, 4 + len(name)) + name
    end = struct.pack("<BBH", 0x7F, 0xFF, 4)
    return acpi + pci + sata + hd + file_node + end


def load_option(description, dp):
    desc = (description + "\0").encode("utf-16-le")
    return struct.pack("<IH", 1, len(dp)) + desc + dp  # LOAD_OPTION_ACTIVE


def variable(name, guid, data):
    n = (name + "\0").encode("utf-16-le")
    header = struct.pack(
        "<HBBIQ16sIII16s",
        0x55AA,
        VAR_ADDED,
        0,
        NV_BS_RT,
        0,
        bytes(16),
        0,
        len(n),
        len(data),
        guid.bytes_le,
    )
    # No padding between name, data and the next header: edk2 aligns
    # variables to 1 byte on x86 (ALIGNMENT in VariableFormat.h).
    return header + n + data


def main(argv):
    if len(argv) != 11:
        sys.exit("usage: " + __doc__.strip().splitlines()[4].strip())
    src, dst, pci_device, sata_port, number, start, sectors, guid, path, description = argv[1:]
    store = bytearray(open(src, "rb").read())
    if store[0x28:0x2C] != b"_FVH":
        sys.exit(f"{src}: not a firmware volume")
    (header_len,) = struct.unpack_from("<H", store, 0x30)
    if uuid.UUID(bytes_le=bytes(store[header_len : header_len + 16])) != AUTH_VARIABLE_STORE:
        sys.exit(f"{src}: not an authenticated variable store")
    first = header_len + 28
    if any(b != 0xFF for b in store[first : first + 4096]):
        sys.exit(f"{src}: the variable store is not empty")
    dp = device_path(
        int(pci_device, 0), int(sata_port), int(number), int(start), int(sectors), guid, path
    )
    blob = variable("Boot0000", EFI_GLOBAL_VARIABLE, load_option(description, dp))
    blob += variable("BootOrder", EFI_GLOBAL_VARIABLE, struct.pack("<H", 0))
    store[first : first + len(blob)] = blob
    with open(dst, "wb") as f:
        f.write(store)


if __name__ == "__main__":
    main(sys.argv)
