"""Run every structural rule on one VHD file and keep what was decoded.

Both `check` and the reader come through here: check renders the findings, the reader acts
on them (vhdtool.disk.image refuses an image with any CHANGES_CONTENT finding). Only the
footer, the first sector, and for dynamic and differencing images the header, BAT and
locators are read: time and memory do not depend on the disk size. numpy (for the BAT) is
imported only for dynamic and differencing images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from construct import Container

from vhdtool.disk.file import FooterLocation, VhdFile
from vhdtool.disk.findings import NOT_A_VHD_CODES, UNUSABLE_CODES, Report, Target
from vhdtool.disk.vhd_rules.fixed_rules import check_fixed
from vhdtool.disk.vhd_rules.footer_rules import check_copies, check_footer, check_tail
from vhdtool.disk.vhd_rules.header_rules import check_header, read_header
from vhdtool.disk.vhd_rules.locator_rules import check_locators
from vhdtool.disk.vhd_rules.source import check_alignment, check_length, find_footer
from vhdtool.errors import DamagedImageError, NotVhdError, VhdError
from vhdtool.format.vhd.footer import DiskType, disk_type_name
from vhdtool.redaction import redact

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Inspection:
    """One open image file, its findings, and every structure that could be decoded."""

    path: Path
    fd: int
    stat: os.stat_result
    report: Report
    found: FooterLocation | None = None
    header: Container | None = None
    bat: np.ndarray | None = None  # the entries inside the file (bounded, see bat_rules)
    parent: Inspection | None = None  # set when the parent chain resolved

    @property
    def footer(self) -> Container | None:
        return None if self.found is None else self.found.footer

    def chain(self) -> list[Inspection]:
        out, item = [], self
        while item is not None:
            out.append(item)
            item = item.parent
        return out

    def close(self) -> None:
        for item in self.chain():
            if item.fd >= 0:
                os.close(item.fd)
                item.fd = -1


def inspect_file(path: Path, fd: int, st: os.stat_result) -> Inspection:
    """The structural findings of this file alone (its parent is vhdtool.disk.parents')."""
    report = Report(redact(str(path)), Target.GENERIC)  # a blob URL given as a file keeps its SAS out
    inspection = Inspection(path, fd, st, report)
    try:
        check_file(inspection)
    except OSError as exc:
        report.add("file.read-error", f"reading the file failed: {exc.strerror or exc}")
    return inspection


def check_file(inspection: Inspection) -> None:
    report, st = inspection.report, inspection.stat
    report.file_size = st.st_size
    if not check_length(report, st.st_size):
        return
    found = find_footer(report, inspection.fd, st.st_size)
    if found is None:
        return
    inspection.found = found
    vf = VhdFile(inspection.path, inspection.fd, st, found)
    footer = found.footer
    report.disk_type = disk_type_name(footer.disk_type)
    report.virtual_size = footer.current_size
    check_alignment(report, st.st_size, found)
    check_tail(report, vf)
    check_footer(report, vf)
    if footer.disk_type == DiskType.FIXED:
        check_fixed(report, vf)
    elif footer.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING):
        check_sparse(inspection, vf)


def check_sparse(inspection: Inspection, vf: VhdFile) -> None:
    from vhdtool.disk.vhd_rules.bat_rules import check_entries, read_bat  # numpy: sparse only

    report = inspection.report
    check_copies(report, vf)
    header = read_header(report, vf)
    if header is None:
        return
    inspection.header = header
    check_header(report, vf, header)
    inspection.bat = read_bat(report, vf, header)
    if inspection.bat is not None:
        check_entries(report, vf, header, inspection.bat)
    if vf.found.footer.disk_type == DiskType.DIFFERENCING:
        check_locators(report, vf, header)


def refuse_unreadable(inspection: Inspection) -> None:
    """Raise for any finding that changes what the disk reads, naming every such code."""
    report = inspection.report
    codes = report.unreadable()
    if not codes:
        return
    first = next(f for f in report.findings if f.code == codes[0])
    if set(codes) <= UNUSABLE_CODES:
        # No VHD, or the file cannot be read: nothing to name but the one problem.
        error = NotVhdError if set(codes) <= NOT_A_VHD_CODES else VhdError
        raise error(first.message, inspection.path)
    raise DamagedImageError(
        f"refused, the image is damaged ({', '.join(dict.fromkeys(codes))}): {first.message}; "
        f"run: vhdtool check {inspection.path}",
        inspection.path,
    )
