"""Write dynamic and differencing VHDs: footer copy, header, BAT, locators, blocks, footer.

Layout as QEMU and Hyper-V write it: footer copy at 0, dynamic header at 512, BAT at 1536
padded to a sector with 0xFF, parent locator data after the BAT, then blocks (sector bitmap
followed by block data), then the footer. Data arrives in increasing virtual offset, so only
one block's bitmap is held at a time: memory stays bounded whatever the disk size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from construct import Container

from vhdtool import ranges
from vhdtool.errors import WriterError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhd.bat import (
    UNALLOCATED,
    bat_bytes,
    bitmap_bytes,
    build_bat,
    build_bitmap,
)
from vhdtool.format.vhd.footer import FOOTER_SIZE, DiskType, new_footer, seal_footer
from vhdtool.format.vhd.header import (
    DEFAULT_BLOCK_SIZE,
    HEADER_SIZE,
    new_header,
    seal_header,
)



@dataclass
class ParentRef:
    """What a differencing child records about its parent."""

    unique_id: bytes
    timestamp: int
    name: str  # header parent name (UTF-16BE)
    # (platform code, data bytes, data space as written: sectors or bytes, both occur)
    locators: list[tuple[bytes, bytes, int]] = field(default_factory=list)


def block_count(size: int, block_size: int) -> int:
    return ranges.ceil_div(size, block_size)


class SparseImageWriter:
    """Writes a dynamic (parent=None) or differencing image into an open, empty file."""

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        parent: ParentRef | None = None,
        footer: Container | None = None,
        full_bitmaps: bool | None = None,
    ):
        self.fd, self.size, self.block_size, self.parent = fd, size, block_size, parent
        disk_type = DiskType.DIFFERENCING if parent else DiskType.DYNAMIC
        self.footer = footer or new_footer(size, disk_type, data_offset=FOOTER_SIZE)
        self.footer.disk_type, self.footer.data_offset = int(disk_type), FOOTER_SIZE
        # A dynamic image marks every sector of an allocated block present (as QEMU and
        # Hyper-V do); a differencing one only the sectors it holds, the rest come from the parent.
        self.full_bitmaps = parent is None if full_bitmaps is None else full_bitmaps
        self.entries = block_count(size, block_size)
        self.bat = np.full(self.entries, UNALLOCATED, dtype=np.uint32)
        self.table_offset = FOOTER_SIZE + HEADER_SIZE
        self.bitmap_size = bitmap_bytes(block_size)
        self.sectors_per_block = block_size // SECTOR
        self._locators, locator_end = self._place_locators(self.table_offset + bat_bytes(self.entries))
        self.next_block = locator_end  # file offset where the next block goes
        self._current: tuple[int, np.ndarray] | None = None
        self._last_offset = 0

    def _place_locators(self, offset: int) -> tuple[list[Container], int]:
        out = []
        for code, data, space in self.parent.locators if self.parent else []:
            reserved = ranges.round_up(len(data), SECTOR)
            out.append(
                Container(
                    platform_code=code,
                    platform_data_space=space,
                    platform_data_length=len(data),
                    reserved=0,
                    platform_data_offset=offset,
                )
            )
            os.pwrite(self.fd, data, offset)
            offset += reserved
        return out, offset

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Store `data` at virtual `offset` (sector aligned, offsets never decreasing)."""
        if offset % SECTOR or len(data) % SECTOR or offset < self._last_offset:
            raise WriterError("writes must be sector aligned and in increasing order")
        if offset + len(data) > self.size:
            raise WriterError("write past the end of the disk")
        self._last_offset = offset
        view = memoryview(data)
        while view:
            block, within = divmod(offset, self.block_size)
            n = min(self.block_size - within, len(view))
            flags = self._block_flags(block)
            os.pwrite(self.fd, view[:n], self._data_offset(block) + within)
            flags[within // SECTOR : (within + n) // SECTOR] = True
            view, offset = view[n:], offset + n

    def _block_flags(self, block: int) -> np.ndarray:
        if self._current is not None and self._current[0] == block:
            return self._current[1]
        self._flush_bitmap()
        self.bat[block] = self.next_block // SECTOR
        self.next_block += self.bitmap_size + self.block_size
        flags = np.full(self.sectors_per_block, self.full_bitmaps, dtype=bool)
        self._current = (block, flags)
        return flags

    def _data_offset(self, block: int) -> int:
        return int(self.bat[block]) * SECTOR + self.bitmap_size

    def _flush_bitmap(self) -> None:
        if self._current is not None:
            block, flags = self._current
            os.pwrite(self.fd, build_bitmap(flags, self.block_size), int(self.bat[block]) * SECTOR)
            self._current = None

    def finish(self) -> Container:
        """Write bitmaps, BAT, header and both footer copies; returns the footer."""
        self._flush_bitmap()
        header = new_header(
            self.table_offset,
            self.entries,
            self.block_size,
            parent_unique_id=self.parent.unique_id if self.parent else bytes(16),
            parent_timestamp=self.parent.timestamp if self.parent else 0,
            parent_name=self.parent.name if self.parent else "",
            locators=self._locators,
        )
        os.pwrite(self.fd, seal_header(header), FOOTER_SIZE)
        os.pwrite(self.fd, build_bat(self.bat), self.table_offset)
        footer = seal_footer(self.footer)
        os.pwrite(self.fd, footer, 0)
        os.ftruncate(self.fd, self.next_block)  # blocks not fully written stay holes
        os.pwrite(self.fd, footer, self.next_block)
        return self.footer
