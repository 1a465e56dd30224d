"""Dynamic header rules (vhd-util check vhd_util_check_validate_header and
validate_differencing_header; QEMU vpc_open)."""

from __future__ import annotations

from construct import Container

from vhdtool.disk.findings import Report
from vhdtool.disk.file import VhdFile
from vhdtool.format.vhd.footer import FIXED_DATA_OFFSET, FOOTER_SIZE, DiskType
from vhdtool.format.vhd.header import (
    HEADER_COOKIE,
    HEADER_DATA_OFFSET,
    HEADER_SIZE,
    HEADER_VERSION,
    PLATFORM_NONE,
    QEMU_MIN_BLOCK_SIZE,
    block_size_valid,
    header_checksum,
    parse_header,
)



def read_header(report: Report, vf: VhdFile) -> Container | None:
    """The dynamic header at the footer's data offset, or None (with a finding) when there
    is none to check: then nothing that depends on it can be checked either."""
    offset = vf.found.footer.data_offset
    if offset == FIXED_DATA_OFFSET or offset < FOOTER_SIZE or offset + HEADER_SIZE > vf.data_end:
        report.add(
            "footer.data-offset",
            f"the footer's data offset 0x{offset:x} does not point at a {HEADER_SIZE}-byte "
            f"dynamic header between the footer copy (bytes 0-511) and the data end at "
            f"{vf.data_end:,}: header, BAT and parent cannot be checked",
        )
        return None
    raw = vf.read(offset, HEADER_SIZE)
    header = parse_header(raw)
    if header.cookie != HEADER_COOKIE:
        report.add(
            "header.cookie",
            f"there is no dynamic header at offset {offset:,}: its cookie is "
            f"{header.cookie!r}, not b'cxsparse'; BAT and parent cannot be checked",
        )
        return None
    computed = header_checksum(raw)
    if computed != header.checksum:
        report.add(
            "header.checksum",
            f"dynamic header checksum is stored as 0x{header.checksum:08x} but its bytes give "
            f"0x{computed:08x}: the header is damaged (vhd-util check refuses it; QEMU and "
            "libvhdi do not look)",
        )
    return header


def check_header(report: Report, vf: VhdFile, header: Container) -> None:
    if header.header_version != HEADER_VERSION:
        report.add(
            "header.version",
            f"dynamic header version is 0x{header.header_version:08x}, not "
            f"0x{HEADER_VERSION:08x}: libvhdi (unsupported format version) and vhd-util check "
            "refuse it",
        )
    if header.data_offset != HEADER_DATA_OFFSET:
        report.add(
            "header.data-offset",
            f"the dynamic header's data offset is 0x{header.data_offset:x}; it is unused and "
            "must have all 64 bits set (vhd-util check: invalid data offset)",
        )
    if not block_size_valid(header.block_size):
        report.add(
            "header.block-size",
            f"block size {header.block_size:,} is not a power of two from 512 to 2 GiB (QEMU: "
            "Invalid block size; vhd-util check): blocks cannot be located",
        )
    elif header.block_size < QEMU_MIN_BLOCK_SIZE:
        report.add(
            "qemu.small-block",
            f"block size {header.block_size:,} is below 4 KiB: valid, but qemu-img reads each "
            "block's bitmap sector as data, so the disk looks different in QEMU than in "
            "Hyper-V, libvhdi and vhdtool",
            block_size=header.block_size,
        )
    if header.reserved1 != bytes(4) or header.reserved2 != bytes(len(header.reserved2)):
        report.add(
            "header.reserved",
            "reserved dynamic header fields (offsets 60 and 768) are not zero: vhd-util check "
            "refuses it, other readers ignore them",
        )
    if vf.found.footer.disk_type == DiskType.DYNAMIC:
        check_no_parent(report, header)


def check_no_parent(report: Report, header: Container) -> None:
    """A dynamic (type 3) image has no parent, so its parent fields are empty (vhd-util
    check: invalid non-null parent name/locators/uuid/timestamp)."""
    used = [
        name
        for name, is_set in (
            ("parent UUID", header.parent_unique_id != bytes(16)),
            ("parent timestamp", header.parent_timestamp != 0),
            ("parent name", any(header.parent_unicode_name)),
            ("parent locators", any(loc.platform_code != PLATFORM_NONE for loc in header.parent_locators)),
        )
        if is_set
    ]
    if used:
        report.add(
            "header.parent-fields",
            f"this dynamic image has {', '.join(used)} set, which only differencing images "
            "have: was it a differencing image whose type was changed? (vhd-util check "
            "refuses it; other readers ignore the fields)",
        )
