"""The sparse page-range engine: the non-zero runs of a source, without ever reading a hole.

One implementation for every command that moves image data (snapshot, map, convert, upload):

1. allocation: `source.allocated()` (SEEK_DATA/SEEK_HOLE for files, the BAT for dynamic and
   differencing images, whose reads then skip the sectors their bitmaps mark absent) decides
   what is read at all;
2. zero detection: allocated data is read chunk by chunk into a fixed pool of reused buffers
   (readinto page-aligned uint64 arrays, no copies) and numpy OR-reduces each page
   (`granularity` bytes, default 512, Azure's page size); all-zero pages are dropped;
3. range math (vhdtool.ranges): pages merged into runs, runs cut into bounded pieces.

Reading and scanning run on a few threads (os.preadv and numpy release the GIL) while the
consumer sends or hashes; chunks come back in disk order. Reads that go around the page cache
wait on the device, so many are kept in flight, on `workers` threads; reads from the cache
copy on a CPU, so they get a thread per CPU and one chunk in flight more than CPUs (a warm
16 GiB scan on 2 CPUs: 1.9-2.0 s with 17 chunks in flight on 8 threads, 1.3 s with 3 on 2:
the buffers stay in the CPU caches between copy and scan). A positional sink (a file written
with pwrite) is written on threads of its own, so reads, scans and writes overlap. Memory is
the buffer pool, 2 * workers + 1 chunks (4 MiB each by default), whatever the size of the disk.
"""

from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from vhdtool import ranges
from vhdtool.disk import direct
from vhdtool.engine import progress
from vhdtool.errors import VhdError
from vhdtool.format.sector import SECTOR
from vhdtool.ranges import Range

RunHandler = Callable[[int, memoryview], None]  # takes (offset, bytes) of a non-zero run
PAGE = SECTOR  # default zero-detection granularity: a sector (and an Azure page, also 512 bytes)
CHUNK = 4 * 1024 * 1024  # read unit
BLOCK = 64 * 1024  # the zero test's unit after the first words (see nonzero_pages)
MAX_WORKERS = 8
# Threads per core: a thread mostly waits, on its read (cold cache) or its direct write, so
# the disk needs several requests in flight per core: a cold 16 GiB scan took 7.9 s with 8
# threads on 2 cores against 8.9-12.9 s with 4 (reads from the cache have a lane of their own).
THREADS_PER_CPU = 4
# Threads that write a positional sink's runs: they sleep in the device's queue, so the
# scheduler wakes them ahead of the busy scanning threads and the queue never runs dry (run
# on those threads, a 1.6 GiB direct write went at half the speed it goes alone).
WRITERS = 4


class Source(Protocol):
    """What the engine reads: any `vhdtool.disk.image.Disk` (a plain file is `open_disk(path, raw=True)`).

    `readinto` must be safe to call from several threads at once (positional reads only).
    """

    virtual_size: int

    def allocated(self) -> Iterable[Range]: ...

    def readinto(self, offset: int, buf: memoryview) -> None: ...


class Window:
    """`source` restricted to [start, end) for the engine: same offsets, nothing outside read."""

    def __init__(self, source: Source, start: int, end: int):
        self.source, self.start, self.virtual_size = source, start, end
        self.path = getattr(source, "path", None)  # named in read errors

    def allocated(self) -> Iterator[Range]:
        return ranges.clip(self.source.allocated(), self.start, self.virtual_size)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.source.readinto(offset, buf)


@dataclass(frozen=True)
class Chunk:
    """One read unit: its bytes and the non-zero runs among them (absolute offsets).

    `view` is a reused buffer: it is valid only until the next chunk is requested.
    """

    offset: int
    view: memoryview
    runs: list[Range]

    def data(self, run: Range) -> memoryview:
        return self.view[run[0] - self.offset : run[1] - self.offset]


