"""Fixed-image rules: the data before the footer must be exactly the disk. Reads only the
first sector besides the footer, whatever the image size."""

from __future__ import annotations

from vhdtool.disk.findings import Report
from vhdtool.disk.file import VhdFile
from vhdtool.format.vhd.footer import COOKIE, FOOTER_SIZE


def check_fixed(report: Report, vf: VhdFile) -> None:
    size = vf.found.footer.current_size
    held = vf.data_end
    if size > held:
        report.add(
            "fixed.truncated",
            f"the footer says the disk is {size:,} bytes but the file holds only {held:,} "
            f"before its footer: {size - held:,} bytes are missing (the file was truncated)",
        )
    elif size < held:
        report.add(
            "fixed.extra-data",
            f"the file holds {held:,} bytes before its footer, {held - size:,} more than the "
            f"{size:,}-byte disk: readers ignore them",
        )
    if vf.found.source != "head" and vf.read(0, FOOTER_SIZE)[:8] == COOKIE:
        # QEMU vpc_open looks for "conectix" at offset 0 first and, finding it, treats the
        # image as dynamic (its first sector is taken for a footer copy).
        report.add(
            "fixed.head-cookie",
            "the disk's first sector starts with 'conectix': QEMU takes it for the footer "
            "copy of a dynamic image and misreads this fixed image",
        )
