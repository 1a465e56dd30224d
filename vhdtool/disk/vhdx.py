"""Open a VHDX (dynamic, fixed or differencing) as one virtual disk (MS-VHDX; QEMU block/vhdx.c).

Opening checks each structure and refuses what cannot be read (a `VhdxError` naming the rule);
what can still be read is noted in `findings` for `check`. A log left by an unclean close is
replayed in memory (vhdx_log.py): every read of file metadata and data goes through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator
from uuid import UUID

import numpy as np
from construct import Container

from vhdtool import ranges
from vhdtool.disk.file import naming
from vhdtool.disk.image import Disk, open_readonly, zero
from vhdtool.disk.vhdx_errors import Finding, VhdxError
from vhdtool.disk.vhdx_log import Overlay, replay
from vhdtool.errors import FormatError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhdx import bat as batfmt
from vhdtool.format.vhdx import metadata as meta
from vhdtool.format.vhdx.bat import PayloadState
from vhdtool.format.vhdx.checksum import vhdx_checksum
from vhdtool.format.vhdx.fields import ZERO_GUID, MiB
from vhdtool.format.vhdx.header import (
    HEADER_OFFSETS,
    HEADER_SIZE,
    HEADER_VERSION,
    header_is_valid,
    parse_header,
)
from vhdtool.format.vhdx.identifier import (
    IDENTIFIER_SIZE,
    SIGNATURE,
    creator_text,
    parse_identifier,
)
from vhdtool.format.vhdx.region import (
    BAT_REGION,
    KNOWN_REGIONS,
    MAX_REGION_ENTRIES,
    METADATA_REGION,
    REGION_SIGNATURE,
    REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
    parse_entries,
    parse_table_header,
)

HEADER_SECTION = 1 * MiB
REQUIRED_ITEMS = (
    meta.FILE_PARAMETERS,
    meta.VIRTUAL_DISK_SIZE,
    meta.LOGICAL_SECTOR_SIZE,
    meta.PHYSICAL_SECTOR_SIZE,
)


class VhdxDisk(Disk):
    """A VHDX file read through its BAT (and, for a differencing file, its parent)."""

    kind = "vhdx"

    # Set by open_vhdx as it reads the file, in this order.
    creator: str
    headers: list[Container]
    current_header: Container
    regions: list[Container]
    bat_region: Container
    metadata_region: Container
    metadata_items: dict[UUID, bytes]
    block_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    logical_sector_size: int
    physical_sector_size: int
    page_83_data: UUID | None
    parent_locator: tuple[UUID, dict[str, str]] | None
    sectors_per_block: int
    chunk_ratio: int
    bat: np.ndarray

    def __init__(self, path: Path, fd: int, st: os.stat_result):
        super().__init__(path, fd, st)
        self.findings: list[Finding] = []
        self.overlay: Overlay | None = None
        self._bitmap_cache: tuple[int, bytes] | None = None

    # -- reading the file (through the replayed log, if any) --

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.file_readinto(memoryview(buf), offset)
        return bytes(buf)

    def file_readinto(self, buf: memoryview, offset: int) -> None:
        """The file's bytes as they read after the log's replay."""
        super().file_readinto(buf, offset)
        if self.overlay is not None:
            self.overlay.patch(buf, offset)

    @property
    def replayed_size(self) -> int:
        """The file's length once the log is applied."""
        return self.overlay.file_size if self.overlay else self.file_size

    def note(self, code: str, severity: str, message: str, **numbers: int) -> None:
        self.findings.append(Finding(code, severity, message, numbers))

    def refuse(self, code: str, message: str) -> VhdxError:
        return VhdxError(code, message, self.path)

    # -- the virtual disk --

    @property
    def subformat(self) -> str:
        if self.has_parent:
            return "differencing"
        return "fixed" if self.leave_blocks_allocated else "dynamic"

    def block_state(self, block: int) -> int:
        return int(self.bat[batfmt.payload_index(block, self.chunk_ratio)]) & batfmt.STATE_MASK

    def block_offset(self, block: int) -> int:
        entry = int(self.bat[batfmt.payload_index(block, self.chunk_ratio)])
        return entry >> batfmt.OFFSET_SHIFT << batfmt.OFFSET_SHIFT

    def readinto(self, offset: int, buf: memoryview) -> None:
        for block, within, pos, view in self._block_views(offset, buf, self.block_size):
            state = self.block_state(block)
            if state == PayloadState.FULLY_PRESENT:
                self.file_readinto(view, self.block_offset(block) + within)
            elif state == PayloadState.PARTIALLY_PRESENT:
                self._read_partial(block, within, view)
            elif state in (PayloadState.ZERO, PayloadState.UNMAPPED):
                # Spec 2.5.1.1: ZERO is zeros in every file type, differencing included
                # (libvhdi 20210425 reads the parent instead); UNMAPPED may read as zeros.
                zero(view)
            else:  # NOT_PRESENT, UNDEFINED: nothing here, the parent's bytes if there is one
                self._fill_absent(pos, view)

    def sector_flags(self, block: int, first: int, count: int) -> np.ndarray:
        """Presence of `count` logical sectors of `block` from sector `first`, per its bitmap."""
        chunk = block // self.chunk_ratio
        cached = self._bitmap_cache
        if cached is None or cached[0] != chunk:
            entry = int(self.bat[batfmt.bitmap_index(block, self.chunk_ratio)])
            if entry & batfmt.STATE_MASK != batfmt.BitmapState.PRESENT:
                bitmap = bytes(batfmt.SECTOR_BITMAP_BLOCK_SIZE)
            else:
                at = entry >> batfmt.OFFSET_SHIFT << batfmt.OFFSET_SHIFT
                bitmap = self.pread(at, batfmt.SECTOR_BITMAP_BLOCK_SIZE)
            cached = self._bitmap_cache = (chunk, bitmap)
        base = (block % self.chunk_ratio) * self.sectors_per_block
        return batfmt.bitmap_bits(cached[1], base + first, count)

    def _read_partial(self, block: int, within: int, view: memoryview) -> None:
        sector = self.logical_sector_size
        first, last = within // sector, ranges.ceil_div(within + len(view), sector)
        flags = self.sector_flags(block, first, last - first)
        block_start, data = block * self.block_size, self.block_offset(block)
        for present in (True, False):
            for s, e in ranges.true_runs(flags if present else ~flags, sector, first * sector):
                s, e = max(s, within), min(e, within + len(view))
                part = view[s - within : e - within]
                if present:
                    self.file_readinto(part, data + s)
                else:
                    self._fill_absent(block_start + s, part)

    def own_allocated(self) -> Iterator[ranges.Range]:
        """Virtual ranges whose bytes this file holds (FULLY_PRESENT blocks, less the holes the
        filesystem reports in them; PARTIALLY_PRESENT blocks through their bitmaps)."""
        states = batfmt.payload_states(
            self.bat, self.chunk_ratio, batfmt.data_blocks(self.virtual_size, self.block_size)
        )
        file_data = (
            None
            if self.overlay
            else ranges.SortedRanges(self.file_data(self.file_size))
        )
        for block in np.flatnonzero(batfmt.state_in(states, batfmt.HOLDS_DATA)):
            block = int(block)
            start = block * self.block_size
            end = min(start + self.block_size, self.virtual_size)
            if states[block] == PayloadState.PARTIALLY_PRESENT:
                count = ranges.ceil_div(end - start, self.logical_sector_size)
                flags = self.sector_flags(block, 0, count)
                yield from ranges.clip(
                    ranges.true_runs(flags, self.logical_sector_size, start), start, end
                )
            elif file_data is None:
                yield (start, end)
            else:
                delta = self.block_offset(block) - start
                yield from ranges.shift(file_data.within(start + delta, end + delta), -delta)

    def allocated(self) -> Iterator[ranges.Range]:
        own = ranges.merge(self.own_allocated())
        if self.parent is None:
            return own
        return ranges.union(own, ranges.clip(self.parent.allocated(), 0, self.virtual_size))


