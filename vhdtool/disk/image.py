"""Open any VHD (fixed, dynamic, differencing chain) or a raw image as one virtual disk.

A `Disk` has `virtual_size`, `readinto(offset, buf)` / `read(offset, length)`, and
`allocated()`: the sorted byte ranges of the virtual disk that may hold data, found cheaply
(SEEK_DATA/SEEK_HOLE for flat files, BAT and sector bitmaps for dynamic images, the union
over the chain for differencing images) so that nothing downstream ever reads a hole.

Virtual size is the footer's current size, as libvhdi, VirtualBox, Hyper-V and QEMU 10 read
it. qemu 7.2 instead multiplies the CHS geometry out (C*H*S*512, usually a little less) unless
the creator is "win ", "qem2", "d2v ", "CTXS" or "tap\\0" or the geometry is 65535/16/255;
`qemu_7_2_size()` computes what it would read so that `info` and `check` can say so.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from construct import Container

from vhdtool import ranges
from vhdtool.errors import FormatError, NotVhdError, VhdError
from vhdtool.format.vhd.bat import UNALLOCATED, bitmap_bytes, bitmap_sectors, parse_bat
from vhdtool.format.vhd.footer import (
    COOKIE,
    FIXED_DATA_OFFSET,
    FOOTER_SIZE,
    SHORT_FOOTER_SIZE,
    DiskType,
    footer_checksum,
    geometry,
    parse_footer,
)
from vhdtool.format.vhd.header import (
    HEADER_COOKIE,
    HEADER_SIZE,
    header_checksum,
    parse_header,
)

SECTOR = 512
# qemu 7.2 (block/vpc.c) reads current_size for these creators, CHS for every other one.
QEMU_CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
# QEMU and Hyper-V refuse larger VHDs (vpc.c VHD_MAX_SECTORS = 0xff000000).
MAX_VHD_SIZE = 0xFF000000 * SECTOR
MAX_CHAIN_DEPTH = 64  # a longer chain is treated as a cycle


@dataclass(frozen=True)
class FooterLocation:
    """Where the footer was found and the raw bytes of it."""

    footer: Container
    raw: bytes
    offset: int
    source: str  # "tail", "tail-511" (old Virtual PC) or "head" (dynamic copy at offset 0)


def open_readonly(path: Path) -> tuple[int, os.stat_result]:
    """Open a regular file read-only, with one-line errors for everything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VhdError("no such file", path) from None
    except OSError as exc:
        raise VhdError(exc.strerror or str(exc), path) from None
    if stat.S_ISDIR(st.st_mode):
        raise VhdError("is a directory, not a disk image", path)
    if not stat.S_ISREG(st.st_mode):
        raise VhdError("is not a regular file", path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise VhdError(exc.strerror or str(exc), path) from None
    return fd, st


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Read up to `length` bytes at `offset` (short only at EOF)."""
    return os.pread(fd, length, offset)


def locate_footer(fd: int, size: int) -> FooterLocation | None:
    """Find the footer the way libvhd does: EOF-512, then EOF-511, then the copy at 0."""
    candidates = []
    if size >= FOOTER_SIZE:
        candidates.append((size - FOOTER_SIZE, FOOTER_SIZE, "tail"))
    if size >= SHORT_FOOTER_SIZE:
        # Virtual PC before 2004 wrote a 511-byte footer (libvhd vhd_read_short_footer).
        candidates.append((size - SHORT_FOOTER_SIZE, SHORT_FOOTER_SIZE, "tail-511"))
    if size >= FOOTER_SIZE:
        # Dynamic and differencing images keep a copy at offset 0; libvhd falls back to it.
        candidates.append((0, FOOTER_SIZE, "head"))
    for offset, length, source in candidates:
        raw = pread_exact(fd, length, offset)
        if raw[:8] == COOKIE:
            return FooterLocation(parse_footer(raw), raw.ljust(FOOTER_SIZE, b"\0"), offset, source)
    return None


def require_footer(fd: int, size: int, path: Path) -> FooterLocation:
    """The footer (see locate_footer), or NotVhdError saying why there is none."""
    if size < SHORT_FOOTER_SIZE:
        raise NotVhdError(f"file is {size} bytes, too small to be a VHD (a footer is 512)", path)
    found = locate_footer(fd, size)
    if found is None:
        raise NotVhdError("not a VHD: no 'conectix' footer at the end or start of the file", path)
    return found


def qemu_7_2_size(footer: Container) -> int:
    """The virtual size qemu-img 7.2 reads from this footer (see module docstring)."""
    chs = geometry(footer)
    if footer.creator_application in QEMU_CURRENT_SIZE_CREATORS or chs.is_max:
        return footer.current_size // SECTOR * SECTOR
    return chs.capacity


class Disk:
    """One virtual disk. Subclasses implement `readinto` and `allocated`."""

    kind: str
    path: Path
    virtual_size: int
    footer: Container | None = None
    header: Container | None = None
    parent: Disk | None = None

    def __init__(self, path: Path, fd: int, st: os.stat_result):
        self.path, self.fd, self.stat = path, fd, st

    @property
    def file_size(self) -> int:
        return self.stat.st_size

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, buf: memoryview) -> None:
        raise NotImplementedError

    def allocated(self) -> Iterator[ranges.Range]:
        raise NotImplementedError

    def chain(self) -> list[Disk]:
        """This disk followed by its parents."""
        out: list[Disk] = []
        disk: Disk | None = self
        while disk is not None:
            out.append(disk)
            disk = disk.parent
        return out

    def close(self) -> None:
        for disk in self.chain():
            if disk.fd >= 0:
                os.close(disk.fd)
                disk.fd = -1

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.virtual_size:
            raise VhdError(
                f"read of {length} bytes at {offset} is outside the {self.virtual_size}-byte disk",
                self.path,
            )


def zero(buf: memoryview) -> None:
    np.frombuffer(buf, dtype=np.uint8)[:] = 0


def preadinto(fd: int, buf: memoryview, offset: int) -> None:
    """Fill `buf` from the file at `offset`; bytes past EOF read as zeros."""
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            zero(buf[done:])
            return
        done += n


class FlatDisk(Disk):
    """Fixed VHD or raw image: the virtual disk is the file's first `virtual_size` bytes."""

    def __init__(self, path: Path, fd: int, st: os.stat_result, size: int, kind: str):
        super().__init__(path, fd, st)
        self.virtual_size, self.kind = size, kind

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._check_range(offset, len(buf))
        preadinto(self.fd, buf, offset)

    def allocated(self) -> Iterator[ranges.Range]:
        return ranges.data_extents(self.fd, 0, self.virtual_size)


class SparseDisk(Disk):
    """Dynamic (no parent) or differencing VHD: data in blocks mapped by the BAT.

    A sector whose bitmap bit is clear reads as zeros in a dynamic image (libvhd, libvhdi,
    VirtualBox; QEMU ignores the bitmap, which agrees for every image QEMU writes since it
    sets whole bitmaps) and from the parent in a differencing image.
    """

    def __init__(self, path, fd, st, footer: Container, header: Container, bat: np.ndarray):
        super().__init__(path, fd, st)
        self.footer, self.header, self.bat = footer, header, bat
        self.kind = "differencing" if footer.disk_type == DiskType.DIFFERENCING else "dynamic"
        self.virtual_size = footer.current_size
        self.block_size = header.block_size
        self.bitmap_size = bitmap_bytes(self.block_size)
        self.sectors_per_block = self.block_size // SECTOR
        self._bitmap_cache: tuple[int, np.ndarray] | None = None

    def block_entry(self, block: int) -> int:
        return int(self.bat[block]) if block < len(self.bat) else UNALLOCATED

    def block_data_offset(self, block: int) -> int:
        return self.block_entry(block) * SECTOR + self.bitmap_size

    def sector_flags(self, block: int) -> np.ndarray:
        """Per-sector presence bits of an allocated block (cached for sequential reads)."""
        cached = self._bitmap_cache
        if cached is not None and cached[0] == block:
            return cached[1]
        raw = pread_exact(self.fd, self.bitmap_size, self.block_entry(block) * SECTOR)
        flags = bitmap_sectors(raw.ljust(self.bitmap_size, b"\0"), self.sectors_per_block)
        self._bitmap_cache = (block, flags)
        return flags

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._check_range(offset, len(buf))
        pos, end = offset, offset + len(buf)
        while pos < end:
            block, within = divmod(pos, self.block_size)
            n = min(self.block_size - within, end - pos)
            view = buf[pos - offset : pos - offset + n]
            if self.block_entry(block) == UNALLOCATED:
                self._fill_absent(pos, view)
            else:
                self._read_block(block, within, view)
            pos += n

    def _read_block(self, block: int, within: int, view: memoryview) -> None:
        flags = self.sector_flags(block)
        first, last = within // SECTOR, ranges.ceil_div(within + len(view), SECTOR)
        window = flags[first:last]
        data_offset = self.block_data_offset(block)
        if window.all():
            preadinto(self.fd, view, data_offset + within)
            return
        block_start = block * self.block_size
        present = ranges.true_runs(window, SECTOR, first * SECTOR)
        absent = ranges.true_runs(~window, SECTOR, first * SECTOR)
        for (s, e), is_present in [(r, True) for r in present] + [(r, False) for r in absent]:
            s, e = max(s, within), min(e, within + len(view))
            part = view[s - within : e - within]
            if is_present:
                preadinto(self.fd, part, data_offset + s)
            else:
                self._fill_absent(block_start + s, part)

    def _fill_absent(self, pos: int, view: memoryview) -> None:
        """Sectors this image does not hold: zeros, or the parent's bytes (zeros past its end)."""
        parent = self.parent
        if parent is None or pos >= parent.virtual_size:
            zero(view)
            return
        n = min(len(view), parent.virtual_size - pos)
        parent.readinto(pos, view[:n])
        zero(view[n:])

    def own_allocated(self) -> Iterator[ranges.Range]:
        """Virtual ranges this file itself holds: bitmap-set sectors of allocated blocks,
        less what the filesystem reports as holes inside them."""
        file_data = ranges.SortedRanges(ranges.data_extents(self.fd, 0, self.file_size))
        for block in np.flatnonzero(self.bat != UNALLOCATED):
            block = int(block)
            block_start = block * self.block_size
            if block_start >= self.virtual_size:
                break
            set_runs = ranges.true_runs(self.sector_flags(block), SECTOR, block_start)
            delta = self.block_data_offset(block) - block_start
            physical = file_data.within(block_start + delta, block_start + self.block_size + delta)
            yield from ranges.clip(
                ranges.intersect(set_runs, ranges.shift(physical, -delta)), 0, self.virtual_size
            )

    def allocated(self) -> Iterator[ranges.Range]:
        own = ranges.merge(self.own_allocated())
        if self.parent is None:
            return own
        return ranges.union(own, ranges.clip(self.parent.allocated(), 0, self.virtual_size))


def open_disk(path: str | os.PathLike, *, raw: bool = False) -> Disk:
    """Open `path` read-only as a virtual disk; `raw=True` takes the file as it is."""
    from vhdtool.disk.parents import open_parent  # parents imports this module

    path = Path(path)
    fd, st = open_readonly(path)
    try:
        if raw:
            return FlatDisk(path, fd, st, st.st_size, "raw")
        try:
            disk = _open_vhd(path, fd, st)
        except NotVhdError as exc:
            other = _not_a_vhd(path, exc)
            os.close(fd)
            return other
        if disk.footer.disk_type == DiskType.DIFFERENCING:
            disk.parent = open_parent(disk, chain=[])
        return disk
    except BaseException:
        os.close(fd)
        raise


def _not_a_vhd(path: Path, error: NotVhdError) -> Disk:
    """The one place that opens what has no VHD footer: a VHDX with its reader; qcow2, VMDK and
    VDI refused in one line saying how to convert them (sniff.py); anything else keeps `error`.
    The footer is looked for first so that a VHD is opened with the reads it always took, and
    a fixed VHD whose data happens to start with another format's signature stays a VHD."""
    from vhdtool.disk.sniff import open_vhdx, readable_format  # sniff imports this module

    if readable_format(path) == "vhdx":
        return open_vhdx(path)
    raise error


def _open_vhd(path: Path, fd: int, st: os.stat_result) -> Disk:
    size = st.st_size
    found = require_footer(fd, size, path)
    footer = found.footer
    if footer_checksum(found.raw) != footer.checksum:
        raise FormatError(
            f"footer checksum mismatch (stored 0x{footer.checksum:08x}, "
            f"computed 0x{footer_checksum(found.raw):08x}): the footer is damaged",
            path,
        )
    if footer.disk_type == DiskType.FIXED:
        data_end = found.offset if found.source != "head" else size
        if footer.current_size > data_end:
            raise FormatError(
                f"fixed image is truncated: the footer says {footer.current_size} bytes of "
                f"data, the file holds {data_end}",
                path,
            )
        disk = FlatDisk(path, fd, st, footer.current_size, "fixed")
        disk.footer = footer
        return disk
    if footer.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING):
        return _open_sparse(path, fd, st, footer)
    raise FormatError(f"unsupported disk type {footer.disk_type} (2 fixed, 3 dynamic, 4 differencing)", path)


