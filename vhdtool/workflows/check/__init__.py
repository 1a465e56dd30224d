"""`vhdtool check`: structural validation and Azure suitability of a VHD or VHDX, all findings at once.

The structural rules live in vhdtool.disk (the reader acts on the same findings); this
package adds the target rules (Azure, interoperability) and renders the report.

`check_image(path, target)` returns a `Report` (findings with stable codes, severities,
messages and fix commands, plus the exit code); the CLI only renders it. Importing this
package is light (no numpy): the rules load on the first call.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from vhdtool.disk.findings import (
    CODES,
    REPAIRED_BY_ALIGNMENT,
    REPAIRED_BY_CONVERSION,
    UNUSABLE_CODES,
    Finding,
    Report,
    Severity,
    Target,
    unrepaired,
)

if TYPE_CHECKING:
    from vhdtool.disk.image import Disk

__all__ = [
    "CODES", "REPAIRED_BY_ALIGNMENT", "REPAIRED_BY_CONVERSION", "UNUSABLE_CODES", "Finding", "Report",
    "Severity", "Target", "check_image", "disk_report", "unrepaired",
]


def check_image(path: str | os.PathLike, target: Target | str = Target.AZURE) -> Report:
    """Check one image for `target`; never raises for bad input (it becomes a finding)."""
    from vhdtool.workflows.check.run import run_checks

    return run_checks(path, Target(target))


def disk_report(disk: Disk, target: Target | str = Target.AZURE) -> Report:
    """The check report of an image opened by `open_disk`, for `target`, without reading the
    file again (the structural findings came with the disk)."""
    from vhdtool.workflows.check.run import add_target_rules

    if disk.kind == "vhdx":
        from vhdtool.redaction import redact
        from vhdtool.workflows.check.vhdx_rules import vhdx_report

        return vhdx_report(Report(redact(str(disk.path)), Target(target)), disk, None)
    return add_target_rules(replace(disk.findings, findings=list(disk.findings.findings)), disk.footer,
                            disk.file_size, Target(target))


def streamed_report(disk: Disk, target: Target | str = Target.AZURE) -> Report:
    """The check of the fixed VHD that upload and image capture write from `disk` on the fly:
    its own findings and, for a VHDX (whose footer is made as it streams), Azure's rules on
    that VHD in place of `azure.not-vhd`."""
    report = disk_report(disk, target)
    if disk.footer is None:
        from vhdtool.disk.fixed import FixedImage
        from vhdtool.format.vhd.footer import parse_footer
        from vhdtool.workflows.check.target_rules import check_azure

        report.findings = [f for f in report.findings if f.code != "azure.not-vhd"]
        image = FixedImage(disk)
        check_azure(report, report.target, parse_footer(image.footer_bytes), image.virtual_size)  # footer included
    return report

