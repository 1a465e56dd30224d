"""The engine against a brute-force model: the non-zero pages of the bytes, found without
reading holes, in bounded memory, across chunk boundaries, for files and every VHD type."""

from __future__ import annotations

import errno
import mmap
import os
import random
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import make_fixtures
from conftest import FIXTURES
from helpers import page_runs
from vhdtool.azure.limits import PUT_PAGE_MAX
from vhdtool.engine import pipeline as engine
from vhdtool.engine import sink
from vhdtool.engine.sink import copy_nonzero, sparse_output
from vhdtool.engine.pipeline import PAGE, nonzero_data, nonzero_runs, scan, scanned_bytes
from vhdtool.errors import VhdError
from vhdtool.disk.image import open_disk
from vhdtool.ranges import align, cut, merge, total
from vhdtool.ranges import round_up as ranges_round_up

KiB, MiB = 1024, 1024 * 1024


def write_sparse_file(path, size: int, writes: list[tuple[int, bytes]]) -> bytes:
    """A file of `size` bytes, a hole except for `writes`; returns its content."""
    content = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
            content[offset : offset + len(data)] = data
    return bytes(content)


@pytest.fixture
def mixed_file(tmp_path):
    """Holes, random data, allocated zeros, lone bytes at page edges, an odd-sized tail."""
    rng = random.Random(7)
    size = 3 * MiB + 1234
    writes = [
        (0, rng.randbytes(5000)),
        (64 * KiB, bytes(256 * KiB)),  # allocated on disk, all zero: not data
        (64 * KiB + 8192, b"\x01"),  # one byte inside the allocated zeros
        (MiB - 1, b"\x02\x03"),  # straddles a page and a 1 MiB boundary
        (MiB + 511, b"\x04"),  # last byte of a page
        (2 * MiB, rng.randbytes(300 * KiB) + bytes(100 * KiB) + rng.randbytes(1)),
        (size - 3, b"\x05"),  # inside the short last page
    ]
    path = tmp_path / "mixed.img"
    return path, write_sparse_file(path, size, writes)


@pytest.mark.parametrize("granularity", [512, 4096, 64 * KiB])
@pytest.mark.parametrize("chunk_size,workers", [(engine.CHUNK, None), (64 * KiB, 1), (64 * KiB, 3)])
def test_runs_equal_brute_force(mixed_file, granularity, chunk_size, workers):
    path, content = mixed_file
    with open_disk(path, raw=True) as disk:
        got = list(nonzero_runs(scan(disk, granularity=granularity, chunk_size=chunk_size, workers=workers)))
    assert got == page_runs(content, granularity)


@given(blocks=st.lists(st.sampled_from(["zeros", "data", "first words", "last words", "one word"]),
                       min_size=1, max_size=12),
       tail_pages=st.integers(0, 3), granularity=st.sampled_from([512, 4096, 64 * KiB]))
