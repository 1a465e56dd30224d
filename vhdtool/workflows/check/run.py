"""Check one image: its structural findings (vhdtool.disk, the ones the reader acts on), then
the interoperability and target rules, which work on footer numbers and the partition table."""

from __future__ import annotations

import os
from pathlib import Path

from construct import Container

from vhdtool.disk.findings import Report, Target
from vhdtool.disk.inspect import inspect_open
from vhdtool.disk.partitions import Layout, to_dict
from vhdtool.disk.vhd_rules.source import open_for_check
from vhdtool.disk.vhd_rules.structure import Inspection
from vhdtool.redaction import redact
from vhdtool.workflows.check.layout import inspection_layout
from vhdtool.workflows.check.target_rules import (
    check_azure,
    check_interop,
    check_targets,
)


def run_checks(path: str | os.PathLike, target: Target) -> Report:
    path = Path(path)
    report = Report(redact(str(path)), target)
    opened = open_for_check(report, path)
    if isinstance(opened, Report):
        return opened
    inspection = inspect_open(path, *opened)
    try:
        if inspection.found is None:  # no VHD footer: a VHDX, or an image vhdtool does not read?
            from vhdtool.disk.sniff import READABLE, unsupported

            fmt = sniff_format(inspection)
            if fmt == "vhdx":
                from vhdtool.workflows.check.vhdx_rules import check_vhdx

                return check_vhdx(report, path)
            if fmt not in READABLE:  # say what it is and how to convert it, not "no footer"
                inspection.report.findings.clear()
                inspection.report.add("file.format", unsupported(report.path, fmt).detail)
        # The partition table matters to Azure targets only: a generic check reads no more.
        wanted = target != Target.GENERIC and inspection.report.usable
        layout = inspection_layout(inspection) if wanted else None
    finally:
        inspection.close()
    return add_target_rules(inspection.report, inspection.footer, inspection.stat.st_size, target, layout)


def sniff_format(inspection: Inspection) -> str:
    """The format of a file in which no VHD footer was found (disk/sniff.py). A VHD is told by
    its footer first, so that checking one reads nothing more; a VHDX holds no VHD footer."""
    from vhdtool.disk.sniff import sniff_fd

    return sniff_fd(inspection.path, inspection.fd, inspection.stat.st_size)


def add_target_rules(
    report: Report, footer: Container | None, file_size: int, target: Target, layout: Layout | None = None
) -> Report:
    """`report` (structural findings), for `target`: interoperability and target rules added,
    and what the partition table says (`layout`, when the disk could be read)."""
    report.target = target
    if layout is not None:
        report.partitions = to_dict(layout)
    if footer is not None and report.usable:
        check_interop(report, footer)
        if target != Target.GENERIC:
            check_azure(report, target, footer, file_size)
            check_targets(report, target, footer.current_size, layout)
    return report

