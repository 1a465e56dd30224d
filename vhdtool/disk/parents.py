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

from vhdtool.errors import FormatError, VhdError
from vhdtool.format.vhd.header import (
    MACX,
    W2KU,
    W2RU,
    decode_locator,
    locator_data_space,
    parent_name,
)
from vhdtool.disk.image import MAX_CHAIN_DEPTH, Disk, SparseDisk, _open_vhd, open_readonly

MAX_LOCATOR_BYTES = 64 * 1024  # a path; anything larger is a damaged locator
LOCATOR_ORDER = (W2KU, W2RU, MACX)


class ParentNotFound(FormatError):
    """No file named by the locators or the parent name exists."""


class ParentMismatch(FormatError):
    """A candidate parent exists but its UUID is not the one the child was made from."""


class ParentCycle(FormatError):
    """The chain loops back on itself (or is implausibly deep)."""


def locator_paths(disk: SparseDisk) -> list[tuple[str, str]]:
    """(source, path text) of every readable locator, in the order they are tried."""
    found = []
    for code in LOCATOR_ORDER:
        for loc in disk.header.parent_locators:
            if loc.platform_code != code:
                continue
            length = loc.platform_data_length
            if not 0 < length <= min(locator_data_space(loc), MAX_LOCATOR_BYTES):
                continue
            if loc.platform_data_offset + length > disk.file_size:
                continue
            data = os.pread(disk.fd, length, loc.platform_data_offset)
            found.append((code.decode(), decode_locator(code, data)))
    name = parent_name(disk.header)
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


def open_parent(child: SparseDisk, chain: list[Path]) -> Disk:
    """Open the parent of `child` (recursively its own parents), verified by UUID."""
    seen = chain + [child.path.resolve()]
    if len(seen) > MAX_CHAIN_DEPTH:
        raise ParentCycle(f"differencing chain deeper than {MAX_CHAIN_DEPTH}: a cycle?", child.path)
    wanted = child.header.parent_unique_id
    mismatched: list[Path] = []
    tried: list[str] = []
    for source, text in locator_paths(child):
        tried.append(f"{source} {text!r}")
        for candidate in candidate_files(child.path, source, text):
            if not is_file(candidate):
                continue
            if candidate.resolve() in seen:
                raise ParentCycle(f"differencing chain has a cycle through {candidate}", child.path)
            parent = _open_candidate(candidate)
            if parent.footer.unique_id != wanted:
                mismatched.append(candidate)
                parent.close()
                continue
            if parent.kind == "differencing":
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


def _open_candidate(path: Path) -> Disk:
    fd, st = open_readonly(path)
    try:
        return _open_vhd(path, fd, st)
    except VhdError:
        os.close(fd)
        raise
