"""Find and open the parent of a differencing image.

Candidates, in order: the W2ku locator (absolute Windows path), W2ru (relative, ".\\x.vhd"),
MacX (file:// URL), then the header's parent name next to the child (blktap stores a
basename; Windows stores a full path, of which the basename is tried). The first candidate
that exists and whose footer UUID equals the child header's parent UUID wins (libvhd and
libvhdi insist on that match; a stale parent silently gives wrong data).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote, urlparse

from vhdtool.disk.file import open_readonly
from vhdtool.disk.vhd_rules.structure import Inspection, inspect_file, refuse_unreadable
from vhdtool.errors import FormatError, VhdError
from vhdtool.format.vhd.footer import DiskType
from vhdtool.format.vhd.header import (
    MACX,
    W2KU,
    W2RU,
    decode_locator,
    locator_data_space,
    parent_name,
)

MAX_CHAIN_DEPTH = 64  # a longer chain is treated as a cycle
MAX_LOCATOR_BYTES = 64 * 1024  # a path; anything larger is a damaged locator
LOCATOR_ORDER = (W2KU, W2RU, MACX)


class ParentNotFound(FormatError):
    """No file named by the locators or the parent name exists."""


class ParentMismatch(FormatError):
    """A candidate parent exists but its UUID is not the one the child was made from."""


class ParentCycle(FormatError):
    """The chain loops back on itself (or is implausibly deep)."""


def locator_paths(child: Inspection) -> list[tuple[str, str]]:
    """(source, path text) of every readable locator, in the order they are tried."""
    found = []
    header = child.header
    for code in LOCATOR_ORDER:
        for loc in header.parent_locators:
            if loc.platform_code != code:
                continue
            length = loc.platform_data_length
            if not 0 < length <= min(locator_data_space(loc), MAX_LOCATOR_BYTES):
                continue
            if loc.platform_data_offset + length > child.stat.st_size:
                continue
            data = os.pread(child.fd, length, loc.platform_data_offset)
            found.append((code.decode(), decode_locator(code, data)))
    name = parent_name(header)
    if name:
        found.append(("parent name", name))
    return found


def candidate_files(child: Path, source: str, text: str) -> list[Path]:
    """Local files a locator's text may name, relative ones resolved next to the child."""
    here = child.parent
    if source == MACX.decode():
        url = urlparse(text)
        text = unquote(url.path) if url.scheme == "file" else text
        return [here / text]  # an absolute path stays absolute under "/"
    win = PureWindowsPath(text)
    out = []
    if text.startswith("/"):
        out.append(Path(text))
    elif not win.drive and not win.root:
        out.append(here / PurePosixPath(*win.parts))  # relative: ".\\base.vhd"
    out.append(here / win.name)  # absolute Windows path: look next to the child
    return out


def is_file(path: Path) -> bool:
    """Path.is_file, false also for names the OS refuses (a damaged locator: ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False


def open_parent(child: Inspection, chain: list[Path]) -> Inspection:
    """Open the parent of `child` (recursively its own parents), verified by UUID."""
    seen = chain + [child.path.resolve()]
    if len(seen) > MAX_CHAIN_DEPTH:
        raise ParentCycle(f"differencing chain deeper than {MAX_CHAIN_DEPTH}: a cycle?", child.path)
    wanted = child.header.parent_unique_id
    mismatched: list[Path] = []
    tried: list[str] = []
    for source, text in locator_paths(child):
        tried.append(f"{source} '{text}'")  # as stored: repr would double each backslash
        for candidate in candidate_files(child.path, source, text):
            if not is_file(candidate):
                continue
            if candidate.resolve() in seen:
                raise ParentCycle(f"differencing chain has a cycle through {candidate}", child.path)
            parent = open_candidate(candidate)
            if parent.footer.unique_id != wanted:
                mismatched.append(candidate)
                parent.close()
                continue
            if parent.footer.disk_type == DiskType.DIFFERENCING:
                try:
                    parent.parent = open_parent(parent, seen)
                except BaseException:
                    parent.close()
                    raise
            return parent
    if mismatched:
        raise ParentMismatch(
            f"parent {mismatched[0]} does not match: its UUID differs from the one this "
            "differencing image was made from (the parent was replaced or modified)",
            child.path,
        )
    where = "; ".join(tried) or "no locator and no parent name"
    raise ParentNotFound(f"parent image not found (tried {where})", child.path)


def open_candidate(path: Path) -> Inspection:
    """A candidate parent whose own structure the reader accepts (its parent not yet opened)."""
    fd, st = open_readonly(path)
    parent = inspect_file(path, fd, st)
    try:
        refuse_unreadable(parent)
    except VhdError:
        parent.close()
        raise
    return parent


def check_chain(child: Inspection) -> None:
    """Resolve the parents the way the reader uses them; a failure is a finding naming the
    file it concerns. On success `child.parent` holds the open chain."""
    report = child.report
    try:
        child.parent = open_parent(child, chain=[])
    except ParentNotFound as exc:
        report.add("parent.missing", str(exc))
    except ParentMismatch as exc:
        report.add("parent.uuid-mismatch", str(exc))
    except ParentCycle as exc:
        report.add("parent.cycle", str(exc))
    except VhdError as exc:
        report.add("parent.invalid", f"the parent chain cannot be opened: {exc}")
    except OSError as exc:  # reading a locator or a candidate failed (EIO, EACCES)
        report.add("parent.invalid", f"the parent chain cannot be read: {exc.strerror or exc}")
    else:
        names = " <- ".join(str(item.path) for item in child.parent.chain())
        report.add("parent.chain", f"parent chain (UUIDs match): {child.path} <- {names}")
