"""`vhdtool convert`: any image to fixed, dynamic or raw, writing only non-zero data.

One pass through the engine: allocated data is read once, zero pages are dropped, and what
is left goes to a sparse output (fixed, raw) or into the blocks of a dynamic writer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from vhdtool import ranges
from vhdtool.workflows.create import dynamic_block_size, validate_size
from vhdtool.engine.pipeline import Source, Window
from vhdtool.errors import NotVhdError, VhdError
from vhdtool.disk.fixed import FixedImage, source_uuid
from vhdtool.format.vhd.footer import FOOTER_SIZE, DiskType, new_footer
from vhdtool.format.sector import SECTOR
from vhdtool.disk.file import raw_by_name
from vhdtool.disk.image import Disk, open_disk, open_raw_image
from vhdtool.engine.output import atomic_file
from vhdtool.engine.sink import copy_nonzero, sparse_output
from vhdtool.disk.writer import SparseImageWriter


class Format(str, Enum):
    fixed = "fixed"
    dynamic = "dynamic"
    raw = "raw"


@dataclass(frozen=True)
class Converted:
    path: Path
    virtual_size: int
    data_bytes: int  # non-zero bytes of the disk written (the footer is not data)
    warnings: list[str] = field(default_factory=list)  # what some readers will make of it (create's)


def open_source(path: str | os.PathLike, given: str | None) -> tuple[Disk, str]:
    """Open SRC as a VHD, VHDX (open_disk tells them apart) or raw image; returns the disk
    and the rule that decided.

    Raw only when asked (`--from raw`) or when the file has no VHD footer and its name ends
    in .raw or .img: a damaged VHD must never be taken for raw data.
    """
    path = Path(path)
    if given == "raw":
        return open_raw_image(path), "read as raw (--from raw)"
    try:
        disk = open_disk(path)
        return disk, f"read as {'VHDX' if disk.kind == 'vhdx' else 'VHD'}"
    except NotVhdError:
        if given is None and raw_by_name(path):
            return open_raw_image(path), f"read as raw (no VHD footer, name ends in {path.suffix})"
        raise


def write_sparse(source: Source, dest: Path, *, force: bool, label: str) -> Converted:
    """Copy `source`'s non-zero runs into a sparse file of its size."""
    with sparse_output(dest, source.virtual_size, force=force) as out:
        copy_nonzero(source, out.put, label, positional=True)
    return Converted(out.path, source.virtual_size, out.written)


def write_dynamic(disk: Disk, dest: Path, size: int, *, block_size: int, keep_uuid: bool,
                  force: bool) -> Converted:
    """Allocate only blocks holding non-zero data; bitmaps of those blocks fully set."""
    warnings = validate_size(size, DiskType.DYNAMIC, block_size)
    unique_id = source_uuid(disk) if keep_uuid else None
    footer = new_footer(size, DiskType.DYNAMIC, data_offset=FOOTER_SIZE, unique_id=unique_id)
    # The disk zero-extended to whole sectors (a raw source's last one may be partial), which
    # is what the writer's sectors hold: FixedImage's bytes without its footer.
    padded = Window(FixedImage(disk, size), 0, size)
    with atomic_file(dest, force=force) as out:
        writer = SparseImageWriter(out.fd, size, block_size=block_size, footer=footer)
        written = copy_nonzero(padded, writer.write, "convert")
        writer.finish()
    return Converted(out.path, size, written, warnings)


def convert(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    to: Format,
    *,
    from_: str | None = None,
    block_size: int | None = None,
    keep_uuid: bool = False,
    force: bool = False,
) -> Converted:
    """Convert SRC to DEST, at the source's virtual size rounded up to a whole sector;
    `block_size` is a dynamic output's (default 2 MiB)."""
    dest = Path(dest)
    blocks = dynamic_block_size(block_size, to == Format.dynamic)
    disk, _ = open_source(src, from_)
    with disk:
        if dest.exists() and dest.resolve() in {d.path.resolve() for d in disk.chain()}:
            raise VhdError("is the source itself: choose another output", dest)
        size = ranges.round_up(disk.virtual_size, SECTOR)
        if to == Format.raw:
            return write_sparse(disk, dest, force=force, label="convert")
        if to == Format.fixed:
            fixed = FixedImage(disk, size, keep_uuid=keep_uuid)
            done = write_sparse(fixed, dest, force=force, label="convert")
            return Converted(done.path, size, done.data_bytes - FOOTER_SIZE)  # its footer is never zero
        return write_dynamic(disk, dest, size, block_size=blocks, keep_uuid=keep_uuid, force=force)
