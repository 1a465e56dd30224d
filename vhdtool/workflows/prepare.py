"""`vhdtool prepare`: from any image to one that passes `vhdtool check --target ...`.

Convert to fixed, round the size up to a whole MiB (and to the managed-disk minimum), write a
fresh footer, all in one engine pass (see convert); then check the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vhdtool import ranges
from vhdtool.workflows.check import (
    REPAIRED_BY_ALIGNMENT,
    REPAIRED_BY_CONVERSION,
    Report,
    Target,
    check_image,
    disk_report,
    unrepaired,
)
from vhdtool.workflows.convert import open_source, write_sparse
from vhdtool.errors import VhdError
from vhdtool.disk.fixed import FixedImage

MiB = 1024 * 1024
# Azure managed-disk direct upload takes 20 MiB + 512 at the least (check's target rules).
MANAGED_DISK_MIN = 20 * MiB


@dataclass(frozen=True)
class Prepared:
    rule: str  # how the source was read (VHD, or raw and why)
    source_report: Report | None  # the source's own check (None for raw input)
    output: Path | None  # None: the source already passes and nothing was written
    old_size: int
    new_size: int
    report: Report  # the check of what the user should upload


def prepared_size(size: int, target: Target) -> int:
    size = ranges.round_up(size, MiB)
    return max(size, MANAGED_DISK_MIN) if target == Target.AZURE_MANAGED_DISK else size


def default_output(src: Path) -> Path:
    return src.with_name(f"{src.stem}-azure.vhd")


def refuse_damaged(src: Path, report: Report | None, target: Target) -> None:
    """Refuse a source with errors that conversion does not repair: the reader would carry the
    damage (a truncated block, a BAT entry past the end) into the new image as silent zeros."""
    repaired = REPAIRED_BY_CONVERSION | REPAIRED_BY_ALIGNMENT
    if target == Target.AZURE_MANAGED_DISK:
        repaired |= {"azure.too-small"}  # prepare rounds up to the managed-disk minimum
    damage = [] if report is None else unrepaired(report, repaired)
    if damage:
        first = damage[0]
        more = f" (and {len(damage) - 1} more: vhdtool check {src})" if len(damage) > 1 else ""
        raise VhdError(f"cannot be prepared: {first.message} [{first.code}]{more}", src)


def prepare(
    src: str | os.PathLike,
    dest: str | os.PathLike | None = None,
    *,
    target: Target = Target.AZURE,
    from_: str | None = None,
    force: bool = False,
) -> Prepared:
    src = Path(src)
    disk, rule = open_source(src, from_)
    with disk:
        size = prepared_size(disk.virtual_size, target)
        before = None if disk.kind == "raw" else disk_report(disk, target)
        if before is not None and before.exit_code == 0:
            if dest is None:
                return Prepared(rule, before, None, disk.virtual_size, disk.virtual_size, before)
            from vhdtool.workflows.snapshot import snapshot

            out = snapshot(src, dest, force=force).path
        else:
            refuse_damaged(src, before, target)
            fixed = FixedImage(disk, size)
            out = write_sparse(fixed, Path(dest) if dest else default_output(src), force=force,
                               label="prepare").path
    return Prepared(rule, before, out, disk.virtual_size, size, check_image(out, target))
