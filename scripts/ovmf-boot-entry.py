#!/usr/bin/env python3
"""Writes a copy of OVMF's empty variable store holding one firmware boot
entry, as `efibootmgr` leaves it on an installed server: Boot0000 pointing
at a loader file on a GPT partition, and BootOrder naming it first.

    ovmf-boot-entry.py VARS_IN VARS_OUT PART_NUMBER PART_START PART_SECTORS PART_GUID PATH DESCRIPTION

PART_START and PART_SECTORS are in 512-byte sectors; PATH is the loader's
path on the partition with backslashes (\\EFI\\debian\\grubx64.efi).

A test fixture: a server whose only loader is named by an NVRAM entry boots
on its old machine because the entry is there; the entry stays behind with
that machine's firmware, which is why the same disk on a new machine finds
no loader. The device path is the short form efibootmgr writes, HD()/File(),
which the firmware expands to whichever disk holds that partition.
"""
import struct
import sys
import uuid

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
AUTH_VARIABLE_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
NV_BS_RT = 0x7
VAR_ADDED = 0x3F


def device_path(part_number, start, sectors, part_guid, path):
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
    return hd + file_node + end


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
    body = header + n + bytes((-len(n)) % 4) + data
    return body + b"\xff" * ((-len(body)) % 4)


def main(argv):
    if len(argv) != 9:
        sys.exit(__doc__.strip().splitlines()[3].strip())
    src, dst, number, start, sectors, guid, path, description = argv[1:]
    store = bytearray(open(src, "rb").read())
    if store[0x28:0x2C] != b"_FVH":
        sys.exit(f"{src}: not a firmware volume")
    (header_len,) = struct.unpack_from("<H", store, 0x30)
    if uuid.UUID(bytes_le=bytes(store[header_len : header_len + 16])) != AUTH_VARIABLE_STORE:
        sys.exit(f"{src}: not an authenticated variable store")
    first = header_len + 28
    if any(b != 0xFF for b in store[first : first + 4096]):
        sys.exit(f"{src}: the variable store is not empty")
    dp = device_path(int(number), int(start), int(sectors), guid, path)
    blob = variable("Boot0000", EFI_GLOBAL_VARIABLE, load_option(description, dp))
    blob += variable("BootOrder", EFI_GLOBAL_VARIABLE, struct.pack("<H", 0))
    store[first : first + len(blob)] = blob
    with open(dst, "wb") as f:
        f.write(store)


if __name__ == "__main__":
    main(sys.argv)