def test_the_zero_test_equals_the_or_of_every_page(blocks, tail_pages, granularity):
    """Every path of nonzero_pages: zero chunks, data chunks, mixed ones by block (few and
    mostly mixed blocks), and lengths that are not whole blocks."""
    words_per_page = granularity // 8
    block = np.zeros((len(blocks), engine.BLOCK // 8), dtype=np.uint64).reshape(len(blocks), -1, words_per_page)
    for i, kind in enumerate(blocks):
        if kind == "data":
            block[i, :, 0] = 3
        elif kind == "first words":
            block[i, ::2, 0] = 1
        elif kind == "last words":
            block[i, 1::3, -1] = 1 << 63
        elif kind == "one word":
            block[i, -1, words_per_page // 2] = 5
    words = np.concatenate([block.ravel(), np.full(tail_pages * words_per_page, 9, dtype=np.uint64)])
    pages = words.reshape(-1, words_per_page)
    scratch = np.empty(len(pages), dtype=np.uint64)
    expected = [bool(page.any()) for page in pages]
    assert engine.nonzero_pages(words, granularity, scratch).tolist() == expected


def test_data_views_hold_the_bytes_and_respect_max_length(mixed_file):
    path, content = mixed_file
    seen = []
    with open_disk(path, raw=True) as disk:
        for offset, data in nonzero_data(scan(disk, chunk_size=256 * KiB), max_length=64 * KiB):
            assert bytes(data) == content[offset : offset + len(data)]  # before the next item
            assert offset % PAGE == 0 and offset // (64 * KiB) == (offset + len(data) - 1) // (64 * KiB)
            seen.append((offset, offset + len(data)))
    assert list(merge(seen)) == page_runs(content)


class Recording:
    """An engine source around a disk that records every read."""

    def __init__(self, disk):
        self.disk, self.virtual_size, self.path = disk, disk.virtual_size, disk.path
        self.reads: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def allocated(self):
        return self.disk.allocated()

    def readinto(self, offset, buf):
        with self.lock:
            self.reads.append((offset, offset + len(buf)))
        self.disk.readinto(offset, buf)


def test_holes_are_never_read(tmp_path):
    size = 1024 * MiB  # a 1 GiB sparse file with two 4 KiB blocks of data
    path = tmp_path / "holes.img"
    content_pages = [(300 * MiB, b"a" * 4096), (900 * MiB + 8192, b"b" * 4096)]
    write_sparse_file(path, size, content_pages)
    with open_disk(path, raw=True) as disk:
        source = Recording(disk)
        runs = list(nonzero_runs(scan(source)))
    assert runs == [(o, o + 4096) for o, _ in content_pages]
    assert sorted(source.reads) == runs  # exactly the data, nothing else


def test_dynamic_image_skips_zero_sectors_inside_allocated_blocks(tmp_path):
    from vhdtool.disk.writer import SparseImageWriter

    rng = random.Random(3)
    size = 8 * MiB
    path = tmp_path / "dyn.vhd"
    writes = [(0, rng.randbytes(4096)), (4096, bytes(MiB)), (3 * MiB, rng.randbytes(512)),
              (5 * MiB, bytes(512 * KiB) + b"\x09" + bytes(511))]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        writer = SparseImageWriter(fd, size)
        for offset, data in writes:
            writer.write(offset, data)
        writer.finish()
    finally:
        os.close(fd)
    with open_disk(path) as disk:
        content = disk.read(0, size)
        got = list(nonzero_runs(scan(disk)))
        assert got == page_runs(content)
        assert got == [(0, 4096), (3 * MiB, 3 * MiB + 512), (5 * MiB + 512 * KiB, 5 * MiB + 512 * KiB + 512)]


@pytest.mark.parametrize("name", ["chain-base.vhd", "chain-child1.vhd", "chain-child2.vhd"])
def test_differencing_chain_runs_equal_the_expected_content(name):
    expected = make_fixtures.chain_expected()[name]
    with open_disk(FIXTURES / name) as disk:
        assert list(nonzero_runs(scan(disk))) == page_runs(expected)


def test_memory_is_a_fixed_pool_of_buffers(tmp_path, monkeypatch):
    """However many chunks, the engine allocates 2 * workers + 1 buffers."""
    made = []
    real = engine._Buffer
    monkeypatch.setattr(engine, "_Buffer", lambda *a: made.append(1) or real(*a))
    path = tmp_path / "dense.img"
    content = write_sparse_file(path, 4 * MiB, [(0, random.Random(1).randbytes(4 * MiB))])
    with open_disk(path, raw=True) as disk:
        got = list(nonzero_runs(scan(disk, chunk_size=16 * KiB, workers=2)))  # 256 chunks
    assert got == [(0, len(content))]
    assert len(made) == 5


def test_progress_counts_every_byte_read(mixed_file):
    path, _ = mixed_file
    done = []
    with open_disk(path, raw=True) as disk:
        list(nonzero_runs(scan(disk, progress=done.append)))
        expected = total(align(disk.allocated(), PAGE, disk.virtual_size))
        assert sum(done) == scanned_bytes(disk) == expected > 0


def test_stopping_early_leaves_no_threads(mixed_file):
    path, _ = mixed_file
    before = threading.active_count()
    with open_disk(path, raw=True) as disk:
        chunks = scan(disk, chunk_size=64 * KiB, workers=3)
        next(chunks)
        chunks.close()
    assert threading.active_count() == before


def test_read_errors_name_the_source(mixed_file):
    path, _ = mixed_file

    class Failing(Recording):
        def readinto(self, offset, buf):
            raise OSError(5, "Input/output error")

    with open_disk(path, raw=True) as disk:
        with pytest.raises(VhdError, match=rf"{path.name}: cannot read .* Input/output error"):
            list(scan(Failing(disk)))


def test_granularity_must_be_whole_pages(mixed_file):
    path, _ = mixed_file
    with open_disk(path, raw=True) as disk:
        for bad in (0, 1000, 256):
            with pytest.raises(VhdError, match="multiple of 512"):
                list(scan(disk, granularity=bad))


def test_put_page_pieces(tmp_path):
    """nonzero_data cuts a long run into pieces of at most 4 MiB (Azure's Put Page limit)."""
    path = tmp_path / "long.img"
    content = write_sparse_file(path, 12 * MiB, [(MiB, b"\xff" * (9 * MiB))])
    with open_disk(path, raw=True) as disk:
        pieces = [(o, len(d)) for o, d in nonzero_data(scan(disk), PUT_PAGE_MAX)]
    assert pieces == [(o, e - o) for o, e in cut([(MiB, 10 * MiB)], 4 * MiB)]
    assert max(n for _, n in pieces) <= PUT_PAGE_MAX and content[MiB] == 0xFF



def test_positional_copy_writes_on_writer_threads_exact_bytes_and_keeps_holes(tmp_path):
    """copy_nonzero(positional=True): SparseFile.put runs on the engine's writer threads (off
    the consumer and the scanning threads, several in flight), and the output is
    byte-identical with its holes kept."""
    src = tmp_path / "src.img"
    rng = random.Random(3)
    content = write_sparse_file(src, 64 * MiB, [(o * MiB, rng.randbytes(300 * KiB)) for o in range(0, 64, 5)]
                                + [(42 * MiB, bytes(2 * MiB))])  # allocated zeros: must not be written
    threads, real_put = set(), sink.SparseFile.put

    def recording_put(self, offset, data):
        threads.add(threading.current_thread().name)
        real_put(self, offset, data)

    dest = tmp_path / "out.img"
    with open_disk(src, raw=True) as disk, sparse_output(dest, disk.virtual_size) as out:
        out.put = recording_put.__get__(out)
        written = copy_nonzero(disk, out.put, "test", positional=True)
    assert dest.read_bytes() == content
    assert written == out.written == 13 * 300 * KiB
    assert dest.stat().st_blocks * 512 < 8 * MiB  # 3.8 MiB of data: the rest stayed holes
    assert threads and all(name.startswith("vhdtool-write") for name in threads)


def test_in_order_sinks_get_runs_in_order_on_the_consumer(mixed_file):
    """A put that is not positional (the dynamic writer's) sees runs in increasing offsets."""
    path, content = mixed_file
    seen = []

    def put(offset, data):
        assert threading.current_thread() is threading.main_thread()
        seen.append((offset, bytes(data)))

    with open_disk(path, raw=True) as disk:
        copy_nonzero(disk, put, "test")
    assert [o for o, _ in seen] == sorted(o for o, _ in seen)
    assert all(content[o : o + len(d)] == d for o, d in seen)
    assert list(merge((o, o + len(d)) for o, d in seen)) == page_runs(content)


def test_output_is_durable_before_it_gets_its_name(tmp_path, monkeypatch):
    """fsync of the data comes before the link that publishes it (no name for a file whose
    data a crash could lose)."""
    src = tmp_path / "src.img"
    write_sparse_file(src, 8 * MiB, [(MiB, b"\x07" * 3 * MiB)])
    events = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd))
    monkeypatch.setattr(os, "link", lambda *a, **k: events.append(("link", None)) or real_link(*a, **k))
    dest = tmp_path / "out.img"
    with open_disk(src, raw=True) as disk, sparse_output(dest, disk.virtual_size) as out:
        copy_nonzero(disk, out.put, "test", positional=True)
        assert not dest.exists()
    assert events.index(("fsync", 8 * MiB)) < events.index(("link", None))
    assert dest.read_bytes() == src.read_bytes()


def test_four_scan_threads_per_cpu(monkeypatch):
    """Threads mostly wait on reads (cold cache) and direct writes: four per CPU, at most 8."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert engine.default_workers() == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert engine.default_workers() == engine.MAX_WORKERS == 8


def direct_copy(tmp_path, monkeypatch, writes, size, *, chunk_size=engine.CHUNK):
    """copy_nonzero into a sparse output, recording each direct and cached write as (fd kind,
    offset, length, memory address); returns (source content, output bytes, the writes)."""
    import ctypes

    tmp_path = tmp_path / f"chunk-{chunk_size}"
    tmp_path.mkdir()
    src = tmp_path / "src.img"
    content = write_sparse_file(src, size, writes)
    seen = []
    real_direct, real_cached = sink.SparseFile._write_direct, sink.SparseFile._write_cached

    def spy(kind, real):
        def write(self, offset, data):
            if data:
                address = ctypes.addressof(ctypes.c_char.from_buffer(data))
                seen.append((kind, offset, len(data), address))
            return real(self, offset, data)
        return write

    monkeypatch.setattr(sink.SparseFile, "_write_direct", spy("direct", real_direct))
    monkeypatch.setattr(sink.SparseFile, "_write_cached", spy("cached", real_cached))
    dest = tmp_path / "out.img"
    with open_disk(src, raw=True) as disk, sparse_output(dest, size) as out:
        monkeypatch.setattr(sink, "scan", lambda *a, **k: engine.scan(*a, chunk_size=chunk_size, **k))
        copy_nonzero(disk, out.put, "test", positional=True)
    return content, dest.read_bytes(), seen


def test_long_runs_go_direct_in_whole_pages_never_sharing_a_page_with_cached_writes(tmp_path, monkeypatch):
    """Direct writes are page-aligned on disk and in memory, long runs only; their edges and
    short runs go through the cache; no 4 KiB page is written both ways (coherence); bytes
    exact. Chunks of 192 KiB + 512 put chunk edges off the page grid too."""
    rng = random.Random(11)
    size = 24 * MiB + 1536
    writes = [(rng.randrange(0, size - 2 * MiB) // 512 * 512 + rng.choice([0, 512, 3584]),
               rng.randbytes(rng.choice([300 * KiB + 512, 700 * KiB, 2 * MiB - 512, 1000])))
              for _ in range(12)] + [(size - 600 * KiB, rng.randbytes(600 * KiB))]
    for chunk_size in (engine.CHUNK, 3 * MiB + 512):
        content, out, seen = direct_copy(tmp_path, monkeypatch, writes, size, chunk_size=chunk_size)
        assert out == content
        direct = [(o, n, a) for kind, o, n, a in seen if kind == "direct"]
        assert direct, "no run went direct"
        assert all(o % 4096 == n % 4096 == a % 4096 == 0 and n >= sink.direct.MIN_LENGTH for o, n, a in direct)
        direct_pages = {p for o, n, _ in direct for p in range(o // 4096, (o + n) // 4096)}
        cached_pages = {p for kind, o, n, _ in seen if kind == "cached" for p in range(o // 4096, (o + n - 1) // 4096 + 1)}
        assert not direct_pages & cached_pages


def test_a_filesystem_refusing_direct_writes_gets_cached_ones(tmp_path, monkeypatch):
    """EINVAL from a direct write (alignment this device does not take, a filesystem that
    accepts O_DIRECT at open only): that run and all later ones go through the cache."""
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if fcntl_flags(fd) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    writes = [(o * MiB, random.Random(o).randbytes(MiB)) for o in (1, 5, 9)]
    content, out, seen = direct_copy(tmp_path, monkeypatch, writes, 12 * MiB)
    assert out == content
    assert len(refused) == 1  # the first one; then no more attempts


def test_no_direct_io_at_all_still_copies(tmp_path, monkeypatch):
    """A filesystem where open(O_DIRECT) fails (tmpfs before Linux 6.6): cached writes only."""
    monkeypatch.setattr(sink.direct, "reopen", lambda fd, flags: None)
    writes = [(o * MiB, random.Random(o).randbytes(MiB)) for o in (0, 3)]
    content, out, seen = direct_copy(tmp_path, monkeypatch, writes, 6 * MiB)
    assert out == content and {kind for kind, *_ in seen} == {"cached"}


def fcntl_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_aligned_middle_needs_the_memory_aligned_too():
    """The whole-page part of a run, on disk and in memory; memory off the page grid (a
    caller's own buffer) or a short run: nothing goes direct."""
    import mmap

    memory = memoryview(mmap.mmap(-1, 4 * MiB))
    assert sink.aligned_middle(8192, memory[: 2 * MiB]) == (0, 2 * MiB)
    assert sink.aligned_middle(8192 + 512, memory[512 : 2 * MiB]) == (3584, 2 * MiB - 512)
    assert sink.aligned_middle(8192, memory[512 : 2 * MiB]) == (0, 0)  # disk aligned, memory not
    assert sink.aligned_middle(0, memory[: sink.direct.MIN_LENGTH - 4096]) == (0, 0)
    # a filesystem block larger than a page (bigalloc, 64 KiB XFS): whole blocks only
    assert sink.aligned_middle(8192, memory[8192 : 2 * MiB], 65536) == (65536 - 8192, 2 * MiB - 8192)


def test_a_buffer_is_reused_only_once_its_runs_are_written(mixed_file):
    """Slow writes (a put that waits before it looks at its bytes) still see the bytes of
    their own chunk: the engine reads nothing into a buffer whose runs are being written."""
    import time

    path, content = mixed_file
    seen = {}

    def slow_put(offset, data):
        time.sleep(0.002)
        seen[offset] = bytes(data)

    with open_disk(path, raw=True) as disk:
        for _ in scan(disk, chunk_size=16 * KiB, workers=2, put=slow_put):
            pass
    assert all(content[o : o + len(d)] == d for o, d in seen.items())
    assert list(merge((o, o + len(d)) for o, d in sorted(seen.items()))) == page_runs(content)


def test_a_failed_write_reaches_the_consumer(mixed_file):
    """ENOSPC in a writer thread: the scan raises it, and no thread is left behind."""
    path, _ = mixed_file

    def full(offset, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with open_disk(path, raw=True) as disk, pytest.raises(OSError, match="No space"):
        for _ in scan(disk, chunk_size=16 * KiB, workers=2, put=full):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("vhdtool-")]


def drop_from_cache(path) -> None:
    """Evict the file's pages from the page cache (clean pages: no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def scanned(path) -> dict[int, bytes]:
    with open_disk(path, raw=path.suffix == ".img") as disk:
        return {o: bytes(d) for o, d in nonzero_data(scan(disk, workers=3))}


@pytest.mark.parametrize("kind", ["raw", "dynamic", "vhdx"])
def test_pages_the_cache_does_not_hold_are_read_around_it_with_the_same_bytes(tmp_path, monkeypatch, kind):
    """A cold file is read with O_DIRECT (no page-cache CPU), a cached part through the cache:
    the same runs and bytes either way, for a raw file, a dynamic VHD's blocks (one bitmap
    sector off the page grid: through a bounce buffer) and a VHDX's payload blocks."""
    import subprocess

    import make_vhdx_fixtures as mk
    from vhdtool.disk import direct, image

    if kind in ("raw", "dynamic"):
        path = tmp_path / "disk.img"
        rng = random.Random(5)
        write_sparse_file(path, 40 * MiB, [(o * MiB + 4096, rng.randbytes(2 * MiB)) for o in range(0, 36, 6)])
        if kind == "dynamic":
            path = tmp_path / "disk.vhd"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(tmp_path / "disk.img"), str(path)],
                           check=True)
    else:
        path = mk.qemu_vhdx(tmp_path / "disk.vhdx", "40M", "1M",
                            [f"write -P 0x{n + 1:02x} {n * 6 * MiB + 4096} {2 * MiB}" for n in range(6)])
    warm = scanned(path)
    direct_reads = []
    real = image._read_direct
    monkeypatch.setattr(image, "_read_direct", lambda fd, buf, offset: direct_reads.append(len(buf)) or real(fd, buf, offset))
    drop_from_cache(path)
    assert scanned(path) == warm
    assert sum(direct_reads) >= 10 * MiB  # all but the short pieces where runs cross the 4 MiB grid
    drop_from_cache(path)
    fd = os.open(path, os.O_RDONLY)
    around = direct.reader(fd, path.stat().st_size)
    try:
        assert around is not None and around.none_cached(0, 4 * MiB)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead beyond
        page = mmap.PAGESIZE
        os.pread(fd, page, MiB)  # one page, not the first one asked about
        assert not around.none_cached(0, 4 * MiB) and not around.none_cached(page - 1, MiB - page + 2)
        assert around.none_cached(0, MiB) and around.none_cached(MiB + page, MiB)
        assert not around.none_cached(path.stat().st_size - page, 2 * page)  # past the end: cannot tell
        buf = memoryview(mmap.mmap(-1, MiB))
        image.preadinto(fd, buf, 2 * MiB, path.stat().st_size, around)
        assert direct.went_around()  # what the engine's lanes go by
        image.preadinto(fd, buf, MiB, path.stat().st_size, around)
        assert not direct.went_around()
        os.pread(fd, 20 * MiB, 0)  # the first half back in the cache: read through it
        assert not around.none_cached(0, 4 * MiB)
    finally:
        around.close()
        os.close(fd)
    direct_reads.clear()
    assert scanned(path) == warm
    assert 0 < sum(direct_reads) <= 6 * MiB
    assert warm and sum(map(len, warm.values())) == 6 * 2 * MiB


