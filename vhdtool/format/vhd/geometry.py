"""CHS geometry as the VHD spec (appendix "CHS calculation") defines it.

Integer division throughout; QEMU calculate_geometry, libvhd vhd_chs and Hyper-V agree.
"""

from typing import NamedTuple

from vhdtool.format.sector import SECTOR

# Windows, Disk2vhd and qemu (force_size) write this for disks the table cannot describe.
MAX_CYLINDERS, MAX_HEADS, MAX_SECTORS_PER_TRACK = 65535, 16, 255
MAX_CHS_SECTORS = MAX_CYLINDERS * MAX_HEADS * MAX_SECTORS_PER_TRACK  # 267,382,800 (~127.5 GiB)


class Chs(NamedTuple):
    cylinders: int
    heads: int
    sectors_per_track: int

    @property
    def capacity(self) -> int:
        """Bytes the geometry describes (what qemu 7.2 reads for CHS-ruled creators)."""
        return self.cylinders * self.heads * self.sectors_per_track * SECTOR

    @property
    def is_max(self) -> bool:
        return self == MAX_GEOMETRY


MAX_GEOMETRY = Chs(MAX_CYLINDERS, MAX_HEADS, MAX_SECTORS_PER_TRACK)


def chs_for_size(size: int) -> Chs:
    """The spec's geometry for a disk of `size` bytes (rounds down; capped at 65535/16/255)."""
    total = min(size // SECTOR, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return Chs(cth // heads, heads, spt)
