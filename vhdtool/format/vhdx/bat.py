"""The block allocation table (MS-VHDX 2.5): u64 entries, state in bits 0-2, file offset in
MiB in bits 20-63; after every `chunk_ratio` payload entries comes one sector bitmap entry."""

from enum import IntEnum

import numpy as np

from vhdtool.format.vhdx.fields import MiB
from vhdtool.ranges import ceil_div

BAT_DTYPE = np.dtype("<u8")
STATE_MASK = 0x7
OFFSET_SHIFT = 20  # bits 20-63 hold the offset in MiB: entry & ~(1 MiB - 1) is the byte offset
SECTOR_BITMAP_BLOCK_SIZE = 1 * MiB  # one bit per logical sector of a chunk


class PayloadState(IntEnum):
    NOT_PRESENT = 0  # no data here: zeros, or the parent's in a differencing file
    UNDEFINED = 1  # contents undefined: any value may be returned (we return zeros or parent)
    ZERO = 2  # reads as zeros
    UNMAPPED = 3  # unmapped by the guest (trim): reads as zeros
    FULLY_PRESENT = 6  # the whole block is in the file at the entry's offset
    PARTIALLY_PRESENT = 7  # differencing only: the sector bitmap says which sectors are here


class BitmapState(IntEnum):
    NOT_PRESENT = 0
    PRESENT = 6


# Block states whose data lies in the file (the rest are never read).
HOLDS_DATA = (PayloadState.FULLY_PRESENT, PayloadState.PARTIALLY_PRESENT)


def chunk_ratio(logical_sector_size: int, block_size: int) -> int:
    """Payload blocks covered by one 1 MiB sector bitmap: 2^23 sectors' worth (spec 2.5)."""
    return (1 << 23) * logical_sector_size // block_size


def data_blocks(virtual_size: int, block_size: int) -> int:
    return ceil_div(virtual_size, block_size)


def total_entries(
    virtual_size: int, block_size: int, logical_sector_size: int, has_parent: bool
) -> int:
    """BAT entries the disk needs (spec 2.5): payload entries interleaved with bitmap entries.

    A dynamic file may stop after the last payload entry; a differencing file has every chunk's
    bitmap entry."""
    blocks = data_blocks(virtual_size, block_size)
    ratio = chunk_ratio(logical_sector_size, block_size)
    if has_parent:
        return ceil_div(blocks, ratio) * (ratio + 1)
    return blocks + (blocks - 1) // ratio


def payload_index(block: int, ratio: int) -> int:
    return block + block // ratio


def bitmap_index(block: int, ratio: int) -> int:
    """The BAT entry of the sector bitmap covering `block` (after its chunk's payload entries)."""
    return (block // ratio) * (ratio + 1) + ratio


def states(bat: np.ndarray) -> np.ndarray:
    """Each entry's state (uint8), from its low byte: no uint64 temporary (a 64 TiB disk of
    1 MiB blocks has a 512 MiB table)."""
    return bat[..., np.newaxis].view(np.uint8)[..., 0] & STATE_MASK


def state_in(states: np.ndarray, wanted) -> np.ndarray:
    """Whether each state is one of `wanted`, by table lookup (np.isin would sort an int64
    copy of a table-sized array)."""
    table = np.zeros(STATE_MASK + 1, dtype=bool)
    table[[int(state) for state in wanted]] = True
    return table[states]


def payload_states(bat: np.ndarray, ratio: int, blocks: int) -> np.ndarray:
    """The states of payload blocks 0..blocks-1 of a table padded to whole chunks."""
    return states(bat.reshape(-1, ratio + 1)[:, :ratio]).reshape(-1)[:blocks]


def offsets(bat: np.ndarray) -> np.ndarray:
    """Byte offsets of the blocks the entries point to."""
    return (bat >> np.uint64(OFFSET_SHIFT)) << np.uint64(OFFSET_SHIFT)


def build_entry(state: int, offset: int) -> int:
    return (offset >> OFFSET_SHIFT) << OFFSET_SHIFT | state


def bitmap_bits(bitmap: bytes, first_sector: int, sectors: int) -> np.ndarray:
    """Per-sector presence flags; bit order is LSB first (sector n: byte n>>3, 1<<(n&7))."""
    raw = np.frombuffer(bitmap, dtype=np.uint8, count=-(-(first_sector + sectors) // 8))
    return np.unpackbits(raw, bitorder="little")[first_sector : first_sector + sectors].view(bool)