def open_vhdx(path: str | os.PathLike, *, _chain: tuple[Path, ...] = ()) -> VhdxDisk:
    """Open `path` read-only as a VHDX virtual disk (its parents too, for a differencing file)."""
    disk, refusal = examine_vhdx(path, _chain=_chain)
    if refusal is not None:
        disk.close()
        raise refusal
    return disk


def examine_vhdx(
    path: str | os.PathLike, *, _chain: tuple[Path, ...] = ()
) -> tuple[VhdxDisk, VhdxError | None]:
    """Read `path` as far as it can be read: the disk, with every structure decoded before
    the first refusal, and that refusal (None: the disk is open and readable). `info` and
    `check` show a damaged file this way; the caller closes the disk."""
    path = Path(path)
    fd, st = open_readonly(path)
    disk = VhdxDisk(path, fd, st)
    try:
        try:
            with naming(path):
                _read_structure(disk)
            if disk.has_parent:
                from vhdtool.disk.vhdx_parent import (
                    open_parent,  # it opens parents with open_vhdx
                )

                disk.parent = open_parent(disk, _chain + (path.resolve(),))
        except VhdxError as exc:
            return disk, exc
        except FormatError as exc:
            if exc.path is None:  # raised by a format declaration, which knows no file name
                return disk, VhdxError("vhdx.malformed", exc.detail, path)
            raise
        return disk, None
    except BaseException:
        disk.close()
        raise


