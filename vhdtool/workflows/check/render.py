"""Plain-text rendering of a check report: one block per finding, then the verdict."""

from __future__ import annotations

from vhdtool.disk.findings import Report
from vhdtool.redaction import shown
from vhdtool.units import format_size


def summary(report: Report) -> str:
    head = f"{shown(report.path)} (target {report.target.value})"
    if report.virtual_size is None:
        return head
    fmt = report.format.upper()
    kind = f"{report.disk_type} {fmt}" if report.disk_type else f"{fmt} of unknown type"
    return f"{head}: {kind}, virtual size {format_size(report.virtual_size)}, file {report.file_size:,} bytes"


def render_text(report: Report) -> list[str]:
    lines = [summary(report)]
    width = max((len(f.code) for f in report.findings), default=0)
    for f in report.findings:
        lines.append(f"  {f.severity.value:<7} {f.code:<{width}}  {f.message}")
        if f.fix:
            lines.append(f"  {'':<7} {'':<{width}}  fix: {f.fix}")
    if not report.findings:
        lines.append("  no findings")
    lines.append(f"verdict: {report.verdict}")
    return lines
