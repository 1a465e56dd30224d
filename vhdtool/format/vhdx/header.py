"""The two 4 KiB headers (MS-VHDX 2.2.2).

Header 1 at 64 KiB, header 2 at 128 KiB. A header is valid when its signature is "head" and
its CRC-32C matches; the current header is the valid one with the larger sequence number
(spec 2.2.2.1; QEMU vhdx_parse_header).
"""

from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

from vhdtool.format.vhd.checksum import parse_exact
from vhdtool.format.vhdx.checksum import vhdx_checksum
from vhdtool.format.vhdx.fields import Guid, KiB

HEADER_SIZE = 4 * KiB
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIGNATURE = b"head"
HEADER_VERSION = 1
LOG_VERSION = 0

Header = Struct(
    "signature" / Bytes(4),
    "checksum" / Int32ul,
    "sequence_number" / Int64ul,
    "file_write_guid" / Guid,
    "data_write_guid" / Guid,
    "log_guid" / Guid,  # non-zero: the log holds entries to replay before reading
    "log_version" / Int16ul,
    "version" / Int16ul,
    "log_length" / Int32ul,  # multiple of 1 MiB
    "log_offset" / Int64ul,  # multiple of 1 MiB
    "reserved" / Bytes(4016),
)
assert Header.sizeof() == HEADER_SIZE


def parse_header(data: bytes):
    return parse_exact(Header, data, "VHDX header")


def header_is_valid(data: bytes, header) -> bool:
    return header.signature == HEADER_SIGNATURE and vhdx_checksum(data) == header.checksum
