"""Footer rules: the checks vhd-util check (vhd_util_check_validate_footer), libvhdi and QEMU
make, each finding naming the stored and the expected value."""

from __future__ import annotations

from collections.abc import Callable

from construct import Container

from vhdtool.disk.findings import Report
from vhdtool.disk.file import VhdFile
from vhdtool.format.vhd.footer import (
    COOKIE,
    FEATURE_RESERVED,
    FEATURE_TEMPORARY,
    FIXED_DATA_OFFSET,
    FOOTER_SIZE,
    FORMAT_VERSION,
    DiskType,
    Footer,
    footer_checksum,
    geometry,
    parse_footer,
)
from vhdtool.format.vhd.timestamp import now, to_iso
from vhdtool.format.sector import SECTOR

# vhd-util check TIMESTAMP_MAX_SLACK: 30 minutes of clock skew (NFS servers) are tolerated.
TIMESTAMP_SLACK = 1800
KNOWN_TYPES = (DiskType.FIXED, DiskType.DYNAMIC, DiskType.DIFFERENCING)
RESERVED_OFFSET = 85  # footer offset of the reserved area


def rule_checksum(report: Report, f: Container, raw: bytes) -> None:
    computed = footer_checksum(raw)
    if computed != f.checksum:
        report.add(
            "footer.checksum",
            f"footer checksum is stored as 0x{f.checksum:08x} but the footer's bytes give "
            f"0x{computed:08x}: the footer is damaged (QEMU: Incorrect header checksum; vhd-util "
            "check refuses it too, libvhdi does not look)",
        )


def rule_features(report: Report, f: Container, raw: bytes) -> None:
    if not f.features & FEATURE_RESERVED:
        report.add(
            "footer.features",
            f"features are 0x{f.features:08x}: bit 0x2 must always be set (VHD spec; "
            "vhd-util check: invalid 'reserved' feature)",
        )
    unknown = f.features & ~(FEATURE_RESERVED | FEATURE_TEMPORARY)
    if unknown:
        report.add(
            "footer.features-unknown",
            f"features 0x{f.features:08x} include unknown bits 0x{unknown:08x}; only 0x1 "
            "(temporary) and 0x2 exist (vhd-util check: invalid extra features)",
        )
    if f.features & FEATURE_TEMPORARY:
        report.add(
            "footer.temporary",
            "features bit 0x1 (temporary) is set: the spec marks the disk as a candidate for "
            "deletion on shutdown",
        )


def rule_version(report: Report, f: Container, raw: bytes) -> None:
    if f.format_version != FORMAT_VERSION:
        report.add(
            "footer.version",
            f"file format version is 0x{f.format_version:08x}, not 0x{FORMAT_VERSION:08x} "
            "(1.0, the only version; libvhdi and vhd-util check refuse others)",
        )


def rule_type_and_offset(report: Report, f: Container, raw: bytes) -> None:
    if f.disk_type not in KNOWN_TYPES:
        report.add(
            "footer.disk-type",
            f"disk type is {f.disk_type}; only 2 (fixed), 3 (dynamic) and 4 (differencing) "
            "exist (0 is 'none', 1, 5 and 6 are reserved): QEMU (invalid VPC image) and libvhdi "
            "refuse it",
        )
    elif f.disk_type == DiskType.FIXED and f.data_offset != FIXED_DATA_OFFSET:
        report.add(
            "footer.data-offset",
            f"data offset is 0x{f.data_offset:x}; a fixed image must have all 64 bits set "
            "(0xffffffffffffffff): vhd-util check refuses it and other readers may look for "
            "a dynamic header there",
        )


def rule_timestamp(report: Report, f: Container, raw: bytes) -> None:
    current = now()
    if f.timestamp > current + TIMESTAMP_SLACK:
        report.add(
            "footer.timestamp-future",
            f"footer timestamp {to_iso(f.timestamp)} is {f.timestamp - current:,} s ahead of this "
            f"machine's clock ({to_iso(current)}); vhd-util check refuses more than "
            f"{TIMESTAMP_SLACK} s: the creating machine's clock was wrong",
        )


def rule_saved_state(report: Report, f: Container, raw: bytes) -> None:
    if f.saved_state == 1:
        report.add(
            "footer.saved-state",
            "the disk is marked as in a saved state (byte 84 is 1): the VM using it was "
            "suspended, so its file systems may be inconsistent; Virtual PC refuses to "
            "compact or expand it",
        )
    elif f.saved_state:
        report.add(
            "footer.saved-state-invalid",
            f"saved-state byte is {f.saved_state}; only 0 and 1 are valid (vhd-util check)",
        )


