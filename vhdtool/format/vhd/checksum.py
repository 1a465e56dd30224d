"""The VHD checksum: one's complement of the byte sum, taken with the checksum field zeroed.

Footer and dynamic header use the same rule (spec; QEMU vpc_checksum, libvhd vhd_checksum_*),
and are decoded and sealed the same way.
"""

from construct import Construct, ConstructError, Container

from vhdtool.errors import FormatError


def vhd_checksum(data: bytes, field_offset: int) -> int:
    """Checksum of `data` as if its 4-byte checksum field at `field_offset` were zero."""
    total = sum(data) - sum(data[field_offset : field_offset + 4])
    return ~total & 0xFFFFFFFF


def parse_exact(struct: Construct, data: bytes, what: str) -> Container:
    """Decode one fixed-size structure; any other length is a FormatError."""
    if len(data) != struct.sizeof():
        raise FormatError(f"{what} is {len(data)} bytes, expected {struct.sizeof()}")
    try:
        return struct.parse(data)
    except ConstructError as exc:  # not for fixed-size byte fields; kept as the type contract
        raise FormatError(f"unreadable {what}: {exc}") from None


def seal(struct: Construct, container: Container, field_offset: int) -> bytes:
    """Encode `container` with its checksum recomputed (and stored back into it)."""
    container.checksum = 0
    container.checksum = vhd_checksum(struct.build(container), field_offset)
    return struct.build(container)