class Timed:
    """A source whose reads take a while and say how they went (around the page cache or
    through it), counting how many run at once on each lane's threads ("vhdtool-read":
    reads around the cache, "vhdtool-scan": reads through it)."""

    def __init__(self, around: bool, size: int = 64 * MiB):
        self.around, self.virtual_size = around, size
        self.lock = threading.Lock()
        self.running = {"vhdtool-read": 0, "vhdtool-scan": 0}
        self.most = dict(self.running)

    def allocated(self):
        return iter([(0, self.virtual_size)])

    def readinto(self, offset: int, buf: memoryview) -> None:
        import time

        from vhdtool.disk import direct

        lane = threading.current_thread().name.split("_")[0]
        with self.lock:
            self.running[lane] += 1
            self.most[lane] = max(self.most[lane], self.running[lane])
        time.sleep(0.005)
        buf[:1] = b"\x01"
        direct.note_read(self.around)
        with self.lock:
            self.running[lane] -= 1


@pytest.mark.parametrize("around", [True, False])
def test_reads_from_the_cache_keep_no_more_in_flight_than_cpus(monkeypatch, around):
    """Reads around the cache wait on the device: all the workers read at once. Reads from
    the cache copy on a CPU: more at once than CPUs would only evict each other's buffers
    from the CPU caches (a warm 16 GiB scan: 1.9-2.0 s against 1.3 s). The first reads, before
    any has said how it went, are taken as waiting on the device."""
    monkeypatch.setattr(engine, "cpus", lambda: 2)
    source = Timed(around)
    chunks = [chunk.offset for chunk in scan(source, chunk_size=MiB, workers=8)]
    assert chunks == list(range(0, 64 * MiB, MiB))
    if around:
        assert source.most == {"vhdtool-read": 8, "vhdtool-scan": 0}
    else:
        assert source.most["vhdtool-read"] == 8 and source.most["vhdtool-scan"] == 2


