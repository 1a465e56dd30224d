"""The 1024-byte dynamic disk header (VHD spec "Dynamic Disk Header Format"), big-endian.

Dynamic and differencing images keep it at the footer's data offset (normally 512).
"""

from construct import Array, Bytes, Container, Int32ub, Int64ub, Struct

from vhdtool.errors import FormatError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhd.checksum import parse_exact, seal, vhd_checksum

HEADER_SIZE = 1024
HEADER_COOKIE = b"cxsparse"
HEADER_VERSION = 0x00010000
HEADER_DATA_OFFSET = 0xFFFF_FFFF_FFFF_FFFF  # unused, all ones
HEADER_CHECKSUM_OFFSET = 36
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
# The largest power of two the 32-bit block size field holds (QEMU vpc and vhd-util read it
# as a uint32): 4 GiB or more cannot be written at all.
MAX_BLOCK_SIZE = 1 << 31
LOCATOR_COUNT = 8
PARENT_NAME_SIZE = 512

# Platform codes of parent locators.
W2RU = b"W2ru"  # relative Windows path, UTF-16LE (".\\parent.vhd")
W2KU = b"W2ku"  # absolute Windows path, UTF-16LE
MACX = b"MacX"  # file:// URL, UTF-8
PLATFORM_NONE = b"\0\0\0\0"

ParentLocator = Struct(
    "platform_code" / Bytes(4),
    "platform_data_space" / Int32ub,
    "platform_data_length" / Int32ub,
    "reserved" / Int32ub,
    "platform_data_offset" / Int64ub,
)

DynamicHeader = Struct(
    "cookie" / Bytes(8),
    "data_offset" / Int64ub,
    "table_offset" / Int64ub,
    "header_version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
    "checksum" / Int32ub,
    "parent_unique_id" / Bytes(16),
    "parent_timestamp" / Int32ub,
    "reserved1" / Bytes(4),
    "parent_unicode_name" / Bytes(PARENT_NAME_SIZE),  # UTF-16BE, no BOM, NUL padded
    "parent_locators" / Array(LOCATOR_COUNT, ParentLocator),
    "reserved2" / Bytes(256),
)
assert DynamicHeader.sizeof() == HEADER_SIZE


def parse_header(data: bytes) -> Container:
    return parse_exact(DynamicHeader, data, "dynamic header")


def build_header(header: Container) -> bytes:
    return DynamicHeader.build(header)


def header_checksum(data: bytes) -> int:
    return vhd_checksum(data, HEADER_CHECKSUM_OFFSET)


def seal_header(header: Container) -> bytes:
    return seal(DynamicHeader, header, HEADER_CHECKSUM_OFFSET)


def empty_locator() -> Container:
    return Container(
        platform_code=PLATFORM_NONE,
        platform_data_space=0,
        platform_data_length=0,
        reserved=0,
        platform_data_offset=0,
    )


def new_header(
    table_offset: int,
    max_table_entries: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    parent_unique_id: bytes = bytes(16),
    parent_timestamp: int = 0,
    parent_name: str = "",
    locators: list[Container] | None = None,
) -> Container:
    locators = list(locators or [])
    return Container(
        cookie=HEADER_COOKIE,
        data_offset=HEADER_DATA_OFFSET,
        table_offset=table_offset,
        header_version=HEADER_VERSION,
        max_table_entries=max_table_entries,
        block_size=block_size,
        checksum=0,
        parent_unique_id=parent_unique_id,
        parent_timestamp=parent_timestamp,
        reserved1=bytes(4),
        parent_unicode_name=encode_parent_name(parent_name),
        parent_locators=locators + [empty_locator() for _ in range(LOCATOR_COUNT - len(locators))],
        reserved2=bytes(256),
    )


def encode_parent_name(name: str) -> bytes:
    raw = name.encode("utf-16-be")
    if len(raw) > PARENT_NAME_SIZE:
        raise FormatError(f"parent name longer than {PARENT_NAME_SIZE // 2} UTF-16 units")
    return raw.ljust(PARENT_NAME_SIZE, b"\0")


def parent_name(header: Container) -> str:
    """The header's parent name: UTF-16BE up to the first NUL unit."""
    raw = header.parent_unicode_name
    for i in range(0, len(raw), 2):
        if raw[i : i + 2] == b"\0\0":
            raw = raw[:i]
            break
    return raw.decode("utf-16-be", errors="replace")


# QEMU block/vpc.c sizes a block's bitmap as ((block_size / 8) / 512 + 511) & ~511 bytes: 0
# below 4 KiB (the spec's bitmap is one sector), so it reads each bitmap as data.
QEMU_MIN_BLOCK_SIZE = 4096


def block_size_valid(block_size: int) -> bool:
    """A power of two from a sector to MAX_BLOCK_SIZE (QEMU vpc_open: "Invalid block size")."""
    return SECTOR <= block_size <= MAX_BLOCK_SIZE and not block_size & (block_size - 1)


def locator_data_space(locator: Container) -> int:
    """Bytes reserved for a locator's data.

    The spec says sectors, but Virtual PC and Hyper-V write bytes; libvhd's rule: a value
    below 512 is a sector count, otherwise a byte count.
    """
    space = locator.platform_data_space
    return space * SECTOR if space < SECTOR else space


def decode_locator(code: bytes, data: bytes) -> str:
    """The path text a locator holds: UTF-16LE for Windows codes, UTF-8 for MacX."""
    if code in (W2RU, W2KU, b"Wi2r", b"Wi2k"):
        text = data.decode("utf-16-le", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    return text.split("\0", 1)[0]