def _read_structure(disk: VhdxDisk) -> None:
    if disk.file_size < HEADER_SECTION:
        raise disk.refuse(
            "vhdx.truncated",
            f"file is {disk.file_size} bytes, smaller than the 1 MiB VHDX header section",
        )
    raw = os.pread(disk.fd, IDENTIFIER_SIZE, 0)
    if raw[:8] != SIGNATURE:
        raise disk.refuse("vhdx.not-vhdx", "not a VHDX: no 'vhdxfile' signature at offset 0")
    disk.creator = creator_text(parse_identifier(raw))
    _read_headers(disk)
    if disk.current_header.log_guid != ZERO_GUID:
        # The log must be replayed before anything else is read (spec 2.3.3; QEMU vhdx_open).
        disk.overlay = replay(disk.fd, disk.file_size, disk.current_header, disk.path)
        if disk.overlay is not None:
            disk.note(
                "vhdx.log-replayed",
                "warning",
                f"the file was not closed cleanly: {disk.overlay.entries} log entries replayed "
                "in memory (the file itself is unchanged)",
                entries=disk.overlay.entries,
            )
    _read_regions(disk)
    _read_metadata(disk)
    _read_bat(disk)


def _read_headers(disk: VhdxDisk) -> None:
    """Both headers; the valid one with the larger sequence number is current (spec 2.2.2.1)."""
    valid = []
    disk.headers = []
    for number, offset in enumerate(HEADER_OFFSETS, 1):
        raw = os.pread(disk.fd, HEADER_SIZE, offset)
        header = parse_header(raw)
        disk.headers.append(header)
        if header_is_valid(raw, header):
            valid.append(header)
        else:
            disk.note(
                "vhdx.header-checksum",
                "warning",
                f"header {number} at offset {offset} is damaged (bad signature or CRC-32C): "
                "the other header is used",
                header=number,
                offset=offset,
            )
    if not valid:
        raise disk.refuse(
            "vhdx.headers-invalid", "both VHDX headers are damaged (bad signature or CRC-32C)"
        )
    current = max(valid, key=lambda h: h.sequence_number)
    if current.version != HEADER_VERSION:
        raise disk.refuse(
            "vhdx.header-version",
            f"header version {current.version} (only {HEADER_VERSION} is defined)",
        )
    disk.current_header = current


