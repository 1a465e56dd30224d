"""What the VHDX structures share: GUIDs, little-endian bit fields, and their size units."""

from uuid import UUID

from construct import BitStruct, Bytes, ByteSwapped, ExprAdapter

# GUIDs are stored as Windows GUID structs: the first three fields little-endian (MS-VHDX 2.1).
Guid = ExprAdapter(
    Bytes(16),
    decoder=lambda raw, ctx: UUID(bytes_le=bytes(raw)),
    encoder=lambda guid, ctx: guid.bytes_le,
)
ZERO_GUID = UUID(int=0)
KiB, MiB = 1024, 1024 * 1024  # the spec aligns everything to these


def LeBits(*fields):
    """A little-endian u32 of bit fields, listed from bit 31 down to bit 0 (as C bitfields
    on x86 lay them out, which is how the spec's tables are meant)."""
    return ByteSwapped(BitStruct(*fields))
