"""CRC-32C (Castagnoli), the checksum of every VHDX header, region table and log entry."""

import crc32c


def vhdx_checksum(data: bytes, field_offset: int = 4) -> int:
    """CRC-32C of `data` as if its 4-byte checksum field at `field_offset` were zero
    (MS-VHDX 2.2.2: computed over the structure with the Checksum field set to zero)."""
    crc = crc32c.crc32c(data[:field_offset])
    crc = crc32c.crc32c(b"\0\0\0\0", crc)
    return crc32c.crc32c(data[field_offset + 4 :], crc)
