"""This machine's floor for a copy: what the disk alone takes for the bytes a copy must move.

Two commands, run as children and measured like any tool (vhdtool.workflows.bench.measure):
`read_direct` reads a file's data extents (SEEK_DATA/SEEK_HOLE: what must be read) with
O_DIRECT, sequentially, so the page cache can neither help nor be filled; `write_synced`
writes N bytes to a new file and fsyncs it (what a flushing copy must write), with O_DIRECT
too where the filesystem takes it: through the page cache the same bytes took 2-4x longer
here (taking pages from a full cache), which would make the floor no floor.
Their sum is the floor of a cold copy; a tool that overlaps reading and writing can beat it.
"""

from __future__ import annotations

import mmap
import os
import sys

from vhdtool import ranges
from vhdtool.disk import direct

BLOCK = 16 * 1024 * 1024  # several requests in flight (the block layer splits at max_sectors_kb)
ALIGN = direct.ALIGN  # O_DIRECT offsets and lengths
READ = "import sys; from vhdtool.workflows.bench.floor import read_direct; read_direct(sys.argv[1])"
WRITE = ("import sys; from vhdtool.workflows.bench.floor import write_synced; "
         "write_synced(sys.argv[1], int(sys.argv[2]))")


def read_direct(path: str, direct: bool = True) -> int:
    """Read every data extent of `path` with O_DIRECT (or, not `direct`, through the page
    cache: that warms it without reading holes); returns the bytes read."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    total = 0
    try:
        size = os.fstat(fd).st_size
        extents = ranges.align(ranges.data_extents(fd, 0, size), ALIGN, ranges.round_up(size, ALIGN))
        for start, end in ranges.cut(extents, BLOCK):
            total += os.preadv(fd, [view[: end - start]], start)
    finally:
        os.close(fd)
    return total


def write_synced(path: str, length: int) -> None:
    """Write `length` bytes (rounded up to whole 4 KiB) of non-zero data to a new file at
    `path`, directly where the filesystem takes it, and fsync it."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
    buf.write(b"\xa5" * BLOCK)
    block = memoryview(buf)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    writer = direct.reopen(fd, os.O_WRONLY)  # None where the filesystem has no direct I/O
    try:
        done, length = 0, ranges.round_up(length, ALIGN)
        while done < length:
            done += os.pwrite(fd if writer is None else writer, block[: min(BLOCK, length - done)], done)
        os.fsync(fd)
    finally:
        if writer is not None:
            os.close(writer)
        os.close(fd)


def commands(source: str, written: int, scratch: str) -> dict[str, list[str]]:
    """The two floor commands for a copy of `source` that writes `written` bytes to `scratch`."""
    return {"floor: direct read": [sys.executable, "-c", READ, source],
            "floor: write + fsync": [sys.executable, "-c", WRITE, scratch, str(written)]}
