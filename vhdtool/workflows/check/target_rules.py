"""Interoperability and target rules: what Azure accepts, and where readers disagree.

These work on numbers only (footer fields and the file length), never on the file.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from construct import Container

from vhdtool.disk.findings import (
    REPAIRED_BY_ALIGNMENT,
    REPAIRED_BY_CONVERSION,
    Report,
    Severity,
    Target,
    unrepaired,
)
from vhdtool.disk.partitions import Layout, generation_findings
from vhdtool.redaction import c_escaped, has_control
from vhdtool.format.vhd.footer import (
    FOOTER_SIZE,
    MAX_VHD_SIZE,
    DiskType,
    creator_text,
    geometry,
    qemu_7_2_size,
)

MiB = 1024**2
TiB = 1024**4


@dataclass(frozen=True)
class BlobLimits:
    """Smallest and largest blob (virtual size + 512-byte footer) a target takes."""

    min_mib: int  # smallest virtual size, in MiB
    maximum: int  # largest blob, in bytes
    rejection: str  # how Azure words the whole-MiB rule for this target

    @property
    def minimum(self) -> int:
        return self.min_mib * MiB + FOOTER_SIZE


LIMITS = {
    # Put Blob (REST): a page blob is at most 8 TiB, its length a multiple of 512. No smaller
    # limit is documented for a page blob; as a disk it must hold at least one whole MiB.
    Target.AZURE: BlobLimits(
        min_mib=1,
        maximum=8 * TiB,
        rejection="\"The VHD ... has an unsupported virtual size ... The size must be a whole "
        "number (in MBs).\"",
    ),
    # Managed disk direct upload (az disk create --upload-size-bytes): 20 MiB + 512 up to
    # 32 TiB + 512 bytes, the 512 being the footer.
    Target.AZURE_MANAGED_DISK: BlobLimits(
        min_mib=20,
        maximum=32 * TiB + FOOTER_SIZE,
        rejection="\"The upload size in bytes ... - 512 bytes for the VHD footer ... must be a "
        "multiple of MiB.\"",
    ),
}


def command(*words: str) -> str:
    """A shell line running `words`; a word with a control character in bash's $'...' quotes,
    so that the line stays one line."""
    return " ".join(f"$'{c_escaped(w, chr(39))}'" if has_control(w) else shlex.quote(w) for w in words)


def repairable(report: Report) -> bool:
    """The fix commands read the image through the strict reader: they are offered only when
    no structural error was found (no command repairs those, and a reader that tolerates
    them would carry the damage into the new image)."""
    return report.count(Severity.ERROR) == 0


def prepare_command(path: str, target: Target) -> str:
    """`vhdtool prepare` writes <stem>-azure.vhd: fixed, whole MiB, within the target's limits."""
    extra = ("--target", target.value) if target != Target.AZURE else ()
    return command("vhdtool", "prepare", path, *extra)


def rewrite_command(path: str, footer: Container) -> str | None:
    """`vhdtool convert --to dynamic` writes a fresh footer (creator "win ") that every reader
    sizes alike. A fixed image converted to fixed keeps its own footer: no command yet."""
    if footer.disk_type == DiskType.FIXED:
        return None
    source = Path(path)
    return command("vhdtool", "convert", path, str(source.with_name(f"{source.stem}-dynamic.vhd")), "--to", "dynamic")


def check_interop(report: Report, footer: Container) -> None:
    """Readers that would see a different disk than the footer describes."""
    size = footer.current_size
    qemu = qemu_7_2_size(footer)
    fixable = repairable(report)
    if qemu != size:
        chs = geometry(footer)
        report.add(
            "qemu.chs-size",
            f"qemu-img 7.2 reads this disk as {qemu:,} bytes (geometry {chs.cylinders}/"
            f"{chs.heads}/{chs.sectors_per_track} x 512) while the footer says {size:,}: for "
            f"creator '{creator_text(footer.creator_application)}' QEMU block/vpc.c uses "
            "the geometry, so the disk looks different in QEMU than in Hyper-V, libvhdi and Azure",
            rewrite_command(report.path, footer) if fixable else None,
            qemu_size=qemu, virtual_size=size,
        )
    if size > MAX_VHD_SIZE:
        report.add(
            "size.over-2040gib",
            f"the virtual size {size:,} bytes is over 2040 GiB ({MAX_VHD_SIZE:,} bytes), the "
            "largest VHD Hyper-V and QEMU open (QEMU vpc.c VHD_MAX_SECTORS)",
            virtual_size=size, maximum=MAX_VHD_SIZE,
        )