def test_each_bitmap_is_read_once_per_scan(monkeypatch):
    """Several scanning threads on a dynamic VHD share the kept bitmaps: read around the
    page cache, each re-read would be a trip to the disk."""
    from collections import Counter

    from vhdtool.disk import image

    reads: Counter[int] = Counter()
    real = image.SparseDisk._read_bitmap
    monkeypatch.setattr(image.SparseDisk, "_read_bitmap", lambda self, block: reads.update([block]) or real(self, block))
    with open_disk(FIXTURES / "qemu-dynamic-20m.vhd") as disk:
        chunks = list(nonzero_runs(scan(disk, chunk_size=64 * KiB, workers=4)))
    assert chunks and reads and max(reads.values()) == 1


def test_blocks_whose_data_is_all_holes_are_not_read(tmp_path, monkeypatch):
    """A crafted dynamic VHD: every BAT entry allocated, bitmaps and data in file holes
    (millions of such blocks took minutes, one bitmap read each): nothing to read."""
    from vhdtool.disk import image
    from vhdtool.workflows.create import create
    from vhdtool.format.vhd.footer import DiskType

    path = tmp_path / "holes.vhd"
    create(path, 64 * MiB, DiskType.DYNAMIC, block_size=512 * KiB)
    with open_disk(path) as disk:
        table, entries, footer = disk.header.table_offset, len(disk.bat), path.read_bytes()[-512:]
    data = ranges_round_up(table + 4 * entries, 512)
    span = (512 * KiB + 512) // 512
    with open(path, "r+b") as f:
        f.seek(table)
        f.write(b"".join((data // 512 + i * span).to_bytes(4, "big") for i in range(entries)))
        f.truncate(data)  # the old footer goes: the blocks start where it was
        f.truncate(data + entries * span * 512)
        f.seek(0, os.SEEK_END)
        f.write(footer)
    reads = []
    real = image.SparseDisk._read_bitmap
    monkeypatch.setattr(image.SparseDisk, "_read_bitmap", lambda self, block: reads.append(block) or real(self, block))
    with open_disk(path) as disk:
        assert total(disk.allocated()) < 2 * 4096  # what shares a filesystem block with the BAT or the footer
        assert reads == []  # the plan reads no bitmap
        assert list(nonzero_runs(scan(disk))) == []
        assert sorted(reads) == [0, entries - 1]  # their bitmaps, all clear: no data read
        assert disk.read(0, MiB) == bytes(MiB)  # still readable: the holes read as zeros
