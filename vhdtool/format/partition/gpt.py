"""The GUID Partition Table: header at LBA 1 (backup at the last LBA) and its entry array.

Layout as in the UEFI spec 2.10, 5.3.2 "GPT Header" (table 5.5) and 5.3.3 "GPT Partition Entry
Array" (table 5.6); type GUIDs from 5.3.3 table 5.7, the Discoverable Partitions Specification
(Linux) and Microsoft's "PARTITION_INFORMATION_GPT" page (Windows).
"""

from __future__ import annotations

import uuid
import zlib

from construct import Bytes, Container, Int32ul, Int64ul, Struct

from vhdtool.format.vhd.checksum import parse_exact

SIGNATURE = b"EFI PART"
HEADER_FIELDS_SIZE = 92  # header_size must be at least this and at most one logical block
HEADER_CRC_OFFSET = 16
ENTRY_SIZE = 128  # the smallest entry; the spec allows 128 * 2**n

GptHeader = Struct(
    "signature" / Bytes(8),
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,  # CRC-32 of header_size bytes with this field zeroed
    "reserved" / Int32ul,
    "my_lba" / Int64ul,
    "alternate_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "partition_entry_lba" / Int64ul,
    "number_of_partition_entries" / Int32ul,
    "size_of_partition_entry" / Int32ul,
    "partition_entry_array_crc32" / Int32ul,
)
assert GptHeader.sizeof() == HEADER_FIELDS_SIZE

GptEntry = Struct(
    "partition_type_guid" / Bytes(16),  # all zeros: the entry is unused
    "unique_partition_guid" / Bytes(16),
    "starting_lba" / Int64ul,
    "ending_lba" / Int64ul,  # inclusive
    "attributes" / Int64ul,
    "partition_name" / Bytes(72),  # UTF-16LE, NUL padded
)
assert GptEntry.sizeof() == ENTRY_SIZE

UNUSED = uuid.UUID(int=0)
EFI_SYSTEM = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
BIOS_BOOT = uuid.UUID("21686148-6449-6e6f-744e-656564454649")  # GRUB's core.img on GPT + BIOS
MICROSOFT_RESERVED = uuid.UUID("e3c9e316-0b5c-4db8-817d-f92df00215ae")
MICROSOFT_BASIC_DATA = uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
WINDOWS_RECOVERY = uuid.UUID("de94bba4-06d1-4d40-a16a-bfd50179d6ac")
LINUX_FILESYSTEM = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
LINUX_SWAP = uuid.UUID("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f")
LINUX_LVM = uuid.UUID("e6d6d379-f507-44c2-a23c-238f2a3df928")
LINUX_RAID = uuid.UUID("a19d880f-05fc-4d3b-a006-743f0f84911e")
LINUX_HOME = uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915")
LINUX_EXTENDED_BOOT = uuid.UUID("bc13c2ff-59e6-4262-a352-b275fd6f7172")
LINUX_ROOTS = {
    uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"): "Linux root (x86-64)",
    uuid.UUID("44479540-f297-41b2-9af7-d131d5f0458a"): "Linux root (x86)",
    uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae"): "Linux root (ARM-64)",
    uuid.UUID("69dad710-2ce4-4e3c-b16c-21a1d49abed3"): "Linux root (ARM-32)",
}

TYPE_NAMES = {
    EFI_SYSTEM: "EFI System",
    BIOS_BOOT: "BIOS boot",
    MICROSOFT_RESERVED: "Microsoft reserved",
    MICROSOFT_BASIC_DATA: "Microsoft basic data",
    WINDOWS_RECOVERY: "Windows recovery environment",
    LINUX_FILESYSTEM: "Linux filesystem",
    LINUX_SWAP: "Linux swap",
    LINUX_LVM: "Linux LVM",
    LINUX_RAID: "Linux RAID",
    LINUX_HOME: "Linux home",
    LINUX_EXTENDED_BOOT: "Linux extended boot",
    **LINUX_ROOTS,
}


def parse_header(data: bytes) -> Container:
    """The header's 92 defined bytes (the rest of its block is reserved)."""
    return parse_exact(GptHeader, data[:HEADER_FIELDS_SIZE], "GPT header")


def header_crc(block: bytes, header_size: int) -> int:
    """CRC-32 of the first `header_size` bytes with the CRC field taken as zero (UEFI 5.3.2)."""
    data = bytearray(block[:header_size])
    data[HEADER_CRC_OFFSET : HEADER_CRC_OFFSET + 4] = bytes(4)
    return zlib.crc32(data)


def parse_entry(data: bytes) -> Container:
    """The first 128 bytes of an entry (a larger entry's tail is reserved)."""
    return parse_exact(GptEntry, data[:ENTRY_SIZE], "GPT partition entry")


def guid(raw: bytes) -> uuid.UUID:
    """GUIDs are stored mixed-endian: the first three fields little-endian (UEFI appendix A)."""
    return uuid.UUID(bytes_le=raw)


def partition_name(raw: bytes) -> str:
    return raw.decode("utf-16-le", "replace").split("\0", 1)[0]


def type_name(type_guid: uuid.UUID) -> str:
    return TYPE_NAMES.get(type_guid, f"unknown ({str(type_guid).upper()})")
