"""Opening the file and finding its footer, without trusting anything in it.

Nothing here stops at a damaged footer: when no footer carries the
"conectix" cookie but the last sector is plainly a footer with a damaged cookie, it is
used anyway so that every other rule still runs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vhdtool.disk.file import FooterLocation, locate_footer, open_readonly, pread_exact
from vhdtool.disk.findings import Report
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import (
    COOKIE,
    FOOTER_SIZE,
    FORMAT_VERSION,
    SHORT_FOOTER_SIZE,
    DiskType,
    footer_checksum,
    parse_footer,
)
from vhdtool.format.sector import SECTOR


def open_failure_code(path: Path) -> str:
    """The finding code for a path `open_readonly` refused (it says why in its message)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file.missing"
    except OSError:
        return "file.unreadable"
    if stat.S_ISDIR(st.st_mode):
        return "file.directory"
    if not stat.S_ISREG(st.st_mode):
        return "file.not-regular"
    return "file.unreadable"


def open_for_check(report: Report, path: Path) -> tuple[int, os.stat_result] | Report:
    """The open file, or `report` holding the finding that says why it cannot be opened."""
    try:
        return open_readonly(path)
    except VhdError as exc:
        report.add(open_failure_code(path), exc.detail)
        return report


def check_length(report: Report, size: int) -> bool:
    """File length rules that decide whether there can be a footer at all."""
    if size == 0:
        report.add("file.empty", "the file is empty (0 bytes): nothing was written to it")
        return False
    if size < SHORT_FOOTER_SIZE:
        report.add(
            "file.too-small",
            f"the file is {size:,} bytes, smaller than a VHD footer (512 bytes): not a VHD",
        )
        return False
    return True


def looks_like_damaged_footer(raw: bytes) -> bool:
    """A last sector that is a footer except for its cookie (damaged in transfer or by hand):
    its checksum is right once the cookie is restored, or its version and disk type are valid.
    Random data passes either test with a chance of 2^-32."""
    footer = parse_footer(raw)
    if footer_checksum(COOKIE + raw[8:]) == footer.checksum:
        return True
    return footer.format_version == FORMAT_VERSION and footer.disk_type in (
        DiskType.FIXED,
        DiskType.DYNAMIC,
        DiskType.DIFFERENCING,
    )


def find_footer(report: Report, fd: int, size: int) -> FooterLocation | None:
    """The footer to check against, the way libvhd finds it (EOF-512, EOF-511, offset 0)."""
    found = locate_footer(fd, size)
    if found is not None:
        return found
    if size >= FOOTER_SIZE:
        raw = pread_exact(fd, FOOTER_SIZE, size - FOOTER_SIZE)
        if looks_like_damaged_footer(raw):
            cookie = raw[:8]
            report.add(
                "footer.cookie",
                f"the footer's cookie is {cookie!r}, not b'conectix': Azure refuses the blob "
                "(\"Disk is expected to have cookie value 'conectix'\") and every VHD reader "
                "takes the file for something else",
            )
            return FooterLocation(parse_footer(raw), raw, size - FOOTER_SIZE, "tail")
    report.add(
        "footer.missing",
        "no VHD footer: neither the last 512 (or 511) bytes nor the first 512 start with "
        "'conectix', and the last sector does not look like a damaged footer: not a VHD",
    )
    return None


def check_alignment(report: Report, size: int, found: FooterLocation) -> None:
    """File length % 512 must be 0, or 511 for an old Virtual PC 511-byte footer
    (vhd-util check: "invalid file size"; libvhd vhd_read_short_footer)."""
    if found.source == "tail-511":
        report.add(
            "footer.short",
            f"the footer is 511 bytes (the file is {size:,} bytes, {size % SECTOR} past a "
            "multiple of 512), as Virtual PC wrote before 2004: libvhd reads it, most tools do not",
        )
    elif size % SECTOR:
        report.add(
            "file.length",
            f"the file is {size:,} bytes, {size % SECTOR} bytes past a multiple of 512: a VHD "
            "is whole sectors plus its footer (vhd-util check: invalid file size)",
        )
