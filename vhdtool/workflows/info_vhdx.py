"""`vhdtool info` of a VHDX: the file identifier, both headers, the region table, every
metadata item, the parent locator and chain, and the BAT summarised by block state (MS-VHDX).

A damaged VHDX shows every structure read before the reader refused it, and its findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from construct import Container

from vhdtool.disk.findings import Report, Target
from vhdtool.disk.vhdx import VhdxDisk, examine_vhdx
from vhdtool.format.vhdx import bat as batfmt
from vhdtool.format.vhdx.header import HEADER_OFFSETS
from vhdtool.format.vhdx.region import KNOWN_REGIONS
from vhdtool.redaction import redact
from vhdtool.workflows.check.vhdx_rules import vhdx_report


def describe_vhdx(path: Path) -> dict[str, Any]:
    disk, refusal = examine_vhdx(path)
    try:
        report = vhdx_report(Report(redact(str(path)), Target.GENERIC), disk, refusal, layout=True)
        out = vhdx_fields(disk)
        if disk.parent is not None:
            out["parent_chain"] = [vhdx_fields(p) for p in disk.chain()[1:] if isinstance(p, VhdxDisk)]
        if report.partitions is not None:
            out["partitions"] = report.partitions
        if report.findings:
            out["findings"] = [f.to_dict() for f in report.findings]
        out["exit_code"] = report.exit_code
        return out
    finally:
        disk.close()


def vhdx_fields(disk: VhdxDisk) -> dict[str, Any]:
    """What the file's structures decode to, as far as they were read."""
    read = vars(disk)  # the reader sets each structure's attributes as it reads it
    out: dict[str, Any] = {
        "path": redact(str(disk.path)),
        "type": "vhdx",
        "subformat": disk.subformat if "has_parent" in read else None,
        "virtual_size": read.get("virtual_size"),
        "file_size": disk.file_size,
        "allocated_on_disk": disk.stat.st_blocks * 512,  # st_blocks counts 512-byte units (POSIX)
    }
    if "creator" in read:
        out["creator"] = disk.creator
    if "headers" in read:
        out["headers"] = header_rows(disk)
    if disk.overlay is not None:
        out["log_replayed_entries"] = disk.overlay.entries
    if "regions" in read:
        out["regions"] = [region_fields(e) for e in disk.regions]
    if "metadata_items" in read:
        out["metadata"] = metadata_fields(disk)
    if "bat" in read:
        out["bat"] = bat_summary(disk)
    return out


def header_rows(disk: VhdxDisk) -> list[dict[str, Any]]:
    damaged = {f.numbers.get("header") for f in disk.findings if f.code == "vhdx.header-checksum"}
    current = vars(disk).get("current_header")
    return [
        {
            "number": number,
            "offset": offset,
            "valid": number not in damaged,
            "current": h is current,
            "signature": h.signature.decode("latin-1"),
            "checksum": f"0x{h.checksum:08x}",
            "sequence_number": h.sequence_number,
            "file_write_guid": str(h.file_write_guid),
            "data_write_guid": str(h.data_write_guid),
            "log_guid": str(h.log_guid),
            "log_version": h.log_version,
            "version": h.version,
            "log_length": h.log_length,
            "log_offset": h.log_offset,
        }
        for number, (offset, h) in enumerate(zip(HEADER_OFFSETS, disk.headers), 1)
    ]


def region_fields(entry: Container) -> dict[str, Any]:
    return {
        "guid": str(entry.guid).upper(),
        "name": KNOWN_REGIONS.get(entry.guid, "unknown"),
        "file_offset": entry.file_offset,
        "length": entry.length,
        "required": bool(entry.flags.required),
    }


def metadata_fields(disk: VhdxDisk) -> dict[str, Any]:
    read = vars(disk)
    out: dict[str, Any] = {
        "block_size": read.get("block_size"),
        "leave_blocks_allocated": read.get("leave_blocks_allocated"),
        "has_parent": read.get("has_parent"),
        "virtual_disk_size": read.get("virtual_size"),
        "logical_sector_size": read.get("logical_sector_size"),
        "physical_sector_size": read.get("physical_sector_size"),
        "page_83_data": None if read.get("page_83_data") is None else str(disk.page_83_data),
    }
    locator = read.get("parent_locator")
    if locator is not None:
        kind, pairs = locator
        out["parent_locator"] = {"locator_type": str(kind).upper(), "entries": dict(pairs)}
    return out


def bat_summary(disk: VhdxDisk) -> dict[str, Any]:
    """Payload blocks by state, and sector bitmap blocks present (spec 2.5.1)."""
    blocks = batfmt.data_blocks(disk.virtual_size, disk.block_size)
    states = batfmt.payload_states(disk.bat, disk.chunk_ratio, blocks)
    bitmaps = batfmt.states(disk.bat[disk.chunk_ratio :: disk.chunk_ratio + 1])
    return {
        "entries": batfmt.total_entries(
            disk.virtual_size, disk.block_size, disk.logical_sector_size, disk.has_parent
        ),
        "chunk_ratio": disk.chunk_ratio,
        "blocks": blocks,
        "block_states": {s.name.lower(): int((states == s).sum()) for s in batfmt.PayloadState},
        "sector_bitmaps_present": int((bitmaps == batfmt.BitmapState.PRESENT).sum()),
    }
