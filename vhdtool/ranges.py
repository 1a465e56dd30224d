"""Range math, in one place: half-open byte ranges (start, end), sorted and disjoint.

Everything that decides which bytes to read, write or send goes through these helpers,
including the page rounding (512-byte Azure pages) and the cutting into bounded pieces
(4 MiB Put Page requests, read chunks) that the engine and the sinks rely on.
"""

import bisect
import errno
import functools
import os
from collections.abc import Iterable, Iterator

import numpy as np

Range = tuple[int, int]


def ceil_div(n: int, unit: int) -> int:
    """How many `unit`s cover `n` bytes (blocks for a size, sectors for a length)."""
    return -(-n // unit)


def round_up(n: int, unit: int) -> int:
    """`n` rounded up to a multiple of `unit`."""
    return ceil_div(n, unit) * unit


def data_extents(fd: int, start: int, end: int) -> Iterator[Range]:
    """The parts of [start, end) of a file that the filesystem says hold data.

    Uses SEEK_DATA/SEEK_HOLE; a filesystem without them reports the whole range as data.
    Bytes past EOF are not data.
    """
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, min(end, os.fstat(fd).st_size)
                return
            raise
        if data >= end:
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, min(hole, end)
        pos = hole


def merge(ranges: Iterable[Range]) -> Iterator[Range]:
    """Join sorted ranges that touch or overlap; drop empty ones."""
    current: Range | None = None
    for start, end in ranges:
        if start >= end:
            continue
        if current is None:
            current = (start, end)
        elif start <= current[1]:
            current = (current[0], max(current[1], end))
        else:
            yield current
            current = (start, end)
    if current is not None:
        yield current


def union(a: Iterable[Range], b: Iterable[Range]) -> Iterator[Range]:
    """Union of two sorted range streams."""
    import heapq

    return merge(heapq.merge(a, b))


def intersect(a: Iterable[Range], b: Iterable[Range]) -> Iterator[Range]:
    """Intersection of two sorted, disjoint range streams."""
    ia, ib = iter(a), iter(b)
    ra, rb = next(ia, None), next(ib, None)
    while ra is not None and rb is not None:
        start, end = max(ra[0], rb[0]), min(ra[1], rb[1])
        if start < end:
            yield start, end
        if ra[1] <= rb[1]:
            ra = next(ia, None)
        else:
            rb = next(ib, None)


def subtract(a: Iterable[Range], b: Iterable[Range]) -> Iterator[Range]:
    """The parts of sorted, disjoint `a` outside sorted, disjoint `b`."""
    rest = list(b)
    i = 0
    for start, end in a:
        while i < len(rest) and rest[i][1] <= start:
            i += 1
        j = i
        while j < len(rest) and rest[j][0] < end:
            if rest[j][0] > start:
                yield start, rest[j][0]
            start = max(start, rest[j][1])
            j += 1
        if start < end:
            yield start, end


def clip(ranges: Iterable[Range], start: int, end: int) -> Iterator[Range]:
    for s, e in ranges:
        s, e = max(s, start), min(e, end)
        if s < e:
            yield s, e


def shift(ranges: Iterable[Range], delta: int) -> Iterator[Range]:
    for s, e in ranges:
        yield s + delta, e + delta


def total(ranges: Iterable[Range]) -> int:
    return sum(e - s for s, e in ranges)


def true_runs(flags: np.ndarray, unit: int, base: int = 0) -> list[Range]:
    """Byte ranges of the runs of True in `flags`, each flag covering `unit` bytes from `base`."""
    padded = np.concatenate(([False], flags.astype(bool, copy=False), [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(base + int(s) * unit, base + int(e) * unit) for s, e in zip(edges[::2], edges[1::2])]


def align(ranges: Iterable[Range], unit: int, limit: int) -> Iterator[Range]:
    """Widen sorted ranges outward to whole `unit`s, clipped to [0, limit), joined when they meet.

    The end of the last range stays at `limit` when `limit` is not a multiple of `unit`.
    """
    return merge((s // unit * unit, min(round_up(e, unit), limit)) for s, e in clip(ranges, 0, limit))


def cut(ranges: Iterable[Range], step: int) -> Iterator[Range]:
    """Cut ranges at every multiple of `step`: pieces never cross a step boundary, so none is
    longer than `step` and pieces of step-aligned ranges are step-aligned."""
    for s, e in ranges:
        while s < e:
            piece_end = min(e, (s // step + 1) * step)
            yield s, piece_end
            s = piece_end


class SortedRanges:
    """Sorted, disjoint ranges with lookups by bisection (never a scan of the whole list)."""

    def __init__(self, items: Iterable[Range]):
        self.items = list(items)
        self.starts = [s for s, _ in self.items]
        self.ends = [e for _, e in self.items]

    def covers(self, start: int, end: int) -> bool:
        """Whether [start, end) lies inside one of the ranges."""
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def touched(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Per range [starts[i], ends[i]), whether any of the ranges overlaps it (vectorized)."""
        after = np.searchsorted(self._end_array, starts, side="right")  # the first range ending past it
        return self._start_array[after] < ends

    @functools.cached_property
    def _end_array(self) -> np.ndarray:
        return np.asarray(self.ends, dtype=np.int64)

    @functools.cached_property
    def _start_array(self) -> np.ndarray:
        return np.append(np.asarray(self.starts, dtype=np.int64), np.iinfo(np.int64).max)  # none after the last

    def within(self, start: int, end: int) -> Iterator[Range]:
        """The parts of the ranges inside [start, end)."""
        lo, hi = bisect.bisect_right(self.ends, start), bisect.bisect_left(self.starts, end)
        return clip(self.items[lo:hi], start, end)
