"""`vhdtool info`: every footer and header field decoded, plus sizes and the parent chain."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from construct import Container

from vhdtool.errors import FormatError, NotVhdError
from vhdtool.format.vhd.bat import UNALLOCATED
from vhdtool.format.vhd.footer import (
    COOKIE,
    CREATORS,
    HOST_OSES,
    build_footer,
    creator_text,
    disk_type_name,
    footer_checksum,
    geometry,
)
from vhdtool.format.vhd.header import (
    build_header,
    header_checksum,
    locator_data_space,
    parent_name,
)
from vhdtool.format.vhd.timestamp import to_iso
from vhdtool.disk.image import Disk, SparseDisk, qemu_7_2_size

if TYPE_CHECKING:
    from vhdtool.azure.location import Access


def describe(path: str, *, raw: bool = False) -> dict[str, Any]:
    """Everything `info` shows, as plain JSON-able data. A file is raw by convert's rule."""
    from vhdtool.workflows.convert import open_source

    disk, _ = open_source(path, "raw" if raw else None)
    with disk:
        out = describe_disk(disk)
        if disk.parent is not None:
            out["parent_chain"] = [describe_disk(p) for p in disk.chain()[1:]]
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


def describe_disk(disk: Disk) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": str(disk.path),
        "type": disk.kind,
        "virtual_size": disk.virtual_size,
        "file_size": disk.file_size,
        "allocated_on_disk": disk.stat.st_blocks * 512,
    }
    if disk.footer is not None:
        out["footer"] = footer_fields(disk.footer)
        out["qemu_7_2_virtual_size"] = qemu_7_2_size(disk.footer)
    if isinstance(disk, SparseDisk):
        out["dynamic_header"] = header_fields(disk)
        out["block_size"] = disk.block_size
        out["block_count"] = len(disk.bat)
        out["allocated_blocks"] = int((disk.bat != UNALLOCATED).sum())
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


def header_fields(disk: SparseDisk) -> dict[str, Any]:
    from vhdtool.disk.parents import locator_paths

    h = disk.header
    paths = dict(locator_paths(disk))
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
