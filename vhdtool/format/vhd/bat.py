"""The block allocation table and sector bitmaps of dynamic and differencing images."""

import numpy as np

from vhdtool.errors import FormatError
from vhdtool.format.sector import SECTOR

UNALLOCATED = 0xFFFFFFFF
BAT_DTYPE = np.dtype(">u4")  # big-endian u32 sector numbers


def parse_bat(data: bytes, entries: int) -> np.ndarray:
    """The first `entries` BAT entries; padding after them (0xFF by QEMU, 0x00 by libvhd,
    ignored by Windows) is not part of the table."""
    if len(data) < entries * BAT_DTYPE.itemsize:  # e.g. the file shrank after it was measured
        raise FormatError(f"BAT of {entries:,} entries is cut short: only {len(data):,} bytes read")
    return np.frombuffer(data, dtype=BAT_DTYPE, count=entries)


def build_bat(bat: np.ndarray) -> bytes:
    """The table padded to a whole sector with 0xFF, as QEMU and Hyper-V write it."""
    raw = bat.astype(BAT_DTYPE).tobytes()
    return raw + b"\xff" * (-len(raw) % SECTOR)


def bat_bytes(entries: int) -> int:
    """On-disk size of a table of `entries`, padded to a sector."""
    return -(-entries * 4 // SECTOR) * SECTOR


def bitmap_bytes(block_size: int) -> int:
    """Size of a block's sector bitmap: one bit per sector, padded to a sector."""
    return -(-(block_size // SECTOR) // 8 // SECTOR) * SECTOR or SECTOR


def bitmap_sectors(bitmap: bytes, sectors: int) -> np.ndarray:
    """Per-sector presence flags; bit order is MSB first (sector n: byte n>>3, 0x80>>(n&7))."""
    return np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), count=sectors).view(bool)


def build_bitmap(present: np.ndarray, block_size: int) -> bytes:
    """A sector bitmap from per-sector flags, padded to `bitmap_bytes(block_size)`."""
    packed = np.packbits(present.astype(np.uint8)).tobytes()
    return packed.ljust(bitmap_bytes(block_size), b"\0")
