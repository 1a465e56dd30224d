"""The disks given to `image capture`: parsed, checked for Azure, and checked for being in use,
all before anything is copied (a refused capture leaves nothing in the store).

Exit codes: a disk that `check --target azure` finds errors in is refused with exit 1 (as
`check` itself exits), with the `vhdtool prepare` command that fixes it; a missing or
unreadable disk, or one that is no VHD at all, is unusable input (exit 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vhdtool.errors import EXIT_PROBLEMS, UnsupportedFormatError, VhdError
from vhdtool.workflows.vmimage.names import CACHING, DATA_CACHING_DEFAULT, MAX_LUN, choice

if TYPE_CHECKING:
    from vhdtool.azure.location import BlobLocation
    from vhdtool.disk.partitions import Layout
    from vhdtool.workflows.check import Report
    from vhdtool.workflows.store import Store


class DiskRefused(VhdError):
    """A disk that fails `check --target azure`."""

    exit_code = EXIT_PROBLEMS


@dataclass(frozen=True)
class DiskSpec:
    lun: int | None  # None: the OS disk
    source: str  # a local path or a blob URL, as given
    caching: str  # ReadOnly, ReadWrite or None


def parse_data_disk(text: str) -> DiskSpec:
    """LUN=SRC[,caching=ReadOnly|ReadWrite|None]."""
    lun_text, sep, rest = text.partition("=")
    if not sep or not rest:
        raise VhdError(f"--data-disk {text!r}: expected LUN=SRC[,caching=ReadOnly|ReadWrite|None]")
    if not lun_text.strip().isdigit() or int(lun_text) > MAX_LUN:
        raise VhdError(f"--data-disk {text!r}: the LUN must be a number from 0 to {MAX_LUN}")
    source, sep, caching = rest.rpartition(",caching=")
    if not sep:
        source, caching = rest, DATA_CACHING_DEFAULT
    if not source:
        raise VhdError(f"--data-disk {text!r}: no disk after '{lun_text}='")
    return DiskSpec(int(lun_text), source, choice(caching, CACHING, "caching"))


def check_disk_set(disks: list[DiskSpec]) -> None:
    """No LUN twice, no disk twice."""
    luns: set[int] = set()
    sources: dict[str, DiskSpec] = {}
    for disk in disks:
        if disk.lun is not None:
            if disk.lun in luns:
                raise VhdError(f"LUN {disk.lun} is given twice: each data disk needs its own LUN")
            luns.add(disk.lun)
        key = disk.source if is_url(disk.source) else os.path.realpath(disk.source)
        if key in sources:
            raise VhdError("is given twice: a disk belongs to one LUN of one image", disk.source)
        sources[key] = disk


def is_url(text: str) -> bool:
    from vhdtool.azure import is_blob_url

    return is_blob_url(text)


def locate(text: str, store: Store) -> Path | BlobLocation:
    """The disk as the store reaches it: a local path, or a blob (with the store's credential
    when it lives in the store's account)."""
    if is_url(text):
        from vhdtool.azure.location import BlobLocation

        return store.resolve(BlobLocation.from_url(text))
    return store.resolve(Path(text))


def refusal(report: Report, hint: str) -> VhdError:
    """One line: the first error `check` found (and how many more), with the fix."""
    from vhdtool.workflows.check import Severity

    errors = [f for f in report.findings if f.severity == Severity.ERROR]
    first = errors[0]
    more = f" (and {len(errors) - 1} more: vhdtool check)" if len(errors) > 1 else ""
    if not report.usable:
        return VhdError(f"cannot be captured: {first.message}", report.path)
    return DiskRefused(f"fails check --target azure: {first.message} [{first.code}]{more}; {hint}", report.path)


def check_file(path: Path, os_disk: bool) -> Layout | None:
    """`check --target azure` on a local disk, opened once: refused with the `prepare` command
    if it fails; the OS disk's partition table, read from the same open disk."""
    from vhdtool.disk.image import open_disk
    from vhdtool.disk.partitions import read_layout
    from vhdtool.workflows.check import check_image, streamed_report

    try:
        disk = open_disk(path)
    except UnsupportedFormatError:  # qcow2, VMDK, VDI: the one line that says how to convert
        raise
    except VhdError:  # missing, no VHD, or damaged: check says why (this one failure reads it again)
        refuse_failed(path, check_image(path, "azure"))
        raise
    with disk:
        refuse_failed(path, streamed_report(disk, "azure"))  # a VHDX is stored as a fixed VHD
        return read_layout(disk) if os_disk else None


def refuse_failed(path: Path, report: Report) -> None:
    """Refuse the file if `report` has errors, with the command that fixes it."""
    from vhdtool.workflows.check import Severity

    errors = [f for f in report.findings if f.severity == Severity.ERROR]
    if errors:
        from vhdtool.workflows.check.target_rules import prepare_command
        from vhdtool.workflows.prepare import default_output

        if any(f.fix for f in errors):  # check offers fixes only for structurally sound images
            hint = f"fix: {prepare_command(str(path), report.target)}, then capture {default_output(path)}"
        else:
            hint = "the image is damaged: no command repairs it"
        raise refusal(report, hint)


def check_blob(location: BlobLocation) -> str | None:
    """The same Azure rules on a blob, from its properties and footer (two ranged GETs); returns
    why the blob is in use (its lease), or None."""
    from vhdtool.azure.remote import read_blob_ends
    from vhdtool.workflows.check import Report, Severity, Target
    from vhdtool.workflows.check.target_rules import check_azure
    from vhdtool.format.vhd.footer import COOKIE, footer_checksum
    from vhdtool.workflows.store.azure import lease_reason

    ends = read_blob_ends(location)
    info = ends.info
    if not info.is_page_blob:
        raise VhdError(f"cannot be captured: it is a {info.blob_type}; a VM disk is a page blob", location)
    footer = ends.footer
    if footer is None or footer.cookie != COOKIE or footer_checksum(ends.tail) != footer.checksum:
        raise VhdError("cannot be captured: no valid VHD footer in its last 512 bytes", location)
    report = Report(str(location), Target.AZURE, file_size=info.size)
    check_azure(report, Target.AZURE, footer, info.size)
    if report.count(Severity.ERROR):
        raise refusal(report, "fix: download it, run vhdtool prepare on the file, and capture the prepared file")
    return lease_reason(info.lease_state, info.lease_duration)


def check_sources(sources: list[Path | BlobLocation]) -> tuple[list[str | None], Layout | None]:
    """Refuse a disk Azure would not take; per disk, why it is in use, or None; and the OS
    disk's (the first) partition table when it is a file (read as it is checked)."""
    from vhdtool.workflows.store.writers import busy_reason, writers

    leases: list[str | None] = []
    table = None
    for n, source in enumerate(sources):
        if isinstance(source, Path):
            table = check_file(source, os_disk=n == 0) or table
            leases.append(None)
        else:
            leases.append(check_blob(source))
    busy = writers(s for s in sources if isinstance(s, Path))  # one pass over /proc for all the files
    return [busy_reason(busy.get(s)) if isinstance(s, Path) else lease for s, lease in zip(sources, leases)], table
