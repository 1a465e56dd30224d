"""`vhdtool prepare`: from any image to one that passes `vhdtool check --target ...`.

Convert to fixed, round the size up to a whole MiB (and to the target's minimum), write a
fresh footer, all in one engine pass (see convert); then check the result. An image that
already passes is left alone unless readers disagree on its size (qemu-img 7.2 sizing its
footer by CHS geometry): then it gets our footer too, which every reader sizes alike.
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
    unrepaired,
)
from vhdtool.workflows.convert import open_source, write_sparse
from vhdtool.workflows.check.target_rules import LIMITS
from vhdtool.errors import VhdError
from vhdtool.disk.fixed import FixedImage
from vhdtool.disk.image import Disk, qemu_7_2_size

MiB = 1024 * 1024


@dataclass(frozen=True)
class Prepared:
    rule: str  # how the source was read (VHD, or raw and why)
    source_report: Report | None  # the source's own check (None for raw input)
    output: Path | None  # None: the source already passes and nothing was written
    old_size: int
    new_size: int
    report: Report  # the check of what the user should upload
    note: str | None = None  # why an image that already passed was written anew


def prepared_size(size: int, target: Target) -> int:
    """Whole MiB, and at least the target's smallest disk (check's LIMITS)."""
    return max(ranges.round_up(size, MiB), LIMITS[target].min_mib * MiB)


def readers_disagree(disk: Disk) -> str | None:
    """Why readers would see different sizes in this footer (qemu-img 7.2 reading its CHS), or None."""
    if disk.footer is None or qemu_7_2_size(disk.footer) == disk.footer.current_size:
        return None
    return (f"qemu-img 7.2 read {qemu_7_2_size(disk.footer):,} bytes from the old footer's geometry, "
            f"other readers {disk.footer.current_size:,}: a fresh footer makes them agree")


def default_output(src: Path) -> Path:
    return src.with_name(f"{src.stem}-azure.vhd")


def refuse_damaged(src: Path, report: Report | None) -> None:
    """Refuse a source with errors that conversion does not repair: the reader would carry the
    damage (a truncated block, a BAT entry past the end) into the new image as silent zeros."""
    repaired = REPAIRED_BY_CONVERSION | REPAIRED_BY_ALIGNMENT | {"azure.too-small"}  # prepared_size
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
        # check reads VHD structures; a VHDX's were checked by open_vhdx, which refuses damage
        before = None if disk.kind in ("raw", "vhdx") else check_image(src, target)
        rewrite = readers_disagree(disk)
        if before is not None and before.exit_code == 0 and rewrite is None:
            if dest is None:
                return Prepared(rule, before, None, disk.virtual_size, disk.virtual_size, before)
            from vhdtool.workflows.snapshot import snapshot

            out = snapshot(src, dest, force=force).path
        else:
            refuse_damaged(src, before)
            fixed = FixedImage(disk, size, fresh_footer=rewrite is not None)
            out = write_sparse(fixed, Path(dest) if dest else default_output(src), force=force,
                               label="prepare").path
    return Prepared(rule, before, out, disk.virtual_size, size, check_image(out, target), rewrite)
