"""Run every rule that applies to one image and collect the findings.

The strict reader (`open_disk`) stops at the first problem; this inspects the raw
structures through the format layer so that everything wrong is reported at once. It reads
only the footer, the first sector, and for dynamic and differencing images the header, BAT
and locators: time and memory do not depend on the disk size.
"""

from __future__ import annotations

import os
from pathlib import Path

from vhdtool.workflows.check.bat_rules import check_entries, read_bat
from vhdtool.workflows.check.findings import Report, Target
from vhdtool.workflows.check.fixed_rules import check_fixed
from vhdtool.workflows.check.footer_rules import check_copies, check_footer, check_tail
from vhdtool.workflows.check.header_rules import check_header, read_header
from vhdtool.workflows.check.parent_rules import check_chain, check_locators
from vhdtool.workflows.check.source import (
    VhdFile,
    check_alignment,
    check_length,
    find_footer,
    open_for_check,
)
from vhdtool.workflows.check.target_rules import check_azure, check_interop
from vhdtool.format.vhd.footer import DiskType, disk_type_name
from vhdtool.redaction import redact


def run_checks(path: str | os.PathLike, target: Target) -> Report:
    path = Path(path)
    report = Report(redact(str(path)), target)  # a blob URL given as a file keeps its SAS out
    opened = open_for_check(report, path)
    if opened is None:
        return report
    fd, st = opened
    try:
        check_file(report, path, fd, st, target)
    except OSError as exc:
        report.add("file.read-error", f"reading the file failed: {exc.strerror or exc}")
    finally:
        os.close(fd)
    return report


def check_file(report: Report, path: Path, fd: int, st: os.stat_result, target: Target) -> None:
    report.file_size = st.st_size
    if not check_length(report, st.st_size):
        return
    found = find_footer(report, fd, st.st_size)
    if found is None:
        return
    vf = VhdFile(path, fd, st, found)
    footer = found.footer
    report.disk_type = disk_type_name(footer.disk_type)
    report.virtual_size = footer.current_size
    check_alignment(report, st.st_size, found)
    check_tail(report, vf)
    check_footer(report, vf)
    if footer.disk_type == DiskType.FIXED:
        check_fixed(report, vf)
    elif footer.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING):
        check_sparse(report, vf)
    check_interop(report, footer)
    if target != Target.GENERIC:
        check_azure(report, target, footer, st.st_size)


def check_sparse(report: Report, vf: VhdFile) -> None:
    check_copies(report, vf)
    header = read_header(report, vf)
    if header is None:
        return
    check_header(report, vf, header)
    bat = read_bat(report, vf, header)
    if bat is not None:
        check_entries(report, vf, header, bat)
    if vf.found.footer.disk_type == DiskType.DIFFERENCING:
        check_locators(report, vf, header)
        check_chain(report, vf, header)