def _read_regions(disk: VhdxDisk) -> None:
    entries = None
    for number, offset in enumerate(REGION_TABLE_OFFSETS, 1):
        raw = disk.pread(offset, REGION_TABLE_SIZE)
        table = parse_table_header(raw)
        if (
            table.signature == REGION_SIGNATURE
            and table.entry_count <= MAX_REGION_ENTRIES
            and vhdx_checksum(raw) == table.checksum
        ):
            entries = parse_entries(raw, table.entry_count)
            break
        disk.note(
            "vhdx.region-checksum",
            "warning",
            f"region table {number} at offset {offset} is damaged "
            "(bad signature, count or CRC-32C)",
            table=number,
            offset=offset,
        )
    if entries is None:
        raise disk.refuse("vhdx.regions-invalid", "both VHDX region tables are damaged")
    disk.regions = entries
    found: dict[UUID, Container] = {}
    for entry in entries:
        name = KNOWN_REGIONS.get(entry.guid)
        if name is None:
            if entry.flags.required:
                # Spec 2.2.3.2: a reader must fail to open a file with an unknown required region.
                raise disk.refuse(
                    "vhdx.region-unknown-required",
                    f"unknown required region {entry.guid}: written by a newer VHDX version",
                )
            disk.note(
                "vhdx.region-unknown", "info", f"unknown optional region {entry.guid} ignored"
            )
            continue
        if entry.guid in found:
            raise disk.refuse("vhdx.region-duplicate", f"the {name} region is listed twice")
        end = entry.file_offset + entry.length
        if (
            entry.file_offset < HEADER_SECTION
            or entry.file_offset % MiB
            or entry.length % MiB
            or entry.length == 0
        ):
            raise disk.refuse(
                "vhdx.region-alignment",
                f"{name} region at {entry.file_offset} (+{entry.length}) is not 1 MiB aligned "
                "after the header section",
            )
        if end > disk.replayed_size:
            raise disk.refuse(
                "vhdx.region-past-eof",
                f"{name} region ends at {end}, past the end of the {disk.replayed_size}-byte file",
            )
        found[entry.guid] = entry
    for guid in (BAT_REGION, METADATA_REGION):
        if guid not in found:
            raise disk.refuse("vhdx.region-missing", f"no {KNOWN_REGIONS[guid]} region")
    disk.bat_region, disk.metadata_region = found[BAT_REGION], found[METADATA_REGION]
    areas = fixed_areas(disk)
    for n, (name, start, end) in enumerate(areas):
        for other, other_start, other_end in areas[n + 1 :]:
            if start < other_end and other_start < end:
                # QEMU vhdx_region_check: "VHDX region ... overlaps with region ..."
                raise disk.refuse(
                    "vhdx.region-overlap",
                    f"the {name} (bytes {start}-{end}) overlaps the {other} (bytes {other_start}-{other_end})",
                )


def fixed_areas(disk: VhdxDisk) -> list[tuple[str, int, int]]:
    """(name, start, end) of what no block may overlap: the header section, the log (when
    there is one) and the two regions."""
    header = disk.current_header
    log = [("log", header.log_offset, header.log_offset + header.log_length)] if header.log_length else []
    return [("header section", 0, HEADER_SECTION), *log] + [
        (f"{KNOWN_REGIONS[entry.guid]} region", entry.file_offset, entry.file_offset + entry.length)
        for entry in (disk.bat_region, disk.metadata_region)
    ]


