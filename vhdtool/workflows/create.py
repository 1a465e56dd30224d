"""`vhdtool create`: a new, empty fixed (sparse) or dynamic VHD."""

from __future__ import annotations

import os
from pathlib import Path

from construct import Container

from vhdtool.errors import VhdError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhd.footer import DiskType, new_footer, seal_footer
from vhdtool.format.vhd.header import DEFAULT_BLOCK_SIZE, QEMU_MIN_BLOCK_SIZE, block_size_valid
from vhdtool.format.vhd.footer import MAX_VHD_SIZE
from vhdtool.engine.output import atomic_output
from vhdtool.units import format_size
from vhdtool.disk.vhd_rules.bat_rules import bat_too_large
from vhdtool.disk.writer import SparseImageWriter, block_count


def dynamic_block_size(block_size: int | None, dynamic: bool) -> int:
    """The block size of an output: `--block-size` given for a fixed or raw one, which has no
    blocks, is refused rather than ignored."""
    if block_size is not None and not dynamic:
        raise VhdError("--block-size is for a dynamic VHD: a fixed VHD or a raw image has no blocks")
    return DEFAULT_BLOCK_SIZE if block_size is None else block_size


def validate_size(size: int, disk_type: DiskType, block_size: int) -> list[str]:
    """Refuse sizes no reader can take; return warnings for sizes some readers refuse."""
    if size <= 0 or size % SECTOR:
        raise VhdError(f"size {size:,} is not a positive multiple of 512 bytes")
    if disk_type == DiskType.DYNAMIC:
        # The rules `check` applies to a dynamic image (header.block-size, bat.too-large), so
        # nothing is written that check and the reader refuse.
        if not block_size_valid(block_size):
            raise VhdError(f"block size {block_size:,} is not a power of two from 512 to 2 GiB")
        if size > MAX_VHD_SIZE:
            raise VhdError(f"a dynamic VHD holds at most {format_size(MAX_VHD_SIZE)} (QEMU, Hyper-V)")
        if bat_too_large(entries := block_count(size, block_size)):
            raise VhdError(f"{entries:,} blocks of {format_size(block_size)} make a BAT that readers "
                           "refuse as damaged (check: bat.too-large): choose a larger --block-size")
    warnings = []
    if disk_type == DiskType.DYNAMIC and block_size < QEMU_MIN_BLOCK_SIZE:
        warnings.append("blocks below 4 KiB are read wrongly by qemu-img (check: qemu.small-block)")
    if size > MAX_VHD_SIZE:
        warnings.append(f"sizes above {format_size(MAX_VHD_SIZE)} are refused by QEMU and Hyper-V")
    if size % (1024 * 1024):
        warnings.append("size is not a whole number of MiB: Azure will refuse it as a disk")
    return warnings


def create(
    out: str | os.PathLike,
    size: int,
    disk_type: DiskType = DiskType.FIXED,
    *,
    block_size: int | None = None,
    force: bool = False,
) -> tuple[Container, list[str]]:
    """Write an empty image; a fixed one is sparse (only the footer is written).

    `block_size` is for a dynamic image (default DEFAULT_BLOCK_SIZE); a fixed one has no blocks.
    """
    block_size = dynamic_block_size(block_size, disk_type == DiskType.DYNAMIC)
    warnings = validate_size(size, disk_type, block_size)
    with atomic_output(Path(out), force=force) as fd:
        if disk_type == DiskType.FIXED:
            footer = new_footer(size, DiskType.FIXED)
            os.ftruncate(fd, size)
            os.pwrite(fd, seal_footer(footer), size)
        else:
            footer = SparseImageWriter(fd, size, block_size=block_size).finish()
    return footer, warnings
