"""The region table (MS-VHDX 2.2.3): where the BAT and metadata regions lie in the file.

Two copies, at 192 KiB and 256 KiB, each 64 KiB with a CRC-32C over all of it.
"""

from uuid import UUID

from construct import BitsInteger, Bytes, Flag, Int32ul, Int64ul, Struct

from vhdtool.format.vhd.checksum import parse_exact
from vhdtool.format.vhdx.fields import Guid, KiB, LeBits

REGION_TABLE_SIZE = 64 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_SIGNATURE = b"regi"
MAX_REGION_ENTRIES = 2047

BAT_REGION = UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
KNOWN_REGIONS = {BAT_REGION: "BAT", METADATA_REGION: "metadata"}

RegionTableHeader = Struct(
    "signature" / Bytes(4),
    "checksum" / Int32ul,
    "entry_count" / Int32ul,
    "reserved" / Int32ul,
)

RegionEntry = Struct(
    "guid" / Guid,
    "file_offset" / Int64ul,  # multiple of 1 MiB
    "length" / Int32ul,  # multiple of 1 MiB
    "flags" / LeBits("reserved" / BitsInteger(31), "required" / Flag),
)
assert RegionEntry.sizeof() == 32


def parse_table_header(data: bytes):
    return parse_exact(RegionTableHeader, data[: RegionTableHeader.sizeof()], "region table header")


def parse_entries(data: bytes, count: int) -> list:
    start = RegionTableHeader.sizeof()
    return [
        parse_exact(RegionEntry, data[start + i * 32 : start + (i + 1) * 32], "region table entry")
        for i in range(count)
    ]
