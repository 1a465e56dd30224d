"""`vhdtool snapshot`: a point-in-time, byte-identical copy of an image file, sparse where the
source has holes or all-zero pages.

The image file is copied as a plain file (VHD or VHDX metadata included, any type): the
engine runs over `open_disk(src, raw=True)`. Point-in-time: a reflink is atomic; a copy fails, and
leaves nothing, if the source was modified while it was read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from vhdtool import ranges
from vhdtool.engine.pipeline import nonzero_data, scan
from vhdtool.errors import VhdError
from vhdtool.disk.image import Disk, FlatDisk, open_disk, require_footer
from vhdtool.disk.sniff import readable_format
from vhdtool.engine.sink import RunHandler, copy_nonzero, sparse_output


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    size: int
    data_bytes: int  # bytes written (0 when reflinked)
    reflinked: bool
    verified: bool


def default_destination(src: Path, day: date, fmt: str = "vhd") -> Path:
    return src.with_name(f"{src.stem}-snapshot-{day:%Y-%m-%d}.{fmt}")


def fingerprint(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file is written to."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def check_not_source(src: Path, dest: Path) -> None:
    if dest.exists() and dest.samefile(src):
        raise VhdError("is the source itself; choose another output", dest)


def snapshot(
    src: str | os.PathLike,
    dest: str | os.PathLike | None = None,
    *,
    verify: bool = False,
    force: bool = False,
    tap: RunHandler | None = None,
) -> SnapshotResult:
    """Copy `src` to `dest`, or next to it as <stem>-snapshot-YYYY-MM-DD[-NN].vhd; `tap` sees
    every non-zero run copied, in order (none when the copy is a reflink)."""
    src = Path(src)
    with open_disk(src, raw=True) as source:
        fmt = readable_format(src)  # a VHDX is copied as it is, like a VHD
        if fmt != "vhdx":
            require_footer(source.fd, source.file_size, src)
        target = Path(dest) if dest is not None else default_destination(src, date.today(), fmt)
        check_not_source(src, target)
        before = fingerprint(source.stat)
        with sparse_output(target, source.file_size, force=force, numbered=dest is None, origin=source.fd) as out:
            reflinked = out.reflink()
            if not reflinked:
                copy_nonzero(source, out.put, f"snapshot {source.path.name}", tap, positional=True)
                if fingerprint(os.fstat(source.fd)) != before:
                    raise VhdError("was modified while being copied; no snapshot was written", src)
            if verify:  # before the copy gets its name: a copy that fails is never published
                with FlatDisk(target, os.dup(out.fd), os.fstat(out.fd), out.size, "raw") as copy:
                    compare(source, copy)
    return SnapshotResult(out.path, source.file_size, out.written, reflinked, verify)


class Difference:
    """An engine source whose bytes are a XOR b: its non-zero runs are where they differ."""

    def __init__(self, a: Disk, b: Disk):
        self.a, self.b, self.virtual_size = a, b, a.virtual_size
        self._scratch = threading.local()  # one buffer for b's bytes per scan thread

    def allocated(self) -> Iterator[ranges.Range]:
        return ranges.union(self.a.allocated(), self.b.allocated())

    def readinto(self, offset: int, buf: memoryview) -> None:
        scratch = getattr(self._scratch, "buf", None)
        if scratch is None or len(scratch) < len(buf):
            scratch = self._scratch.buf = np.empty(len(buf), dtype=np.uint8)
        other = scratch[: len(buf)]
        self.a.readinto(offset, buf)
        self.b.readinto(offset, memoryview(other))
        mine = np.frombuffer(buf, dtype=np.uint8)
        np.bitwise_xor(mine, other, out=mine)


def compare(source: Disk, copy: Disk) -> None:
    """Re-read both (where either may hold data) and require identical bytes."""
    if source.virtual_size != copy.virtual_size:
        raise VhdError(f"verify failed: the copy has {copy.virtual_size:,} bytes, the source "
                       f"{source.virtual_size:,}; no snapshot was written", source.path)
    with closing(scan(Difference(source, copy))) as chunks:  # no reader left on closed fds
        for start, _ in nonzero_data(chunks):
            raise VhdError(f"verify failed: the copy differs in the page at offset {start:,}; "
                           "no snapshot was written", source.path)
