"""Differencing rules: well-formed parent locators (vhd-util check
vhd_util_check_validate_parent_locator). Whether the chain resolves is vhdtool.disk.parents."""

from __future__ import annotations

from construct import Container

from vhdtool.disk.findings import Report
from vhdtool.disk.file import VhdFile
from vhdtool.format.vhd.footer import creator_text
from vhdtool.format.vhd.header import MACX, PLATFORM_NONE, W2KU, W2RU, locator_data_space

# Platform codes libvhd accepts (vhd_validate_platform_code): "Mac " is a Mac OS alias
# record, "Wi2r"/"Wi2k" are the deprecated non-Unicode Windows paths.
PLATFORM_CODES = (W2RU, W2KU, MACX, b"Mac ", b"Wi2r", b"Wi2k")


def locator_problem(loc: Container, data_end: int, seen: set[bytes]) -> str | None:
    """What is wrong with one locator entry, in vhd-util check's order, or None."""
    code = loc.platform_code
    if code == PLATFORM_NONE:
        fields = (loc.platform_data_space, loc.platform_data_length, loc.reserved, loc.platform_data_offset)
        return "an unused entry (code 0) with non-zero fields" if any(fields) else None
    if code not in PLATFORM_CODES:
        return "an unknown platform code"
    if code in seen:
        return "a platform code already used by another locator"
    seen.add(code)
    if not loc.platform_data_offset or not loc.platform_data_space or not loc.platform_data_length:
        return "a zero data offset, space or length"
    space = locator_data_space(loc)
    if loc.platform_data_length > space:
        return f"{loc.platform_data_length:,} bytes of data in a {space:,}-byte space"
    end = loc.platform_data_offset + space
    if end > data_end:
        return f"data at bytes {loc.platform_data_offset:,}-{end:,}, past the data area end at {data_end:,}"
    if loc.reserved:
        return "a non-zero reserved field"
    return None


def check_locators(report: Report, vf: VhdFile, header: Container) -> None:
    seen: set[bytes] = set()
    for index, loc in enumerate(header.parent_locators):
        problem = locator_problem(loc, vf.data_end, seen)
        if problem:
            report.add(
                "parent.locator",
                f"parent locator {index} ('{creator_text(loc.platform_code)}') has {problem} "
                "(vhd-util check: invalid parent locator)",
            )
