"""Block allocation table rules (vhd-util check vhd_util_check_bat, QEMU vpc_open).

Every size involved comes from a possibly damaged file, so none is trusted for allocation:
at most MAX_BAT_ENTRIES entries are read, and never more than lie inside the file.
"""

from __future__ import annotations

import numpy as np
from construct import Container

from vhdtool import ranges
from vhdtool.disk.findings import Report
from vhdtool.disk.file import VhdFile
from vhdtool.format.vhd.bat import UNALLOCATED, bat_bytes, bitmap_bytes, parse_bat
from vhdtool.format.vhd.footer import FOOTER_SIZE
from vhdtool.format.vhd.header import HEADER_SIZE, PLATFORM_NONE, block_size_valid, locator_data_space
from vhdtool.format.sector import SECTOR

ENTRY = 4
# 16 MiB of table. The largest VHD QEMU and Hyper-V open (2040 GiB) needs 4,177,920 entries
# with 512 KiB blocks, the smallest Hyper-V offers; a header claiming more is damaged, and we
# do not allocate for it (a sparse file full of zero entries then costs ~200 MiB, briefly).
MAX_BAT_ENTRIES = 1 << 22


def bat_too_large(entries: int) -> bool:
    """More entries than any real VHD needs: readers take the header for damaged."""
    return entries > MAX_BAT_ENTRIES


def plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def read_bat(report: Report, vf: VhdFile, header: Container) -> np.ndarray | None:
    """The table entries that lie inside the file (bounded), or None if its offset is wrong."""
    footer = vf.found.footer
    entries, table = header.max_table_entries, header.table_offset
    if block_size_valid(header.block_size):
        needed = ranges.ceil_div(footer.current_size, header.block_size)
        if entries < needed:
            report.add(
                "bat.too-small",
                f"the BAT has {entries:,} entries but the {footer.current_size:,}-byte disk needs "
                f"{needed:,} blocks of {header.block_size:,} bytes: the end of the disk is not "
                "addressable (QEMU: Page table too small)",
            )
    if bat_too_large(entries):
        report.add(
            "bat.too-large",
            f"the header claims {entries:,} BAT entries ({entries * ENTRY:,} bytes of table); "
            f"no VHD up to 2040 GiB in blocks of 512 KiB or more needs over {MAX_BAT_ENTRIES:,}: the header is "
            f"damaged (QEMU: Max Table Entries too large). Only the entries inside the "
            f"file, at most {MAX_BAT_ENTRIES:,}, are checked",
        )
    table_end = table + entries * ENTRY
    if table == 0 or table % SECTOR:
        report.add(
            "bat.offset",
            f"the BAT offset {table:,} is not a positive multiple of 512 (vhd-util check: "
            "invalid table offset); its entries cannot be checked",
        )
        return None
    header_offset = footer.data_offset
    if table < FOOTER_SIZE or (table < header_offset + HEADER_SIZE and table_end > header_offset):
        report.add(
            "bat.offset",
            f"the BAT (bytes {table:,}-{table_end:,}) overlaps the footer copy (0-511) or the "
            f"dynamic header ({header_offset:,}-{header_offset + HEADER_SIZE - 1:,}); its "
            "entries cannot be checked",
        )
        return None
    if table_end > vf.data_end:
        report.add(
            "bat.beyond-eof",
            f"the BAT ({entries:,} entries from offset {table:,}) ends at byte {table_end:,}, "
            f"past the end of the data area at {vf.data_end:,} (vhd-util check: invalid table "
            "offset)",
        )
    count = max(0, min(entries, MAX_BAT_ENTRIES, (vf.data_end - table) // ENTRY))
    raw = vf.read(table, count * ENTRY)
    return parse_bat(raw, len(raw) // ENTRY)


def metadata_end(vf: VhdFile, header: Container, entries: int) -> int:
    """End of footer copy, header, BAT and well-placed locator data: blocks must come after
    (vhd-util vhd_end_of_headers)."""
    ends = [FOOTER_SIZE, vf.found.footer.data_offset + HEADER_SIZE, header.table_offset + bat_bytes(entries)]
    for loc in header.parent_locators:
        end = loc.platform_data_offset + locator_data_space(loc)
        if loc.platform_code != PLATFORM_NONE and end <= vf.data_end:
            ends.append(end)
    return max(ends)


def sector_at_or_after(offset: int) -> int:
    """The first sector number whose byte offset is >= `offset`, clamped to the u32 range."""
    return min(max(ranges.ceil_div(offset, SECTOR), 0), UNALLOCATED)


def first(mask: np.ndarray, after: int = -1) -> int:
    """Index of the first True in `mask` past `after`."""
    return after + 1 + int(np.argmax(mask[after + 1 :]))


def check_entries(report: Report, vf: VhdFile, header: Container, bat: np.ndarray) -> None:
    """Every used entry must point after the metadata, end before the footer, and not
    overlap another block. Works in sector numbers with masks over the table, so a table of
    millions of entries costs a few bytes per entry."""
    if not block_size_valid(header.block_size):
        return  # header.block-size was reported: block extents are unknown
    span = bitmap_bytes(header.block_size) + header.block_size
    meta_end, data_end = metadata_end(vf, header, len(bat)), vf.data_end
    used = bat != UNALLOCATED
    past_end = bat >= sector_at_or_after(data_end)

    inside = used & (bat < sector_at_or_after(meta_end))
    if inside.any():
        i = first(inside)
        report.add(
            "bat.entry-in-metadata",
            f"{plural(int(np.count_nonzero(inside)), 'BAT entry points', 'BAT entries point')} into "
            f"the metadata (footer copy, header, BAT and locators end at byte {meta_end:,}); first: "
            f"block {i:,} at byte {int(bat[i]) * SECTOR:,}. Writing it overwrites the metadata "
            "(vhd-util check: clobbers headers)",
        )
    past = used & past_end
    if past.any():
        i = first(past)
        report.add(
            "bat.entry-past-eof",
            f"{plural(int(np.count_nonzero(past)), 'BAT entry points', 'BAT entries point')} at or "
            f"past the end of the data area (byte {data_end:,}); first: block {i:,} at byte "
            f"{int(bat[i]) * SECTOR:,} (QEMU: free_data_block_offset points after the end of file)",
        )
    # start * 512 + span > data_end, for a block that starts inside the data area
    cut = used & ~past_end & (bat >= sector_at_or_after(data_end - span + 1))
    if cut.any():
        i = first(cut)
        start = int(bat[i]) * SECTOR
        report.add(
            "bat.block-truncated",
            f"block {i:,} occupies bytes {start:,}-{start + span:,} but the data area ends at byte "
            f"{data_end:,}: the file was truncated inside it or it runs into the footer "
            f"({plural(int(np.count_nonzero(cut)), 'block', 'blocks')}; vhd-util check: clobbers footer)",
        )
    check_overlaps(report, bat, used, span)


def check_overlaps(report: Report, bat: np.ndarray, used: np.ndarray, span: int) -> None:
    ordered = np.sort(bat[used])
    clash = np.flatnonzero(np.diff(ordered) < span // SECTOR)
    if not clash.size:
        return
    lo, hi = int(ordered[clash[0]]), int(ordered[clash[0] + 1])
    a = first(bat == lo)
    b = first(bat == hi, after=a) if hi == lo else first(bat == hi)
    report.add(
        "bat.overlap",
        f"blocks {a:,} and {b:,} overlap: block {a:,} occupies bytes {lo * SECTOR:,}-"
        f"{lo * SECTOR + span:,} and block {b:,} starts at byte {hi * SECTOR:,} "
        f"({plural(clash.size, 'overlapping pair', 'overlapping pairs')}): writing one corrupts "
        "the other (vhd-util check: clobbers block)",
    )
