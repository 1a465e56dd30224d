"""The log (MS-VHDX 2.3): a circular buffer of 4 KiB sectors holding entries.

An entry is a header sector (header and the first descriptors), more descriptor sectors if
needed, then one data sector per data descriptor. Entries of one sequence have consecutive
sequence numbers; the checksum is the CRC-32C of the whole entry.
"""

from construct import Bytes, Int32ul, Int64ul, Struct

from vhdtool.format.vhdx.fields import Guid

LOG_SECTOR = 4096
ENTRY_SIGNATURE = b"loge"
DATA_DESCRIPTOR = b"desc"
ZERO_DESCRIPTOR = b"zero"
DATA_SIGNATURE = b"data"
DESCRIPTOR_SIZE = 32

LogEntryHeader = Struct(
    "signature" / Bytes(4),
    "checksum" / Int32ul,
    "entry_length" / Int32ul,  # multiple of 4 KiB
    "tail" / Int32ul,  # log offset of the first entry of the sequence this one ends
    "sequence_number" / Int64ul,  # > 0
    "descriptor_count" / Int32ul,
    "reserved" / Int32ul,
    "log_guid" / Guid,  # must equal the header's log GUID
    "flushed_file_offset" / Int64ul,  # the file was at least this long when the entry was written
    "last_file_offset" / Int64ul,  # the file is at least this long once the entry is applied
)
assert LogEntryHeader.sizeof() == 64

Descriptor = Struct(
    "signature" / Bytes(4),  # "desc" or "zero"
    "trailing_bytes" / Bytes(4),  # desc: last 4 bytes of the sector; zero: reserved
    "leading_bytes" / Bytes(8),  # desc: first 8 bytes of the sector; zero: length (u64)
    "file_offset" / Int64ul,  # multiple of 4 KiB
    "sequence_number" / Int64ul,
)
assert Descriptor.sizeof() == DESCRIPTOR_SIZE

DataSector = Struct(
    "signature" / Bytes(4),
    "sequence_high" / Int32ul,
    "data" / Bytes(4084),  # the sector's bytes 8..4092 (the rest are in the descriptor)
    "sequence_low" / Int32ul,
)
assert DataSector.sizeof() == LOG_SECTOR


def descriptor_sectors(count: int) -> int:
    """Sectors holding the header (the size of two descriptors) and `count` descriptors."""
    return -(-(count + 2) * DESCRIPTOR_SIZE // LOG_SECTOR)