def check_azure(report: Report, target: Target, footer: Container, file_size: int) -> None:
    """Azure takes a fixed VHD whose virtual size is whole MiB, uploaded as a page blob of
    exactly that size plus the footer."""
    limits = LIMITS[target]
    size = footer.current_size
    fixed = footer.disk_type == DiskType.FIXED
    path = report.path
    sound = repairable(report)
    prepare = prepare_command(path, target) if sound else None
    align = command("vhdtool", "resize", "--align", path) if fixed and sound else prepare
    if footer.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING):
        kind = DiskType(footer.disk_type).name.lower()
        report.add(
            "azure.not-fixed",
            f"this is a {kind} VHD; Azure takes only fixed-format VHDs as disks (dynamic and "
            "differencing images are rejected, often only after the upload)",
            prepare,
        )
    if size % MiB:
        from vhdtool import (
            ranges,  # numpy: not needed to check a fixed image that is whole MiB
        )

        up = ranges.round_up(size, MiB)
        report.add(
            "azure.size-not-mib",
            f"the virtual size is {size:,} bytes ({size / MiB:.2f} MiB), not a whole number of "
            f"MiB; Azure refuses it: {limits.rejection} The next whole size is {up // MiB:,} MiB "
            f"({up:,} bytes)",
            align,
            virtual_size=size, aligned_size=up,
        )
    if fixed and file_size % FOOTER_SIZE:
        report.add(
            "azure.blob-length",
            f"the file is {file_size:,} bytes, not a multiple of 512: a page blob's length must "
            "be (Put Blob)",
            prepare,
            file_size=file_size,
        )
    if fixed and file_size != size + FOOTER_SIZE:
        report.add(
            "azure.file-length",
            f"the file is {file_size:,} bytes; uploaded as a page blob, a fixed VHD must be its "
            f"virtual size plus the 512-byte footer: {size:,} + 512 = {size + FOOTER_SIZE:,} bytes",
            prepare,
            file_size=file_size, expected_file_size=size + FOOTER_SIZE,
        )
    check_blob_limits(report, target, size + FOOTER_SIZE, fixable=sound)


def check_blob_limits(report: Report, target: Target, blob: int, *, fixable: bool = True) -> None:
    limits = LIMITS[target]
    where = "a page blob" if target == Target.AZURE else "a managed-disk upload"
    if blob < limits.minimum:
        report.add(
            "azure.too-small",
            f"the disk uploads as a {blob:,}-byte blob; {where} must be at least "
            f"{limits.minimum:,} bytes ({limits.min_mib} MiB + 512)",
            command("vhdtool", "resize", "--size", f"{limits.min_mib}MiB", report.path) if fixable else None,
            blob_size=blob, minimum=limits.minimum,
        )
    elif blob > limits.maximum:
        report.add(
            "azure.too-large",
            f"the disk uploads as a {blob:,}-byte blob; {where} can be at most "
            f"{limits.maximum:,} bytes",
            blob_size=blob, maximum=limits.maximum,
        )


def check_generation(report: Report, layout: Layout | None) -> None:
    """Which --hyper-v-generation the disk boots with (disk/partitions.py), or a warning."""
    if layout is None:
        return
    for finding in generation_findings(layout):
        report.add(finding.code, finding.message, finding.fix)


def disk_create(report: Report, virtual_size: int, layout: Layout | None) -> None:
    """The `az disk create --for-upload` line for the fixed VHD `vhdtool prepare` would make
    (its size rounded as prepare rounds it, + the 512-byte footer): managed-disk upload needs
    the empty disk created at exactly that size (../shared/reference/azure-managed-disks.md)."""
    from vhdtool.workflows.prepare import (
        prepared_size,  # the one rounding rule; engine imports
    )

    upload_size = prepared_size(virtual_size, Target.AZURE_MANAGED_DISK) + FOOTER_SIZE
    generation = layout.generation if layout is not None else None
    words = ["az", "disk", "create", "-g", "RG", "-n", "NAME", "--for-upload",
             "--upload-size-bytes", str(upload_size)]
    if generation:
        words += ["--hyper-v-generation", generation]
        note = f"the disk boots as Generation {generation[1]}"
    else:
        note = ("no --hyper-v-generation: the partition table does not tell the generation; add "
                "V1 (BIOS) or V2 (UEFI) as the OS in the image boots")
    line = " ".join(words)
    report.az_disk_create = {"command": line, "upload_size_bytes": upload_size, "hyper_v_generation": generation}
    report.add(
        "azure.disk-create",
        f"create the managed disk to upload into with {upload_size:,} bytes (the fixed VHD "
        f"`vhdtool prepare` makes: {upload_size - FOOTER_SIZE:,} bytes + the 512-byte footer); {note}",
        line,
        upload_size_bytes=upload_size,
    )


def check_targets(report: Report, target: Target, virtual_size: int, layout: Layout | None) -> None:
    """The rules of every image format for an Azure target: generation, and for a managed disk
    the `az disk create` line, for the image `vhdtool prepare` makes (offered only when no
    error remains that prepare does not repair)."""
    check_generation(report, layout)
    repaired = REPAIRED_BY_CONVERSION | REPAIRED_BY_ALIGNMENT | {"azure.too-small"}  # prepared_size
    if target == Target.AZURE_MANAGED_DISK and not unrepaired(report, repaired):
        disk_create(report, virtual_size, layout)
