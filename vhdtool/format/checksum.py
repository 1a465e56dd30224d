"""The VHD checksum: one's complement of the byte sum, taken with the checksum field zeroed.

Footer and dynamic header use the same rule (spec; QEMU vpc_checksum, libvhd vhd_checksum_*).
"""


def vhd_checksum(data: bytes, field_offset: int) -> int:
    """Checksum of `data` as if its 4-byte checksum field at `field_offset` were zero."""
    total = sum(data) - sum(data[field_offset : field_offset + 4])
    return ~total & 0xFFFFFFFF
