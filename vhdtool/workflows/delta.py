"""The pages where one disk differs from another of the same size (`upload --since OLD`).

Both disks are scanned by the engine over the union of their allocated ranges, so the two
scans cut the same chunks at the same offsets and can be walked side by side; each disk is
read once, holes of both are never read. Per 512-byte page: differs and is non-zero in NEW
(send it), differs and is zero in NEW (clear it). The sparse digests of both come from the
same pass (OLD's tells whether the blob held OLD, NEW's is recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vhdtool import ranges
from vhdtool.azure.limits import PAGE, PUT_PAGE_MAX
from vhdtool.engine.pipeline import Chunk, Source, nonzero_data, scan
from vhdtool.ranges import Range
from vhdtool.workflows.sparse_digest import SparseDigest


class Widened:
    """`source` as the engine sees it, its allocated ranges replaced by `allocated`."""

    def __init__(self, source: Source, allocated: list[Range]):
        self.source, self.ranges, self.virtual_size = source, allocated, source.virtual_size
        self.path = getattr(source, "path", None)

    def allocated(self) -> list[Range]:
        return self.ranges

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.source.readinto(offset, buf)


@dataclass
class Change:
    """One piece of the delta: `data` to write at `offset`, or None: clear `length` bytes there."""

    offset: int
    length: int
    data: memoryview | None


def changes(new: Source, old: Source, new_digest: SparseDigest, old_digest: SparseDigest) -> Iterator[Change]:
    """The delta from `old` to `new` in disk order, in pieces of at most 4 MiB (a Put Page's
    limit; the data views are reused buffers: use them before the next item)."""
    both = list(ranges.union(new.allocated(), old.allocated()))
    for a, b in zip(scan(Widened(new, both)), scan(Widened(old, both)), strict=True):
        for offset, data in nonzero_data([a], PUT_PAGE_MAX):
            new_digest.add(offset, data)
        for offset, data in nonzero_data([b], PUT_PAGE_MAX):
            old_digest.add(offset, data)
        yield from chunk_changes(a, b)


def page_flags(chunk: Chunk) -> np.ndarray:
    """Whether each page of the chunk is non-zero, from the runs the engine found."""
    flags = np.zeros(len(chunk.view) // PAGE, dtype=bool)
    for start, end in chunk.runs:
        flags[(start - chunk.offset) // PAGE : (end - chunk.offset) // PAGE] = True
    return flags


def chunk_changes(new: Chunk, old: Chunk) -> Iterator[Change]:
    pages = len(new.view) // PAGE
    a = np.frombuffer(new.view, dtype=np.uint64, count=pages * PAGE // 8).reshape(pages, -1)
    b = np.frombuffer(old.view, dtype=np.uint64, count=pages * PAGE // 8).reshape(pages, -1)
    differ = (a != b).any(axis=1)
    if not differ.any():
        return
    nonzero = page_flags(new)
    for start, end in ranges.cut(ranges.true_runs(differ & nonzero, PAGE, new.offset), PUT_PAGE_MAX):
        yield Change(start, end - start, new.view[start - new.offset : end - new.offset])
    for start, end in ranges.true_runs(differ & ~nonzero, PAGE, new.offset):
        yield Change(start, end - start, None)
