"""The Master Boot Record in sector 0 (and the extended boot records of logical partitions).

Layout as in the UEFI spec 2.10, 5.2.1 "Legacy MBR" (table 5.1) and 5.2.3 "Protective MBR";
partition type codes as util-linux's libfdisk (include/pt-mbr-partnames.h) names them.
"""

from __future__ import annotations

from construct import Array, Bytes, Container, Int8ul, Int32ul, Struct

from vhdtool.format.vhd.checksum import parse_exact

MBR_SIZE = 512
BOOT_SIGNATURE = b"\x55\xaa"
ACTIVE = 0x80  # boot indicator of the partition a BIOS boots; 0x00 otherwise, anything else invalid
PRIMARY_COUNT = 4

PartitionRecord = Struct(
    "boot_indicator" / Int8ul,
    "starting_chs" / Bytes(3),  # unused by anything that reads LBAs
    "os_type" / Int8ul,
    "ending_chs" / Bytes(3),
    "starting_lba" / Int32ul,
    "size_in_lba" / Int32ul,
)

Mbr = Struct(
    "boot_code" / Bytes(440),
    "unique_mbr_disk_signature" / Int32ul,
    "unknown" / Bytes(2),
    "partition_records" / Array(PRIMARY_COUNT, PartitionRecord),
    "signature" / Bytes(2),
)
assert Mbr.sizeof() == MBR_SIZE

# Type codes that mean something for booting or for the OS (libfdisk's names).
EMPTY = 0x00
GPT_PROTECTIVE = 0xEE  # the whole disk is GPT (UEFI 5.2.3)
EFI_SYSTEM = 0xEF
EXTENDED = frozenset({0x05, 0x0F, 0x85})  # DOS, W95 (LBA) and Linux extended: hold EBRs
NTFS = 0x07  # "HPFS/NTFS/exFAT": Windows' basic data on MBR
WINDOWS_RECOVERY = 0x27  # "Hidden NTFS WinRE"
LINUX = 0x83
LINUX_SWAP = 0x82
LINUX_LVM = 0x8E
LINUX_RAID = 0xFD

TYPE_NAMES = {
    NTFS: "HPFS/NTFS/exFAT",
    0x0B: "W95 FAT32",
    0x0C: "W95 FAT32 (LBA)",
    0x0E: "W95 FAT16 (LBA)",
    0x05: "Extended",
    0x0F: "W95 Ext'd (LBA)",
    0x85: "Linux extended",
    WINDOWS_RECOVERY: "Hidden NTFS WinRE",
    LINUX_SWAP: "Linux swap / Solaris",
    LINUX: "Linux",
    LINUX_LVM: "Linux LVM",
    LINUX_RAID: "Linux raid autodetect",
    GPT_PROTECTIVE: "GPT",
    EFI_SYSTEM: "EFI (FAT-12/16/32)",
}


def parse_mbr(data: bytes) -> Container:
    """Sector 0 (or an EBR: the same layout, with two records in use)."""
    return parse_exact(Mbr, data, "master boot record")


def type_name(os_type: int) -> str:
    return TYPE_NAMES.get(os_type, f"unknown (0x{os_type:02x})")
