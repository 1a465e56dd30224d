"""Check one image: its structural findings (vhdtool.disk, the ones the reader acts on), then
the interoperability and target rules, which work on footer numbers only."""

from __future__ import annotations

import os
from pathlib import Path

from construct import Container

from vhdtool.disk.findings import Report, Target
from vhdtool.disk.inspect import inspect_open
from vhdtool.disk.vhd_rules.source import open_for_check
from vhdtool.redaction import redact
from vhdtool.workflows.check.target_rules import check_azure, check_interop


def run_checks(path: str | os.PathLike, target: Target) -> Report:
    path = Path(path)
    opened = open_for_check(Report(redact(str(path)), target), path)
    if isinstance(opened, Report):
        return opened
    inspection = inspect_open(path, *opened)
    inspection.close()
    return add_target_rules(inspection.report, inspection.footer, inspection.stat.st_size, target)


def add_target_rules(report: Report, footer: Container | None, file_size: int, target: Target) -> Report:
    """`report` (structural findings), for `target`: interoperability and target rules added."""
    report.target = target
    if footer is not None and report.usable:
        check_interop(report, footer)
        if target != Target.GENERIC:
            check_azure(report, target, footer, file_size)
    return report
