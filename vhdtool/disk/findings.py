"""What `check` reports: findings with stable codes, grouped in a report with a verdict.

The structural findings are also what the reader acts on: it refuses an image with any of
CHANGES_CONTENT (the disk it would read is not the one the file describes).

Codes are part of the interface (scripts and later commands match on them): never rename one.
Each code has one fixed severity; a few mean the input cannot be checked at all (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from vhdtool.errors import EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE
from vhdtool.redaction import redact


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Target(str, Enum):
    AZURE = "azure"  # page blob holding a VM disk
    AZURE_MANAGED_DISK = "azure-managed-disk"  # direct upload to a managed disk
    GENERIC = "generic"  # structure and interoperability only


E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO  # noqa: E741 (table shorthand)

CODES: dict[str, Severity] = {
    # The file itself
    "file.missing": E,
    "file.directory": E,
    "file.not-regular": E,
    "file.unreadable": E,
    "file.read-error": E,
    "file.empty": E,
    "file.too-small": E,
    "file.length": E,
    "file.format": E,  # qcow2, VMDK, VDI: recognised, not read (disk/sniff.py)
    # Footer
    "footer.missing": E,
    "footer.cookie": E,
    "footer.checksum": E,
    "footer.features": E,
    "footer.features-unknown": E,
    "footer.temporary": I,
    "footer.version": E,
    "footer.data-offset": E,
    "footer.disk-type": E,
    "footer.timestamp-future": W,
    "footer.saved-state": W,
    "footer.saved-state-invalid": E,
    "footer.reserved": W,
    "footer.null-uuid": W,
    "footer.resized": I,
    "footer.size-unaligned": E,
    "footer.geometry": E,
    "footer.geometry-max": W,
    "footer.short": W,
    "footer.tail-missing": E,
    "footer.head-missing": E,
    "footer.copies-differ": E,
    # Fixed images
    "fixed.truncated": E,
    "fixed.extra-data": W,
    "fixed.head-cookie": W,
    # Dynamic header
    "header.cookie": E,
    "header.checksum": E,
    "header.version": E,
    "header.data-offset": E,
    "header.block-size": E,
    "header.reserved": W,
    "header.parent-fields": W,
    # Block allocation table
    "bat.offset": E,
    "bat.beyond-eof": E,
    "bat.too-small": E,
    "bat.too-large": E,
    "bat.entry-in-metadata": E,
    "bat.entry-past-eof": E,
    "bat.block-truncated": E,
    "bat.overlap": E,
    # Differencing parent
    "parent.locator": E,
    "parent.missing": E,
    "parent.uuid-mismatch": E,
    "parent.cycle": E,
    "parent.invalid": E,
    "parent.chain": I,
    # VHDX (disk/vhdx.py, vhdx_parent.py, vhdx_log.py): refusals are errors that change content
    "vhdx.not-vhdx": E,
    "vhdx.truncated": E,
    "vhdx.malformed": E,
    "vhdx.header-checksum": W,
    "vhdx.headers-invalid": E,
    "vhdx.header-version": E,
    "vhdx.log-replayed": W,
    "vhdx.log-not-replayable": E,
    "vhdx.region-checksum": W,
    "vhdx.regions-invalid": E,
    "vhdx.region-unknown": I,
    "vhdx.region-unknown-required": E,
    "vhdx.region-duplicate": E,
    "vhdx.region-alignment": E,
    "vhdx.region-past-eof": E,
    "vhdx.region-overlap": E,
    "vhdx.region-missing": E,
    "vhdx.metadata-table": E,
    "vhdx.metadata-out-of-bounds": E,
    "vhdx.metadata-unknown": I,
    "vhdx.metadata-unknown-required": E,
    "vhdx.metadata-duplicate": E,
    "vhdx.metadata-item-size": E,
    "vhdx.metadata-missing": E,
    "vhdx.block-size": E,
    "vhdx.sector-size": E,
    "vhdx.virtual-size": E,
    "vhdx.logical-sector-4k": W,
    "vhdx.bat-too-small": E,
    "vhdx.bat-state": E,
    "vhdx.bat-in-header": E,
    "vhdx.bat-past-eof": E,
    "vhdx.bat-in-region": E,
    "vhdx.bat-overlap": E,
    "vhdx.bitmap-missing": E,
    "vhdx.parent-locator": E,
    "vhdx.parent-not-found": E,
    "vhdx.parent-mismatch": E,
    "vhdx.parent-format": E,
    "vhdx.parent-cycle": E,
    # Partition table (disk/partitions.py), for azure targets
    "partitions.generation": I,
    "partitions.generation-unknown": W,
    # Interoperability and targets
    "qemu.chs-size": W,
    "qemu.small-block": W,
    "size.over-2040gib": W,
    "azure.not-vhd": E,
    "azure.not-fixed": E,
    "azure.size-not-mib": E,
    "azure.file-length": E,
    "azure.blob-length": E,
    "azure.too-small": E,
    "azure.too-large": E,
    "azure.disk-create": I,
}

# The input cannot be checked at all: not a file, unreadable, or no VHD in it.
UNUSABLE_CODES = frozenset(
    {
        "file.missing",
        "file.directory",
        "file.not-regular",
        "file.unreadable",
        "file.read-error",
        "file.empty",
        "file.too-small",
        "file.format",
        "footer.missing",
    }
)
# No VHD in the file at all: a command may then take it as a raw image (convert, prepare).
NOT_A_VHD_CODES = frozenset({"file.empty", "file.too-small", "footer.missing"})

# The disk an image reads would differ from the one its file describes (blocks cut off or
# shared, a table or header that cannot be trusted, a wrong or missing parent): every command
# that reads the virtual disk refuses the image. QEMU vpc_open refuses most of these too.
CHANGES_CONTENT = frozenset(
    {
        "file.read-error",
        "footer.cookie",
        "footer.checksum",
        "footer.disk-type",
        "footer.data-offset",
        "footer.tail-missing",
        "fixed.truncated",
        "header.cookie",
        "header.checksum",
        "header.block-size",
        "bat.offset",
        "bat.beyond-eof",
        "bat.too-small",
        "bat.too-large",
        "bat.entry-in-metadata",
        "bat.entry-past-eof",
        "bat.block-truncated",
        "bat.overlap",
        "parent.missing",
        "parent.uuid-mismatch",
        "parent.cycle",
        "parent.invalid",
    }
    # Every VHDX error is a refusal of the reader (VhdxError, disk/vhdx.py): none is read around.
) | frozenset(code for code, severity in CODES.items() if code.startswith("vhdx.") and severity == E)


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    fix: str | None = None  # the vhdtool command that fixes it, when there is one
    numbers: dict[str, int | str] = field(default_factory=dict)  # the message's numbers, for --json

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity.value, "message": self.message, "fix": self.fix,
                **self.numbers}


@dataclass
class Report:
    """Everything `check` found about one image, for one target."""

    path: str
    target: Target
    findings: list[Finding] = field(default_factory=list)
    disk_type: str | None = None  # "fixed", "dynamic", "differencing", or None if unknown
    virtual_size: int | None = None
    file_size: int | None = None
    format: str = "vhd"  # "vhd" or "vhdx"
    partitions: dict[str, Any] | None = None  # disk/partitions.py to_dict, when the disk could be read
    az_disk_create: dict[str, Any] | None = None  # target azure-managed-disk: the az disk create line

    def add(self, code: str, message: str, fix: str | None = None, **numbers: int | str) -> None:
        # paths inside messages are untrusted names too: a signed URL given as a file
        self.findings.append(Finding(code, CODES[code], redact(message), redact(fix) if fix else fix, numbers))

    @property
    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def count(self, severity: Severity) -> int:
        return sum(f.severity == severity for f in self.findings)

    def unreadable(self) -> list[str]:
        """Codes of the findings that make the virtual disk unreadable or not what the file
        describes (see CHANGES_CONTENT), in the order found."""
        return [c for c in self.codes if c in UNUSABLE_CODES or c in CHANGES_CONTENT]

    @property
    def usable(self) -> bool:
        return not any(f.code in UNUSABLE_CODES for f in self.findings)

    @property
    def exit_code(self) -> int:
        if not self.usable:
            return EXIT_UNUSABLE
        return EXIT_PROBLEMS if self.count(Severity.ERROR) else EXIT_OK

    @property
    def verdict(self) -> str:
        errors, warnings = self.count(Severity.ERROR), self.count(Severity.WARNING)
        tally = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        if not self.usable:
            return f"UNUSABLE: {self.path} cannot be checked as a VHD"
        if errors:
            return f"FAIL for target {self.target.value}: {tally}"
        return f"OK for target {self.target.value}: {tally}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target.value,
            "disk_type": self.disk_type,
            "virtual_size": self.virtual_size,
            "file_size": self.file_size,
            "format": self.format,
            "partitions": self.partitions,
            "az_disk_create": self.az_disk_create,
            "findings": [f.to_dict() for f in self.findings],
            "counts": {s.value: self.count(s) for s in Severity},
            "verdict": self.verdict,
            "exit_code": self.exit_code,
        }


# `check --target azure` errors that writing the image out as a fixed VHD repairs by itself
# (prepare, upload), and those that rounding the size up to whole MiB repairs (prepare always,
# upload with --align). Any other error is damage a conversion would carry into the new image.
REPAIRED_BY_CONVERSION = frozenset(
    {"azure.not-vhd", "azure.not-fixed", "azure.file-length", "azure.blob-length", "vhdx.logical-sector-4k"}
)
REPAIRED_BY_ALIGNMENT = frozenset({"azure.size-not-mib", "footer.size-unaligned"})


def unrepaired(report: Report, repaired: frozenset[str]) -> list[Finding]:
    """The errors in `report` that are not among `repaired`."""
    return [f for f in report.findings if f.severity == Severity.ERROR and f.code not in repaired]
