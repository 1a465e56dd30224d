"""The file type identifier at offset 0 (MS-VHDX 2.2.1): signature and creator."""

from construct import Bytes, Const, Struct

from vhdtool.format.vhd.checksum import parse_exact

SIGNATURE = b"vhdxfile"
IDENTIFIER_SIZE = 8 + 512  # the structure; its 64 KiB slot is otherwise reserved

FileIdentifier = Struct(
    "signature" / Const(SIGNATURE),
    "creator" / Bytes(512),  # UTF-16LE, NUL padded, informational only
)


def parse_identifier(data: bytes):
    return parse_exact(FileIdentifier, data, "VHDX file identifier")


def creator_text(identifier) -> str:
    return identifier.creator.decode("utf-16-le", errors="replace").split("\0", 1)[0]