def _read_metadata(disk: VhdxDisk) -> None:
    region = disk.metadata_region
    if region.length < meta.METADATA_TABLE_SIZE:
        raise disk.refuse("vhdx.metadata-table", "metadata region is smaller than its 64 KiB table")
    table, entries = meta.parse_table(disk.pread(region.file_offset, meta.METADATA_TABLE_SIZE))
    if table.signature != meta.METADATA_SIGNATURE or table.entry_count > meta.MAX_METADATA_ENTRIES:
        raise disk.refuse(
            "vhdx.metadata-table", "no valid 'metadata' table at the start of the metadata region"
        )
    items: dict[UUID, bytes] = {}
    for entry in entries:
        name = meta.KNOWN_ITEMS.get(entry.item_id, str(entry.item_id))
        if entry.length and (
            entry.offset < meta.METADATA_TABLE_SIZE or entry.offset + entry.length > region.length
        ):
            raise disk.refuse(
                "vhdx.metadata-out-of-bounds",
                f"metadata item {name} at {entry.offset} (+{entry.length}) lies outside the "
                f"{region.length}-byte metadata region",
            )
        if entry.item_id not in meta.KNOWN_ITEMS:
            if entry.flags.is_required:
                raise disk.refuse(
                    "vhdx.metadata-unknown-required",
                    f"unknown required metadata item {entry.item_id}",
                )
            disk.note(
                "vhdx.metadata-unknown",
                "info",
                f"unknown optional metadata item {entry.item_id} ignored",
            )
            continue
        if entry.item_id in items:
            raise disk.refuse("vhdx.metadata-duplicate", f"metadata item {name} is listed twice")
        if entry.length > meta.MAX_ITEM_SIZE:
            # Every defined item is a few bytes, a parent locator a few paths: bounds memory.
            raise disk.refuse(
                "vhdx.metadata-item-size",
                f"metadata item {name} is {entry.length} bytes (at most {meta.MAX_ITEM_SIZE})",
            )
        items[entry.item_id] = disk.pread(region.file_offset + entry.offset, entry.length)
    for guid in REQUIRED_ITEMS:
        if guid not in items:
            raise disk.refuse(
                "vhdx.metadata-missing",
                f"required metadata item {meta.KNOWN_ITEMS[guid]} is missing",
            )
    disk.metadata_items = items
    params = meta.parse_item(meta.FILE_PARAMETERS, items[meta.FILE_PARAMETERS])
    disk.block_size = params.block_size
    disk.leave_blocks_allocated = params.flags.leave_blocks_allocated
    disk.virtual_size = meta.parse_item(
        meta.VIRTUAL_DISK_SIZE, items[meta.VIRTUAL_DISK_SIZE]
    ).virtual_disk_size
    disk.logical_sector_size = meta.parse_item(
        meta.LOGICAL_SECTOR_SIZE, items[meta.LOGICAL_SECTOR_SIZE]
    ).logical_sector_size
    disk.physical_sector_size = meta.parse_item(
        meta.PHYSICAL_SECTOR_SIZE, items[meta.PHYSICAL_SECTOR_SIZE]
    ).physical_sector_size
    page83 = items.get(meta.PAGE_83_DATA)
    disk.page_83_data = (
        meta.parse_item(meta.PAGE_83_DATA, page83).page_83_data
        if page83 and len(page83) >= 16
        else None
    )
    disk.parent_locator = None
    if meta.PARENT_LOCATOR in items:
        disk.parent_locator = meta.parse_parent_locator(items[meta.PARENT_LOCATOR])
    # Last: every item above parsed (check's report takes has_parent as "the metadata was read").
    disk.has_parent = params.flags.has_parent
    _check_parameters(disk)


def _check_parameters(disk: VhdxDisk) -> None:
    bs, lss = disk.block_size, disk.logical_sector_size
    if not meta.MIN_BLOCK_SIZE <= bs <= meta.MAX_BLOCK_SIZE or bs & (bs - 1):
        raise disk.refuse(
            "vhdx.block-size", f"block size {bs} is not a power of two from 1 MiB to 256 MiB"
        )
    for what, size in (("logical", lss), ("physical", disk.physical_sector_size)):
        if size not in meta.SECTOR_SIZES:
            raise disk.refuse(
                "vhdx.sector-size", f"{what} sector size {size} (512 or 4096 expected)"
            )
    vs = disk.virtual_size
    if not 0 < vs <= meta.MAX_VIRTUAL_DISK_SIZE or vs % lss:
        raise disk.refuse(
            "vhdx.virtual-size", f"virtual disk size {vs} is not a multiple of {lss} up to 64 TiB"
        )
    if lss != SECTOR:
        disk.note(
            "vhdx.logical-sector-4k",
            "warning",
            f"logical sector size is {lss} bytes: Azure takes 512-byte sectors only",
            logical_sector_size=lss,
        )
    disk.sectors_per_block = bs // lss
    disk.chunk_ratio = batfmt.chunk_ratio(lss, bs)


def _read_bat(disk: VhdxDisk) -> None:
    entries = batfmt.total_entries(
        disk.virtual_size, disk.block_size, disk.logical_sector_size, disk.has_parent
    )
    region = disk.bat_region
    if entries * 8 > region.length:
        raise disk.refuse(
            "vhdx.bat-too-small",
            f"BAT region of {region.length} bytes cannot hold the {entries} entries the disk needs",
        )
    # A dynamic file's table may stop after the last payload entry (spec 2.5): padded to whole
    # chunks, every block has a sector bitmap entry (NOT_PRESENT) to look up.
    whole_chunks = batfmt.total_entries(
        disk.virtual_size, disk.block_size, disk.logical_sector_size, has_parent=True
    )
    disk.bat = np.zeros(whole_chunks, dtype=batfmt.BAT_DTYPE)
    bat = disk.bat[:entries]
    disk.file_readinto(memoryview(bat).cast("B"), region.file_offset)  # in place: no second copy
    _check_bat(disk, bat)
    _check_bitmaps(disk)


