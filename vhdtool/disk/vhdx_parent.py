"""Find and open the parent of a differencing VHDX (MS-VHDX 2.6.2.6).

The parent locator names the parent three ways, tried in the order the spec gives:
relative_path (from the child's folder), volume_path (\\\\?\\Volume{GUID}\\...) and
absolute_win32_path. Windows volume GUID paths and drive letters mean nothing here, so for
those the file name is also looked for next to the child. A candidate is the parent only if
its data write GUID equals the locator's parent_linkage (or parent_linkage2, which the spec
allows while a parent's GUID is being changed): otherwise it was written after the child was
made and reading through it would give wrong data. The spec defines only VHDX parents.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from uuid import UUID

from vhdtool.disk.parents import MAX_CHAIN_DEPTH, is_file
from vhdtool.disk.sniff import sniff
from vhdtool.disk.vhdx import VhdxDisk, open_vhdx
from vhdtool.disk.vhdx_errors import VhdxError
from vhdtool.format.vhdx.metadata import VHDX_PARENT_LOCATOR_TYPE

PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


def linkage(disk: VhdxDisk) -> set[UUID]:
    """The data write GUIDs a parent may have (parent_linkage, parent_linkage2)."""
    _, pairs = disk.parent_locator
    out = set()
    for key in ("parent_linkage", "parent_linkage2"):
        if key in pairs:
            try:
                out.add(UUID(pairs[key].strip()))
            except ValueError:
                raise VhdxError(
                    "vhdx.parent-locator", f"{key} {pairs[key]!r} is not a GUID", disk.path
                ) from None
    return out


def candidates(child: Path, key: str, text: str) -> list[Path]:
    here = child.parent
    win = PureWindowsPath(text)
    out = []
    if key == "relative_path" and not win.drive and not win.root:
        out.append(here / PurePosixPath(*win.parts))  # ".\\base.vhdx"
    elif text.startswith("/"):
        out.append(Path(text))
    out.append(here / win.name)
    return out


def open_parent(child: VhdxDisk, chain: tuple[Path, ...]) -> VhdxDisk:
    if len(chain) > MAX_CHAIN_DEPTH:
        raise VhdxError(
            "vhdx.parent-cycle",
            f"differencing chain deeper than {MAX_CHAIN_DEPTH}: a cycle?",
            child.path,
        )
    if child.parent_locator is None:
        raise VhdxError(
            "vhdx.parent-locator", "differencing VHDX without a parent locator", child.path
        )
    kind, pairs = child.parent_locator
    if kind != VHDX_PARENT_LOCATOR_TYPE:
        raise VhdxError(
            "vhdx.parent-locator",
            f"unknown parent locator type {kind} (only VHDX parents are defined)",
            child.path,
        )
    wanted = linkage(child)
    if not wanted:
        raise VhdxError("vhdx.parent-locator", "parent locator has no parent_linkage", child.path)
    tried, mismatched = [], []
    for key in PATH_KEYS:
        if key not in pairs:
            continue
        tried.append(f"{key} {pairs[key]!r}")
        for candidate in candidates(child.path, key, pairs[key]):
            if not is_file(candidate):
                continue
            if candidate.resolve() in chain:
                raise VhdxError(
                    "vhdx.parent-cycle",
                    f"differencing chain has a cycle through {candidate}",
                    child.path,
                )
            if sniff(candidate) != "vhdx":
                raise VhdxError(
                    "vhdx.parent-format",
                    f"parent {candidate} is not a VHDX "
                    "(the VHDX specification defines VHDX parents only)",
                    child.path,
                )
            parent = open_vhdx(candidate, _chain=chain)
            if parent.current_header.data_write_guid in wanted:
                return parent
            mismatched.append(candidate)
            parent.close()
    if mismatched:
        raise VhdxError(
            "vhdx.parent-mismatch",
            f"parent {mismatched[0]} does not match: its data write GUID is not the parent_linkage "
            "this differencing VHDX was made from (the parent was modified or replaced)",
            child.path,
        )
    raise VhdxError(
        "vhdx.parent-not-found",
        f"parent VHDX not found (tried {'; '.join(tried) or 'no path in the locator'})",
        child.path,
    )