def rule_reserved(report: Report, f: Container, raw: bytes) -> None:
    # blktap keeps a "hidden" flag (0 or 1) in the first reserved byte (libvhd vhd_footer_t).
    reserved = f.reserved
    bad = [i for i, b in enumerate(reserved) if b and not (i == 0 and b == 1)]
    if bad:
        report.add(
            "footer.reserved",
            f"{len(bad)} of the {len(reserved)} reserved footer bytes are not zero (first at "
            f"footer offset {RESERVED_OFFSET + bad[0]}): vhd-util check refuses it, other "
            "readers ignore them",
        )


def rule_unique_id(report: Report, f: Container, raw: bytes) -> None:
    if f.unique_id == bytes(16):
        report.add(
            "footer.null-uuid",
            "the unique id is all zeros: a differencing image cannot identify this disk as "
            "its parent, and tools tracking disks by id (Hyper-V, vhd-util) treat it as unset",
        )


def rule_sizes(report: Report, f: Container, raw: bytes) -> None:
    if f.current_size % SECTOR:
        report.add(
            "footer.size-unaligned",
            f"current size {f.current_size:,} is not a multiple of 512: readers drop the last "
            f"{f.current_size % SECTOR} bytes (QEMU reads {f.current_size // SECTOR:,} sectors)",
        )
    if f.original_size != f.current_size:
        report.add(
            "footer.resized",
            f"original size {f.original_size:,} differs from current size "
            f"{f.current_size:,}: the disk was resized after creation",
        )


def rule_geometry(report: Report, f: Container, raw: bytes) -> None:
    # vhd-util check refuses a geometry describing more than the current size ("geometry
    # too large"). 65535/16/255 is the marker Windows, Disk2vhd and qemu force_size write to
    # mean "use the current size" (QEMU vpc.c): every other reader accepts it.
    chs = geometry(f)
    if chs.capacity <= f.current_size:
        return
    text = f"geometry {chs.cylinders}/{chs.heads}/{chs.sectors_per_track} (C/H/S) describes {chs.capacity:,} bytes"
    if chs.is_max:
        report.add(
            "footer.geometry-max",
            f"{text}, more than the {f.current_size:,}-byte disk: it is the marker for 'use the "
            "current size' (QEMU force_size, Windows) that every reader but vhd-util check "
            "(XenServer: geometry too large) accepts",
        )
    else:
        report.add(
            "footer.geometry",
            f"{text}, more than the {f.current_size:,}-byte disk: readers sizing by geometry "
            "(qemu-img 7.2 for most creators) read past the data (vhd-util check: geometry too large)",
        )


FooterRule = Callable[[Report, Container, bytes], None]
FOOTER_RULES: tuple[FooterRule, ...] = (
    rule_checksum,
    rule_features,
    rule_version,
    rule_type_and_offset,
    rule_timestamp,
    rule_saved_state,
    rule_reserved,
    rule_unique_id,
    rule_sizes,
    rule_geometry,
)


def check_footer(report: Report, vf: VhdFile) -> None:
    for rule in FOOTER_RULES:
        rule(report, vf.found.footer, vf.found.raw)


def differing_fields(a: bytes, b: bytes) -> list[str]:
    fa, fb = parse_footer(a), parse_footer(b)
    return [name for name in (sc.name for sc in Footer.subcons) if fa[name] != fb[name]]


def check_tail(report: Report, vf: VhdFile) -> None:
    """libvhdi, Hyper-V and Azure read the footer only from the end of the file."""
    if vf.found.source == "head":
        report.add(
            "footer.tail-missing",
            f"there is no footer at the end of the file (offset {vf.size - FOOTER_SIZE:,}); "
            "the copy at offset 0 was used. libvhdi, Hyper-V and Azure read only the end: "
            "the file was truncated or its end overwritten",
        )


def check_copies(report: Report, vf: VhdFile) -> None:
    """Dynamic and differencing images keep a footer copy at offset 0 that must equal the
    tail one: QEMU opens them through the copy, libvhdi and Hyper-V through the tail, and
    vhd-util check requires both to be byte-identical."""
    if vf.found.source == "head":
        return  # the copy is the footer in use; check_tail reported the missing tail
    head = vf.read(0, FOOTER_SIZE)
    if head[:8] != COOKIE:
        report.add(
            "footer.head-missing",
            f"the footer copy at offset 0 is missing (the first bytes are {head[:8]!r}): "
            "QEMU opens dynamic images through that copy and refuses this one; vhd-util "
            "check: backup footer invalid",
        )
    elif head != vf.found.raw:
        fields = ", ".join(differing_fields(head, vf.found.raw))
        report.add(
            "footer.copies-differ",
            f"the footer copy at offset 0 differs from the footer at the end ({fields}): "
            "QEMU reads the first, libvhdi and Hyper-V the last, so they see different disks "
            "(vhd-util check: primary and backup footers do not match)",
        )