def _check_bat(disk: VhdxDisk, bat: np.ndarray) -> None:
    bitmaps = slice(disk.chunk_ratio, None, disk.chunk_ratio + 1)  # every (ratio + 1)th entry
    states = batfmt.states(bat)
    payload_states = set(PayloadState)
    if not disk.has_parent:
        # PARTIALLY_PRESENT is defined only for differencing files (spec 2.5.1.1).
        payload_states.discard(PayloadState.PARTIALLY_PRESENT)
    valid = batfmt.state_in(states, payload_states)
    valid[bitmaps] = batfmt.state_in(states[bitmaps], batfmt.BitmapState)
    bad = np.flatnonzero(~valid)
    if len(bad):
        i = int(bad[0])
        raise disk.refuse(
            "vhdx.bat-state",
            f"BAT entry {i} has invalid state {int(states[i])} ({len(bad)} such entries)",
        )
    holds = batfmt.state_in(states, batfmt.HOLDS_DATA)
    holds[bitmaps] = states[bitmaps] == batfmt.BitmapState.PRESENT
    # Offsets and sizes of the blocks holding data only: memory grows with the data, not the
    # table (a 64 TiB disk of 1 MiB blocks has a 512 MiB table, held once)
    held = np.flatnonzero(holds)
    offsets = batfmt.offsets(bat[held])
    is_bitmap = held % (disk.chunk_ratio + 1) == disk.chunk_ratio
    sizes = np.where(is_bitmap, batfmt.SECTOR_BITMAP_BLOCK_SIZE, disk.block_size).astype(np.uint64)
    end = np.uint64(disk.replayed_size)
    checks = [
        (offsets < HEADER_SECTION, "vhdx.bat-in-header", "inside the 1 MiB header section"),
        # offset + size could wrap past 2^64
        ((offsets > end) | (end - offsets < sizes), "vhdx.bat-past-eof",
         f"past the end of the {disk.replayed_size}-byte file"),
    ]
    for name, start, stop in fixed_areas(disk)[1:]:
        # QEMU vhdx_open checks each block against the regions it registered. A clean file's
        # log fields are not checked elsewhere: they may run past 2^64.
        start, stop = (np.uint64(min(x, np.iinfo(np.uint64).max)) for x in (start, stop))
        checks.append(((offsets < stop) & (offsets + sizes > start), "vhdx.bat-in-region",
                       f"into the {name} (bytes {start}-{stop})"))
    for mask, code, what in checks:
        hits = np.flatnonzero(mask)
        if len(hits):
            i = int(held[hits[0]])
            raise disk.refuse(
                code,
                f"BAT entry {i} points to offset {int(offsets[hits[0]])}, {what} "
                f"({len(hits)} such entries)",
            )
    order = np.argsort(offsets, kind="stable")
    # Sorted by offset, some two blocks overlap exactly when some block starts before the one
    # before it ends (vhd-util's "clobbers block" for VHD; bat.overlap in check).
    clash = np.flatnonzero(offsets[order][1:] < (offsets + sizes)[order][:-1])
    if len(clash):
        a, b = int(order[clash[0]]), int(order[clash[0] + 1])
        raise disk.refuse(
            "vhdx.bat-overlap",
            f"BAT entries {int(held[a])} and {int(held[b])} point to overlapping blocks at offsets "
            f"{int(offsets[a])} and {int(offsets[b])} ({len(clash)} such pairs): writing one "
            "corrupts the other",
        )


def _check_bitmaps(disk: VhdxDisk) -> None:
    """Spec 2.5.1.2: a chunk with a PARTIALLY_PRESENT block must have its sector bitmap."""
    chunks = disk.bat.reshape(-1, disk.chunk_ratio + 1)
    partial = (batfmt.states(chunks[:, :-1]) == PayloadState.PARTIALLY_PRESENT).any(axis=1)
    missing = np.flatnonzero(partial & (batfmt.states(chunks[:, -1]) != batfmt.BitmapState.PRESENT))
    if len(missing):
        raise disk.refuse(
            "vhdx.bitmap-missing",
            f"chunk {int(missing[0])} has partially present blocks but no sector bitmap",
        )
