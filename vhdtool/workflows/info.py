"""`vhdtool info`: every footer and header field decoded, sizes, the parent chain and the
partition table (a VHDX: workflows/info_vhdx.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from construct import Container

from vhdtool.disk.file import open_readonly, raw_by_name
from vhdtool.disk.inspect import inspect_open
from vhdtool.disk.parents import locator_paths
from vhdtool.disk.partitions import read_layout, to_dict
from vhdtool.disk.vhd_rules.structure import Inspection, refuse_unreadable
from vhdtool.errors import FormatError, NotVhdError
from vhdtool.format.vhd.footer import (
    COOKIE,
    CREATORS,
    HOST_OSES,
    build_footer,
    creator_text,
    disk_type_name,
    footer_checksum,
    geometry,
    qemu_7_2_size,
)
from vhdtool.format.vhd.header import (
    block_size_valid,
    build_header,
    header_checksum,
    locator_data_space,
    parent_name,
)
from vhdtool.format.vhd.timestamp import to_iso
from vhdtool.redaction import redact
from vhdtool.workflows.check.layout import FlatView, inspection_layout
from vhdtool.workflows.check.run import sniff_format

if TYPE_CHECKING:
    from vhdtool.azure.location import Access


def describe(path: str, *, raw: bool = False) -> dict[str, Any]:
    """Everything `info` shows, as plain JSON-able data. A damaged image shows every field
    that could be decoded plus its structural findings and exit code 1 (as qemu-img info);
    only a file that holds no VHD or VHDX at all is an error."""
    path_ = Path(path)
    fd, st = open_readonly(path_)
    if raw:
        try:
            return raw_fields(path_, fd, st)
        finally:
            os.close(fd)
    inspection = inspect_open(path_, fd, st)
    try:
        report = inspection.report
        if inspection.found is None:  # no footer: a VHDX, another format, or raw by its name
            from vhdtool.disk.sniff import READABLE, unsupported

            fmt = sniff_format(inspection)
            if fmt == "vhdx":
                from vhdtool.workflows.info_vhdx import describe_vhdx

                return describe_vhdx(path_)
            if fmt not in READABLE:
                raise unsupported(path_, fmt)
            if raw_by_name(path_):
                return raw_fields(path_, inspection.fd, st)
            refuse_unreadable(inspection)
        out = describe_file(inspection)
        if inspection.parent is not None:
            out["parent_chain"] = [describe_file(p) for p in inspection.chain()[1:]]
        layout = inspection_layout(inspection)
        if layout is not None:
            out["partitions"] = to_dict(layout)
        problems = [f.to_dict() for f in report.findings if f.code != "parent.chain"]
        if problems:
            out["findings"] = problems
        out["exit_code"] = report.exit_code
        return out
    finally:
        inspection.close()


def raw_fields(path: Path, fd: int, st: os.stat_result) -> dict[str, Any]:
    """A raw image: its sizes and partition table."""
    out = file_fields(path, "raw", st.st_size, st)
    out["partitions"] = to_dict(read_layout(FlatView(fd, st.st_size)))
    return out


def describe_blob(url: str, access: Access | None = None) -> dict[str, Any]:
    """`info` for a blob URL: its properties and footer, from two ranged GETs (first sector,
    last 512 bytes); the data in between is never read."""
    from vhdtool.azure.location import Access, BlobLocation
    from vhdtool.azure.remote import read_blob_ends
    from vhdtool.engine.digest import b64

    location = BlobLocation.from_url(url, access or Access())
    ends = read_blob_ends(location)
    where = location.redacted()
    footer = ends.footer
    if footer is None or footer.cookie != COOKIE:
        raise NotVhdError(f"not a VHD: no 'conectix' footer in the last 512 bytes of the "
                          f"{ends.info.size:,}-byte blob", where)
    if footer_checksum(ends.tail) != footer.checksum:
        raise FormatError("footer checksum mismatch: the footer is damaged", where)
    info = ends.info
    return {
        "path": where,
        "type": disk_type_name(footer.disk_type) or footer.disk_type,
        "virtual_size": footer.current_size,
        "blob_size": info.size,
        "blob_type": info.blob_type,
        "content_md5": b64(info.content_md5),
        "lease_state": info.lease_state,
        "footer": footer_fields(footer),
        "qemu_7_2_virtual_size": qemu_7_2_size(footer),
        "head_is_footer_copy": ends.head[:8] == COOKIE,
    }


def file_fields(path: Path, kind: str, virtual_size: int, st: os.stat_result) -> dict[str, Any]:
    return {
        "path": redact(str(path)),
        "type": kind,
        "virtual_size": virtual_size,
        "file_size": st.st_size,
        "allocated_on_disk": st.st_blocks * 512,  # st_blocks counts 512-byte units (POSIX)
    }


def describe_file(inspection: Inspection) -> dict[str, Any]:
    """The fields of one VHD file that its structures let us decode."""
    footer = inspection.footer
    kind = disk_type_name(footer.disk_type) or str(footer.disk_type)
    out = file_fields(inspection.path, kind, footer.current_size, inspection.stat)
    out["footer"] = footer_fields(footer)
    out["qemu_7_2_virtual_size"] = qemu_7_2_size(footer)
    header = inspection.header
    if header is not None:
        out["dynamic_header"] = header_fields(inspection)
        out["block_size"] = header.block_size
        if inspection.bat is not None and block_size_valid(header.block_size):
            from vhdtool import ranges  # numpy: dynamic and differencing images only
            from vhdtool.format.vhd.bat import UNALLOCATED

            bat = inspection.bat[: ranges.ceil_div(footer.current_size, header.block_size)]
            out["block_count"] = len(bat)
            out["allocated_blocks"] = int((bat != UNALLOCATED).sum())
    return out


def footer_fields(f: Container) -> dict[str, Any]:
    chs = geometry(f)
    return {
        "cookie": f.cookie.decode("latin-1"),
        "features": f"0x{f.features:08x}",
        "format_version": version_text(f.format_version),
        "data_offset": f.data_offset,
        "timestamp": to_iso(f.timestamp),
        "creator_application": creator_text(f.creator_application),
        "creator_name": CREATORS.get(f.creator_application, "unknown"),
        "creator_version": version_text(f.creator_version),
        "creator_host_os": HOST_OSES.get(f.creator_host_os, creator_text(f.creator_host_os)),
        "original_size": f.original_size,
        "current_size": f.current_size,
        "geometry": {
            "cylinders": chs.cylinders,
            "heads": chs.heads,
            "sectors_per_track": chs.sectors_per_track,
            "capacity": chs.capacity,
        },
        "disk_type": disk_type_name(f.disk_type) or f.disk_type,
        "checksum": f"0x{f.checksum:08x}",
        "checksum_valid": footer_checksum(build_footer(f)) == f.checksum,
        "unique_id": str(uuid.UUID(bytes=f.unique_id)),
        "saved_state": bool(f.saved_state),
    }


def header_fields(inspection: Inspection) -> dict[str, Any]:
    h = inspection.header
    paths = dict(locator_paths(inspection))
    return {
        "cookie": h.cookie.decode("latin-1"),
        "table_offset": h.table_offset,
        "header_version": version_text(h.header_version),
        "max_table_entries": h.max_table_entries,
        "block_size": h.block_size,
        "checksum": f"0x{h.checksum:08x}",
        "checksum_valid": header_checksum(build_header(h)) == h.checksum,
        "parent_unique_id": str(uuid.UUID(bytes=h.parent_unique_id)),
        "parent_timestamp": to_iso(h.parent_timestamp),
        "parent_name": parent_name(h),
        "parent_locators": [
            {
                "platform_code": creator_text(loc.platform_code),
                "data_space": locator_data_space(loc),
                "data_length": loc.platform_data_length,
                "data_offset": loc.platform_data_offset,
                "path": paths.get(loc.platform_code.decode("latin-1")),
            }
            for loc in h.parent_locators
            if loc.platform_code != b"\0\0\0\0"
        ],
    }


def version_text(v: int) -> str:
    return f"{v >> 16}.{v & 0xFFFF}"