def _open_sparse(path: Path, fd: int, st: os.stat_result, footer: Container) -> SparseDisk:
    size = st.st_size
    offset = footer.data_offset
    if offset == FIXED_DATA_OFFSET or offset + HEADER_SIZE > size:
        raise FormatError(f"dynamic header offset {offset} is outside the {size}-byte file", path)
    raw = pread_exact(fd, HEADER_SIZE, offset)
    header = parse_header(raw)
    if header.cookie != HEADER_COOKIE:
        raise FormatError(f"no 'cxsparse' dynamic header at offset {offset}", path)
    if header_checksum(raw) != header.checksum:
        raise FormatError("dynamic header checksum mismatch: the header is damaged", path)
    block_size = header.block_size
    if block_size < SECTOR or block_size & (block_size - 1):
        raise FormatError(f"block size {block_size} is not a power of two of at least 512", path)
    entries = header.max_table_entries
    needed = ranges.ceil_div(footer.current_size, block_size)
    if entries < needed:
        raise FormatError(
            f"BAT has {entries} entries but {needed} are needed for {footer.current_size} bytes",
            path,
        )
    # Only the entries the disk uses are read: a damaged header claiming 2^32 entries costs
    # nothing, and the table must lie inside the file, which bounds memory by the file size.
    table_end = header.table_offset + needed * 4
    if header.table_offset % SECTOR or table_end > size:
        raise FormatError(
            f"BAT at offset {header.table_offset} ({needed} entries) is not inside the file", path
        )
    bat = parse_bat(pread_exact(fd, needed * 4, header.table_offset), needed)
    return SparseDisk(path, fd, st, footer, header, bat)
