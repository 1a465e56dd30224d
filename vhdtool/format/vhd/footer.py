"""The 512-byte hard disk footer (VHD spec "Hard Disk Footer Format"), big-endian.

Every VHD ends with it; dynamic and differencing images also keep a copy at offset 0.
"""

import uuid as uuidlib
from enum import IntEnum

from construct import Bytes, Container, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from vhdtool.format.sector import SECTOR
from vhdtool.format.vhd.checksum import parse_exact, seal, vhd_checksum
from vhdtool.format.vhd.geometry import Chs, chs_for_size
from vhdtool.format.vhd.timestamp import now

FOOTER_SIZE = 512
# Virtual PC before 2004 wrote footers one byte short (libvhd vhd_read_short_footer).
SHORT_FOOTER_SIZE = 511
COOKIE = b"conectix"
FEATURE_TEMPORARY = 0x1
FEATURE_RESERVED = 0x2  # "must always be set" (spec)
FORMAT_VERSION = 0x00010000
# The spec text says 0xFFFFFFFF, but the field is 64 bits and every implementation
# (QEMU, libvhd, libvhdi, Hyper-V) writes all 64 bits set.
FIXED_DATA_OFFSET = 0xFFFF_FFFF_FFFF_FFFF
CHECKSUM_OFFSET = 64


class DiskType(IntEnum):
    NONE = 0
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


def disk_type_name(value: int) -> str | None:
    """"fixed", "dynamic"... for a disk type field; None for a value the spec does not define."""
    return DiskType(value).name.lower() if value in DiskType._value2member_map_ else None


Geometry = Struct(
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
)

Footer = Struct(
    "cookie" / Bytes(8),
    "features" / Int32ub,
    "format_version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_application" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_host_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "disk_geometry" / Geometry,
    "disk_type" / Int32ub,
    "checksum" / Int32ub,
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    "reserved" / Bytes(427),  # zero; blktap uses its first byte as a "hidden" flag
)
assert Footer.sizeof() == FOOTER_SIZE

# Creator applications seen in the wild and who writes them.
CREATORS = {
    b"vpc ": "Microsoft Virtual PC",
    b"vs  ": "Microsoft Virtual Server",
    b"win ": "Microsoft Windows / Hyper-V",
    b"d2v\0": "Sysinternals Disk2vhd",  # NUL, not the space QEMU's table expects
    b"d2v ": "Sysinternals Disk2vhd",
    b"qemu": "QEMU",
    b"qem2": "QEMU (force_size: current size authoritative)",
    b"tap\0": "Xen blktap / XenServer",
    b"CTXS": "Citrix XenConverter",
    b"vbox": "Oracle VirtualBox",
    b"wa\0\0": "Microsoft Azure (azure-vhd-utils)",
}
HOST_OSES = {b"Wi2k": "Windows", b"Mac ": "Macintosh", b"\0\0\0\0": "none"}  # blktap writes 0

# What vhdtool writes (see README "Sizes and geometry"): creator "win " is the one creator every
# reader takes to mean "the footer's current size is the disk size" (qemu 7.2 and 10, libvhdi,
# VirtualBox, Hyper-V, Azure), while the geometry stays the spec's, which vhd-util check
# requires not to exceed the size. Version 10.0 and host "Wi2k" as Hyper-V writes them.
OUR_CREATOR = b"win "
OUR_CREATOR_VERSION = 0x000A0000
OUR_HOST_OS = b"Wi2k"


def parse_footer(data: bytes) -> Container:
    """Decode a footer; a 511-byte Virtual PC footer is padded with its missing zero byte."""
    if len(data) == SHORT_FOOTER_SIZE:
        data = data + b"\0"
    return parse_exact(Footer, data, "footer")


def build_footer(footer: Container) -> bytes:
    """Encode a footer exactly as given (checksum included as stored)."""
    return Footer.build(footer)


def footer_checksum(data: bytes) -> int:
    return vhd_checksum(data, CHECKSUM_OFFSET)


def seal_footer(footer: Container) -> bytes:
    """Encode a footer with its checksum recomputed (and stored back into `footer`)."""
    return seal(Footer, footer, CHECKSUM_OFFSET)


def geometry(footer: Container) -> Chs:
    g = footer.disk_geometry
    return Chs(g.cylinders, g.heads, g.sectors_per_track)


# qemu 7.2 (block/vpc.c) reads current_size for these creators, CHS for every other one.
QEMU_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
# QEMU and Hyper-V refuse larger VHDs (vpc.c VHD_MAX_SECTORS = 0xff000000).
MAX_VHD_SIZE = 0xFF000000 * SECTOR


def qemu_7_2_size(footer: Container) -> int:
    """The virtual size qemu-img 7.2 reads: current_size for the creators above or the
    65535/16/255 marker, else the CHS geometry multiplied out (usually a little less)."""
    chs = geometry(footer)
    if footer.creator_application in QEMU_CURRENT_SIZE_CREATORS or chs.is_max:
        return footer.current_size // SECTOR * SECTOR
    return chs.capacity


def new_footer(
    size: int,
    disk_type: DiskType,
    *,
    data_offset: int | None = None,
    unique_id: bytes | None = None,
    timestamp: int | None = None,
) -> Container:
    """A fresh footer as vhdtool writes it: spec geometry, our creator, new UUID."""
    chs = chs_for_size(size)
    return Container(
        cookie=COOKIE,
        features=FEATURE_RESERVED,
        format_version=FORMAT_VERSION,
        data_offset=FIXED_DATA_OFFSET if data_offset is None else data_offset,
        timestamp=now() if timestamp is None else timestamp,
        creator_application=OUR_CREATOR,
        creator_version=OUR_CREATOR_VERSION,
        creator_host_os=OUR_HOST_OS,
        original_size=size,
        current_size=size,
        disk_geometry=Container(
            cylinders=chs.cylinders, heads=chs.heads, sectors_per_track=chs.sectors_per_track
        ),
        disk_type=int(disk_type),
        checksum=0,
        unique_id=unique_id if unique_id is not None else uuidlib.uuid4().bytes,
        saved_state=0,
        reserved=bytes(427),
    )


def creator_text(code: bytes) -> str:
    """The 4-byte creator/host code as printable text, NULs shown as \\0."""
    return "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" if b else "\\0" for b in code)
