"""The metadata region (MS-VHDX 2.6): a 64 KiB table of items, then the items themselves."""

from uuid import UUID

from construct import Array, BitsInteger, Bytes, Flag, Int16ul, Int32ul, Int64ul, Struct

from vhdtool.errors import FormatError
from vhdtool.format.vhd.checksum import parse_exact
from vhdtool.format.vhdx.fields import Guid, KiB, LeBits, MiB

METADATA_TABLE_SIZE = 64 * KiB
METADATA_SIGNATURE = b"metadata"
MAX_METADATA_ENTRIES = 2047
MAX_ITEM_SIZE = 1 * MiB  # ours, not the spec's: see disk/vhdx.py

FILE_PARAMETERS = UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA = UUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = UUID("CDA348C7-445D-4471-9CC9-E9885251C556")
# The reference notes say ...2B: a typo; the spec, QEMU (parent_locator_guid) and libvhdi say ...2D.
PARENT_LOCATOR = UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
KNOWN_ITEMS = {
    FILE_PARAMETERS: "file parameters",
    VIRTUAL_DISK_SIZE: "virtual disk size",
    PAGE_83_DATA: "page 83 data",
    LOGICAL_SECTOR_SIZE: "logical sector size",
    PHYSICAL_SECTOR_SIZE: "physical sector size",
    PARENT_LOCATOR: "parent locator",
}
# The only parent locator type the spec defines: a VHDX parent (MS-VHDX 2.6.2.6.1).
VHDX_PARENT_LOCATOR_TYPE = UUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")

MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1 * MiB, 256 * MiB
SECTOR_SIZES = (512, 4096)
MAX_VIRTUAL_DISK_SIZE = 64 * 1024**4  # 64 TiB (spec 2.6.2.2)

MetadataTableHeader = Struct(
    "signature" / Bytes(8),
    "reserved" / Int16ul,
    "entry_count" / Int16ul,
    "reserved2" / Bytes(20),
)

MetadataEntry = Struct(
    "item_id" / Guid,
    "offset" / Int32ul,  # from the start of the metadata region; >= 64 KiB unless length is 0
    "length" / Int32ul,
    "flags"
    / LeBits(
        "reserved" / BitsInteger(29),
        "is_required" / Flag,
        "is_virtual_disk" / Flag,
        "is_user" / Flag,
    ),
    "reserved2" / Int32ul,
)
assert MetadataTableHeader.sizeof() == MetadataEntry.sizeof() == 32

FileParameters = Struct(
    "block_size" / Int32ul,  # power of two, 1 MiB to 256 MiB
    "flags"
    / LeBits("reserved" / BitsInteger(30), "has_parent" / Flag, "leave_blocks_allocated" / Flag),
)
VirtualDiskSize = Struct("virtual_disk_size" / Int64ul)
Page83Data = Struct("page_83_data" / Guid)
LogicalSectorSize = Struct("logical_sector_size" / Int32ul)
PhysicalSectorSize = Struct("physical_sector_size" / Int32ul)

ParentLocatorHeader = Struct(
    "locator_type" / Guid,
    "reserved" / Int16ul,
    "key_value_count" / Int16ul,
)
ParentLocatorEntry = Struct(
    "key_offset" / Int32ul,  # from the start of the parent locator item
    "value_offset" / Int32ul,
    "key_length" / Int16ul,  # bytes of UTF-16LE, no NUL
    "value_length" / Int16ul,
)
ITEM_STRUCTS = {
    FILE_PARAMETERS: FileParameters,
    VIRTUAL_DISK_SIZE: VirtualDiskSize,
    PAGE_83_DATA: Page83Data,
    LOGICAL_SECTOR_SIZE: LogicalSectorSize,
    PHYSICAL_SECTOR_SIZE: PhysicalSectorSize,
}


def parse_table(data: bytes):
    """The table header and its entries (at most the 2047 a 64 KiB table holds)."""
    header = parse_exact(MetadataTableHeader, data[:32], "metadata table header")
    count = min(header.entry_count, MAX_METADATA_ENTRIES)
    entries = Array(count, MetadataEntry).parse(data[32 : 32 + count * 32].ljust(count * 32, b"\0"))
    return header, list(entries)


def parse_item(item_id: UUID, data: bytes):
    struct = ITEM_STRUCTS[item_id]
    return parse_exact(struct, data[: struct.sizeof()], KNOWN_ITEMS[item_id])


def parse_parent_locator(data: bytes) -> tuple[UUID, dict[str, str]]:
    """The locator type and its key/value pairs; out-of-bounds entries raise FormatError."""
    header = parse_exact(ParentLocatorHeader, data[:20], "parent locator header")
    pairs: dict[str, str] = {}
    for i in range(header.key_value_count):
        raw = data[20 + i * 12 : 32 + i * 12]
        entry = parse_exact(ParentLocatorEntry, raw, "parent locator entry")
        key = _utf16(data, entry.key_offset, entry.key_length)
        value = _utf16(data, entry.value_offset, entry.value_length)
        if key is None or value is None:
            raise FormatError(f"parent locator entry {i} points outside the {len(data)}-byte item")
        pairs[key] = value
    return header.locator_type, pairs


def _utf16(data: bytes, offset: int, length: int) -> str | None:
    if length == 0 or offset + length > len(data):
        return None
    return data[offset : offset + length].decode("utf-16-le", errors="replace")