class _Buffer:
    """A reusable chunk buffer: uint64 words (for the scan), their bytes (for readinto), and
    scratch for the per-page OR.

    The memory is an anonymous mapping, so page-aligned, and a chunk's bytes start at the
    same offset within a memory page as the chunk within its disk page (`lead`): a run whose
    disk offset is page-aligned is page-aligned in memory too, as direct I/O needs (see
    vhdtool.engine.sink).
    """

    def __init__(self, size: int, granularity: int):
        self.memory = mmap.mmap(-1, size + mmap.PAGESIZE)
        self.words = np.frombuffer(self.memory, dtype=np.uint64)
        self.bytes = memoryview(self.memory)
        self.page_or = np.empty(size // granularity, dtype=np.uint64)

    def lead(self, offset: int) -> int:
        return offset % mmap.PAGESIZE


class Lane(NamedTuple):
    """Threads that read and scan chunks, and how many chunks they may have in flight."""

    pool: ThreadPoolExecutor
    depth: int


def check_granularity(granularity: int) -> None:
    if granularity <= 0 or granularity % PAGE:
        raise VhdError(f"granularity {granularity:,} is not a positive multiple of {PAGE} bytes")


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def default_workers() -> int:
    return max(1, min(MAX_WORKERS, THREADS_PER_CPU * cpus()))


def read_plan(source: Source, granularity: int, chunk_size: int) -> Iterator[Range]:
    """What gets read: allocated ranges widened to whole pages, cut at the chunk grid
    (so no page straddles two chunks)."""
    pages = ranges.align(source.allocated(), granularity, source.virtual_size)
    return ranges.cut(pages, chunk_size)


def scanned_bytes(source: Source, granularity: int = PAGE) -> int:
    """How many bytes `scan` will read (the total of a progress bar)."""
    return ranges.total(ranges.align(source.allocated(), granularity, source.virtual_size))


def nonzero_pages(words: np.ndarray, granularity: int, out: np.ndarray) -> np.ndarray:
    """Per page of `granularity` bytes, whether any of its words is non-zero (`out`: scratch).

    Cheap answers come first. A chunk starting with a zero word is likely all zeros, which
    one max settles (numpy's fastest whole-array test, 0.012 s/GiB in cache against 0.02 for
    count_nonzero and 0.026 for any; it releases the GIL like them). A page whose first word
    is non-zero is data, so a chunk of data is settled by one word per page. The rest goes by
    blocks of BLOCK bytes: zeros when the block's max is zero, data when each of its pages
    starts with a non-zero word; only the other blocks pay for the per-page OR. A 4 MiB chunk
    holding a 1 MiB piece takes 0.1-0.15 ms, against 0.3 ms for the OR of every page.
    """
    pages = words.reshape(-1, granularity // 8)
    if words[0] == 0 and not words.max():
        return np.zeros(len(pages), dtype=bool)
    first = pages[:, 0] != 0
    if first.all():
        return first
    per_block = BLOCK // granularity
    if BLOCK % granularity or per_block < 2 or len(pages) % per_block:  # a short tail, odd pages
        return np.bitwise_or.reduce(pages, axis=1, out=out[: len(pages)]) != 0
    flags = first.reshape(-1, per_block)  # a view: settling it settles `first`
    partial = ~flags.all(axis=1)
    mixed = partial & flags.any(axis=1)  # mixed for sure, before paying for a max
    if not mostly(mixed):
        blocks = pages.reshape(-1, per_block, pages.shape[1])
        mixed = partial & (blocks.reshape(len(blocks), -1).max(axis=1) != 0)
        if not mostly(mixed):
            flags[mixed] = np.bitwise_or.reduce(blocks[mixed], axis=2) != 0
            return first
    return np.bitwise_or.reduce(pages, axis=1, out=out[: len(pages)]) != 0  # one OR, no copy


def mostly(flags: np.ndarray) -> bool:
    return bool(np.count_nonzero(flags) * 2 > len(flags))


def _scan_chunk(source: Source, buf: _Buffer, start: int, end: int, granularity: int) -> Chunk:
    length = end - start
    padded = ranges.round_up(length, granularity)
    lead = buf.lead(start)  # a multiple of 8: chunks start on whole sectors
    view = buf.bytes[lead : lead + length]
    try:
        source.readinto(start, view)
    except OSError as exc:
        raise VhdError(f"cannot read {length:,} bytes at offset {start:,}: {exc.strerror or exc}",
                       getattr(source, "path", None)) from None
    buf.bytes[lead + length : lead + padded] = bytes(padded - length)  # past the source's end reads as zero
    flags = nonzero_pages(buf.words[lead // 8 : (lead + padded) // 8], granularity, buf.page_or)
    runs = list(ranges.clip(ranges.true_runs(flags, granularity, start), start, end))
    return Chunk(start, view, runs)


def _put_runs(put: RunHandler, chunk: Chunk) -> None:
    for run in chunk.runs:
        put(run[0], chunk.data(run))


def scan(
    source: Source,
    *,
    granularity: int = PAGE,
    chunk_size: int = CHUNK,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    put: RunHandler | None = None,
) -> Generator[Chunk, None, None]:
    """The allocated data of `source`, chunk by chunk in disk order, with its non-zero runs.

    Chunks are read and scanned ahead on `workers` threads; `progress` is called with each
    chunk's length once the consumer is done with it. `put`, for a positional sink (a file
    written with pwrite), gets every non-zero run on one of WRITERS threads of its own, out of
    order and concurrently: writes stay off the consumer and off the scanning threads, and a
    chunk's buffer is reused only once its runs are written. Every run is written when the
    iteration ends; a write's error is raised to the consumer.
    """
    check_granularity(granularity)
    chunk_size = ranges.round_up(chunk_size, granularity)
    workers = workers or default_workers()
    plan = read_plan(source, granularity, chunk_size)
    free = [_Buffer(chunk_size, granularity) for _ in range(2 * workers + 1)]
    # Where reads go, and how many are in flight (see the module docstring); until a read
    # says how they go, they are taken as waiting on the device.
    cold = Lane(ThreadPoolExecutor(workers, thread_name_prefix="vhdtool-read"), len(free))
    warm = Lane(ThreadPoolExecutor(min(workers, cpus()), thread_name_prefix="vhdtool-scan"),
                min(len(free), cpus() + 1))
    lane = cold
    pending: deque[tuple[_Buffer, Future[tuple[Chunk, bool, Future[None] | None]]]] = deque()
    writing: deque[tuple[_Buffer, Future[None]]] = deque()  # consumed, runs still being written
    writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="vhdtool-write") if put is not None else None

    def read(buf: _Buffer, start: int, end: int) -> tuple[Chunk, bool, Future[None] | None]:
        """The chunk, whether its read went around the page cache, its runs' write if any."""
        chunk = _scan_chunk(source, buf, start, end, granularity)
        if writers is None or not chunk.runs:
            return chunk, direct.went_around(), None
        assert put is not None  # writers exist for a put
        return chunk, direct.went_around(), writers.submit(_put_runs, put, chunk)

    def release(wait: bool) -> None:
        """Reuse the buffers whose runs are written; `wait`: for the oldest one at least."""
        while writing and (wait or writing[0][1].done()):
            buf, written = writing.popleft()
            written.result()
            free.append(buf)
            wait = False

    def refill() -> None:
        release(wait=False)
        while len(pending) < lane.depth:
            if not free:
                if pending or not writing:
                    return
                release(wait=True)  # nothing left to consume: the next buffer comes from a write
            piece = next(plan, None)
            if piece is None:
                return
            buf = free.pop()
            pending.append((buf, lane.pool.submit(read, buf, *piece)))

    try:
        refill()
        while pending:
            buf, future = pending.popleft()
            chunk, around, written = future.result()
            lane = cold if around else warm
            yield chunk
            if progress is not None:
                progress(len(chunk.view))
            if written is None:
                free.append(buf)
            else:
                writing.append((buf, written))
            refill()
        while writing:
            release(wait=True)
    finally:
        for each in (cold, warm):
            each.pool.shutdown(wait=True, cancel_futures=True)
        if writers is not None:
            writers.shutdown(wait=True, cancel_futures=True)


def nonzero_runs(chunks: Iterable[Chunk], max_length: int | None = None) -> Iterator[Range]:
    """Ranges only (for `map`): the runs merged across chunks, cut at `max_length` multiples."""
    runs = ranges.merge(run for chunk in chunks for run in chunk.runs)
    return ranges.cut(runs, max_length) if max_length else runs


def nonzero_data(
    chunks: Iterable[Chunk], max_length: int = CHUNK
) -> Iterator[tuple[int, memoryview]]:
    """(offset, bytes) of every non-zero run, cut at `max_length` multiples (for sinks).

    Each view points into a reused buffer: use it before asking for the next item.
    """
    for chunk in chunks:
        for run in ranges.cut(chunk.runs, max_length):
            yield run[0], chunk.data(run)


def progress_bar(
    source: Source, label: str, granularity: int = PAGE
) -> AbstractContextManager[Callable[[int], None] | None]:
    """Progress over the bytes `scan` reads: see vhdtool.engine.progress."""
    return progress.progress_bar(source, label, granularity)
