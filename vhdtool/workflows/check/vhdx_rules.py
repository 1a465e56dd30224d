"""Check a VHDX: the reader's findings and refusals (disk/vhdx.py: one structural truth), then
what Azure needs of it. Azure takes only VHD: `vhdtool prepare` writes the fixed VHD."""

from __future__ import annotations

from pathlib import Path

from vhdtool.disk.findings import Report, Target
from vhdtool.disk.partitions import read_layout, to_dict
from vhdtool.disk.vhdx import VhdxDisk, examine_vhdx
from vhdtool.disk.vhdx_errors import VhdxError
from vhdtool.workflows.check.target_rules import check_targets, prepare_command


def check_vhdx(report: Report, path: Path) -> Report:
    """`report` (empty, for its target) filled in for the VHDX at `path`."""
    disk, refusal = examine_vhdx(path)
    try:
        return vhdx_report(report, disk, refusal)
    finally:
        disk.close()


def vhdx_report(
    report: Report, disk: VhdxDisk, refusal: VhdxError | None, *, layout: bool | None = None
) -> Report:
    """The findings of an examined VHDX (`refusal`: why it cannot be read, if it cannot).
    The partition table is read for Azure targets (as for a VHD), or when `layout` says so."""
    report.format = "vhdx"
    report.file_size = disk.file_size
    if hasattr(disk, "has_parent"):  # the metadata was read
        report.disk_type, report.virtual_size = disk.subformat, disk.virtual_size
    azure = report.target != Target.GENERIC
    sound = refusal is None
    fix = prepare_command(report.path, report.target) if azure and sound else None
    for source in disk.chain():
        assert isinstance(source, VhdxDisk)  # a VHDX's parents are VHDX (vhdx_parent refuses others)
        where = "" if source is disk else f"parent {source.path}: "
        for f in source.findings:
            # Azure needs 512-byte sectors: prepare writes them (spec 2.6.2.4; Azure VHD rules).
            report.add(f.code, where + f.message, fix if f.code == "vhdx.logical-sector-4k" else None, **f.numbers)
    if refusal is not None:
        where = "" if refusal.path in (None, report.path) else f"parent {refusal.path}: "
        report.add(refusal.code, where + refusal.detail)
        return report
    table = read_layout(disk) if (azure if layout is None else layout) else None
    if table is not None:
        report.partitions = to_dict(table)
    if azure:
        report.add(
            "azure.not-vhd",
            f"this is a {disk.subformat} VHDX; Azure takes only fixed VHDs: `vhdtool prepare` "
            "writes one (512-byte sectors, whole MiB) in one pass",
            fix,
        )
        check_targets(report, report.target, disk.virtual_size, table)
    return report
