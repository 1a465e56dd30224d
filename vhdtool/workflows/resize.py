"""`vhdtool resize`: change a fixed or dynamic image's virtual size without copying data.

Growing a fixed image extends the file (a hole) and moves the footer; growing a dynamic one
widens the BAT into its padding when there is room. Shrinking is refused unless asked for,
and refused again when the cut-off area holds non-zero data unless `discard_data` says so.

The rewritten footer keeps the UUID but takes our creator and the spec geometry of the new
size (see footer.OUR_CREATOR), so that every reader sees the new size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from construct import Container

from vhdtool import ranges
from vhdtool.errors import VhdError
from vhdtool.format.vhd.bat import UNALLOCATED
from vhdtool.format.vhd.footer import (
    FOOTER_SIZE,
    OUR_CREATOR,
    OUR_CREATOR_VERSION,
    OUR_HOST_OS,
    seal_footer,
)
from vhdtool.format.vhd.geometry import chs_for_size
from vhdtool.format.vhd.header import seal_header
from vhdtool.format.sector import SECTOR
from vhdtool.disk.image import Disk, FooterLocation, SparseDisk, open_disk, require_footer
from vhdtool.engine.output import staged_file
from vhdtool.units import format_change, format_size

AZURE_ALIGN = 1024 * 1024  # `--align`: Azure takes whole MiB, the same rounding as upload --align
ZERO_BUFFER = 1024 * 1024  # zeros are written from a buffer of this size, whatever the span


@dataclass(frozen=True)
class Resized:
    path: Path
    old_size: int
    new_size: int


def target_size(current: int, size: int | None, align: int | None) -> int:
    """The new size: explicit, or the current one rounded up to a multiple of `align`."""
    if (size is None) == (align is None):
        raise VhdError("give exactly one of --size and --align")
    if align is not None:
        if align <= 0 or align % SECTOR:
            raise VhdError(f"alignment {align:,} is not a positive multiple of 512")
        return ranges.round_up(current, align)
    if size <= 0 or size % SECTOR:
        raise VhdError(f"size {size:,} is not a positive multiple of 512 bytes")
    return size


def resized_footer(footer: Container, size: int) -> bytes:
    footer = Container(footer)
    chs = chs_for_size(size)
    # libvhdi reports the original-size field (offset 40, its "disk size") as the media size,
    # so both move; left behind, libvhdi would keep reading the old size.
    footer.current_size = footer.original_size = size
    footer.disk_geometry = Container(
        cylinders=chs.cylinders, heads=chs.heads, sectors_per_track=chs.sectors_per_track
    )
    footer.creator_application, footer.creator_version = OUR_CREATOR, OUR_CREATOR_VERSION
    footer.creator_host_os = OUR_HOST_OS
    return seal_footer(footer)


def resize(
    path: str | os.PathLike,
    *,
    size: int | None = None,
    align: int | None = None,
    out: str | os.PathLike | None = None,
    allow_shrink: bool = False,
    discard_data: bool = False,
    force: bool = False,
) -> Resized:
    """Resize the image at `path` in place, or a sparse copy of it at `out`.

    Every refusal is decided on the source first, so a refused resize writes nothing; a copy
    is resized before it takes its name, so no half-resized copy is ever under `out`.
    """
    path = Path(path)
    with open_disk(path) as disk:
        old = disk.virtual_size
        new = target_size(old, size, align)
        if new != old:
            refuse(disk, new, allow_shrink, discard_data)
    if out is None:
        if new != old:
            apply(path, new)
        return Resized(path, old, new)
    from vhdtool.workflows.snapshot import check_not_source, snapshot

    check_not_source(path, Path(out))
    with staged_file(out, force=force) as staged:
        snapshot(path, staged.temp)
        if new != old:
            apply(staged.temp, new)
    return Resized(staged.path, old, new)


def refuse(disk: Disk, new: int, allow_shrink: bool, discard_data: bool) -> None:
    """Raise if `disk` cannot (or, unasked, should not) take the virtual size `new`."""
    if disk.kind == "vhdx":
        raise VhdError("vhdtool reads VHDX but never writes it: resize the VHD that "
                       "`vhdtool prepare` or `vhdtool convert` makes of it", disk.path)
    if disk.kind == "differencing":
        raise VhdError("a differencing image takes its parent's size: "
                       "merge it first (vhdtool convert --to fixed)", disk.path)
    if isinstance(disk, SparseDisk):
        if footer_location(disk).source == "head":
            # The footer goes back where it was; with only the copy at 0 that is unknown.
            raise VhdError("has no footer at its end, only the copy at offset 0: rewrite it first "
                           "(vhdtool convert IMAGE OUT --to dynamic)", disk.path)
        needed, room = ranges.ceil_div(new, disk.block_size), bat_capacity(disk)
        if needed > disk.header.max_table_entries and needed > room:
            raise VhdError(
                f"the BAT has room for {room} blocks ({format_size(room * disk.block_size)}); "
                "to grow further convert first: vhdtool convert IMAGE OUT --to fixed",
                disk.path,
            )
    if new < disk.virtual_size:
        refuse_shrink(disk, new, allow_shrink, discard_data)


def footer_location(disk: Disk) -> FooterLocation:
    return require_footer(disk.fd, disk.file_size, disk.path)


def apply(path: Path, new: int) -> None:
    with open_disk(path) as disk, open(path, "r+b", buffering=0) as f:
        if isinstance(disk, SparseDisk):
            resize_dynamic(f.fileno(), disk, new)
        else:
            resize_fixed(f.fileno(), disk, new)
        os.fsync(f.fileno())


def first_nonzero(disk: Disk, start: int, end: int) -> int | None:
    """Offset of the first non-zero page in [start, end), reading only allocated data there."""
    from vhdtool.engine.pipeline import Window, nonzero_runs, scan

    run = next(nonzero_runs(scan(Window(disk, start, end))), None)
    return None if run is None else run[0]


def refuse_shrink(disk: Disk, new: int, allow_shrink: bool, discard_data: bool) -> None:
    cut = format_change(disk.virtual_size, new)
    if not allow_shrink:
        raise VhdError(f"shrinking ({cut}) drops the end of the disk: pass --allow-shrink", disk.path)
    found = first_nonzero(disk, new, disk.virtual_size)
    if found is not None and not discard_data:
        raise VhdError(
            f"shrinking ({cut}) cuts off non-zero data (first at byte {found:,}): "
            "pass --discard-data to cut it anyway",
            disk.path,
        )


def resize_fixed(fd: int, disk: Disk, new: int) -> None:
    """Footer first at its new place, then the old one removed: a crash in between leaves
    an image that still opens (at the new size when growing, at the old when shrinking)."""
    os.pwrite(fd, resized_footer(disk.footer, new), new)
    os.fsync(fd)
    # What followed the old data (its footer, and any extra bytes a producer left before it)
    # is inside the disk up to `new`, where it must read as zeros, and cut off past the footer.
    write_zeros(fd, disk.virtual_size, min(new, disk.file_size))
    os.ftruncate(fd, new + FOOTER_SIZE)


def write_zeros(fd: int, start: int, end: int) -> None:
    zeros = memoryview(bytes(ZERO_BUFFER))
    for offset in range(start, end, ZERO_BUFFER):
        os.pwrite(fd, zeros[: min(ZERO_BUFFER, end - offset)], offset)


def bat_capacity(disk: SparseDisk) -> int:
    """Entries that fit between the BAT's start and the next structure in the file."""
    start = disk.header.table_offset
    used = [int(e) * SECTOR for e in disk.bat if e != UNALLOCATED]
    used += [loc.platform_data_offset for loc in disk.header.parent_locators
             if loc.platform_data_offset > start]
    limit = min([o for o in used if o > start] + [disk.file_size - FOOTER_SIZE])
    return (limit - start) // 4


def resize_dynamic(fd: int, disk: SparseDisk, new: int) -> None:
    """Widen the BAT into its padding if needed (`refuse` checked the room), then both footers."""
    header = Container(disk.header)
    needed = ranges.ceil_div(new, disk.block_size)
    if needed > header.max_table_entries:
        old_entries = header.max_table_entries
        # New entries must read unallocated; libvhd pads with 0x00, which would mean "block 0".
        os.pwrite(fd, b"\xff" * 4 * (needed - old_entries), header.table_offset + 4 * old_entries)
        header.max_table_entries = needed
        os.pwrite(fd, seal_header(header), disk.footer.data_offset)
    footer = resized_footer(disk.footer, new)
    # In place of the old one: after a 511-byte Virtual PC footer the file grows by a byte.
    os.pwrite(fd, footer, footer_location(disk).offset)
    os.pwrite(fd, footer, 0)
