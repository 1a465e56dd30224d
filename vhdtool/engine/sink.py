"""The sparse file sink: an atomic output created at full length as one hole, into which only
non-zero runs are written, so it allocates no more than the data plus filesystem metadata.

When the output is a byte-for-byte copy of a plain file (`origin`, same offsets), a
whole-file reflink (FICLONE: shared extents, instant, point-in-time) is tried first, and on
the same filesystem runs move with copy_file_range (no round trip through user space; a
server-side copy on NFS, shared extents on XFS and btrfs). Anything else uses pwrite.

Long runs go to disk with direct I/O (O_DIRECT on a second descriptor of the same file,
where the filesystem takes it): the engine's buffer is sent as it is, without a copy into
the page cache, without evicting the cache (on a full cache, taking pages for 1.6 GiB of
writes cost 0.3 to 3 s of system time here against 0.05 s direct), and the final fsync has
only metadata left. Only whole filesystem blocks (4 KiB at least) of a run go direct, so no
block is ever written both ways at once (the kernel keeps direct and cached writes coherent,
but not a block cached by one thread while another writes it directly); the run's edges,
short runs and everything on a filesystem without O_DIRECT take the paths above, with
writeback started every few MiB so the disk works while the copy goes on and the final fsync
finds little left to do.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from vhdtool.disk import direct
from vhdtool.engine.pipeline import RunHandler, Source, nonzero_data, progress_bar, scan
from vhdtool.engine.output import PendingOutput, atomic_file
from vhdtool.errors import VhdError

FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
# copy_file_range cannot do this pair of files (another filesystem, an old kernel...): pwrite.
COPY_UNSUPPORTED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
WRITEBACK_STEP = 32 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range():
    import ctypes  # only once something is written: keeps start-up light

    func = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return func


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk without waiting (a hint: no error if the
    platform cannot)."""
    func = _sync_file_range()
    if func is not None:
        func(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def same_filesystem(a: int, b: int) -> bool:
    return os.fstat(a).st_dev == os.fstat(b).st_dev


def aligned_middle(offset: int, data: memoryview, align: int = direct.ALIGN) -> tuple[int, int]:
    """The part of `data` (at file `offset`) made of whole `align` units, on disk and in
    memory, as (start, end) within `data`; empty when the two alignments differ or the part
    is short (the cache merges scattered small writes that would each wait for the device)."""
    start = -offset % align
    end = start + (len(data) - start) // align * align
    if end - start < direct.MIN_LENGTH or direct.address(data[start:]) % direct.ALIGN:
        return 0, 0
    return start, end


class SparseFile:
    """An output of `size` bytes that reads as zeros except where runs were put. `put` may be
    called from several threads at once (positional writes)."""

    def __init__(self, out: PendingOutput, size: int, origin: int | None = None):
        self.out, self.size, self.origin = out, size, origin
        self.copy_ranges = origin is not None and same_filesystem(origin, out.fd)
        self.written = 0  # bytes of runs put
        self._unsynced = 0
        self._lock = threading.Lock()  # guards the two counters
        os.ftruncate(out.fd, size)
        self.direct_fd = direct.reopen(out.fd, os.O_WRONLY)
        self.direct = self.direct_fd is not None  # False once the filesystem refused a direct write
        # Direct writes cover whole filesystem blocks: one that filled part of a block larger
        # than a page (ext4 bigalloc, 64 KiB XFS) could race a cached write to the rest of it.
        self.align = max(direct.ALIGN, os.fstat(out.fd).st_blksize)
        self.closed = False

    def close(self) -> None:
        """Close the direct descriptor (the output's own is its owner's); any later put fails."""
        self.closed = True
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    @property
    def fd(self) -> int:
        return self.out.fd

    @property
    def path(self) -> Path:
        """The destination; after the `sparse_output` block, the name actually taken."""
        return self.out.path

    def reflink(self) -> bool:
        """Make the whole file share `origin`'s extents, where the filesystem can (then
        nothing else needs writing)."""
        if self.origin is None:
            return False
        try:
            fcntl.ioctl(self.fd, FICLONE, self.origin)
        except OSError:
            return False
        return True

    def put(self, offset: int, data: memoryview) -> None:
        """Store one non-zero run at `offset` (`data` equals origin's bytes there, if any)."""
        if self.closed:  # a writer thread outliving its copy must not write to a reused fd
            raise VhdError("write after the output was closed", self.path)
        start, end = aligned_middle(offset, data, self.align) if self.direct else (0, 0)
        if start < end and self._write_direct(offset + start, data[start:end]):
            self._write_cached(offset, data[:start])
            self._write_cached(offset + end, data[end:])
        else:
            self._write_cached(offset, data)
        with self._lock:
            self.written += len(data)

    def _write_direct(self, offset: int, data: memoryview) -> bool:
        assert self.direct_fd is not None  # self.direct
        try:
            pwrite_all(self.direct_fd, data, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False  # this filesystem or device wants other alignments: cached from now on
            return False
        return True

    def _write_cached(self, offset: int, data: memoryview) -> None:
        if not data:
            return
        if not (self.copy_ranges and self._copy_from_origin(offset, len(data))):
            pwrite_all(self.fd, data, offset)
        with self._lock:
            self._unsynced += len(data)
            due = self._unsynced >= WRITEBACK_STEP
            if due:
                self._unsynced = 0
        if due:  # outside the lock: it may wait for the device queue, the other writers need not
            start_writeback(self.fd)

    def _copy_from_origin(self, offset: int, length: int) -> bool:
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(self.origin, self.fd, length - done, offset + done, offset + done)
                if n == 0:  # origin shorter than expected: let pwrite write what was read
                    return False
                done += n
        except OSError as exc:
            if exc.errno not in COPY_UNSUPPORTED:
                raise
            self.copy_ranges = False
            return False
        return True


@contextmanager
def sparse_output(
    dest: str | os.PathLike,
    size: int,
    *,
    force: bool = False,
    numbered: bool = False,
    origin: int | None = None,
) -> Iterator[SparseFile]:
    """A `SparseFile` that becomes `dest` atomically (see vhdtool.engine.output.atomic_file)."""
    with atomic_file(dest, force=force, numbered=numbered) as out:
        sparse = SparseFile(out, size, origin)
        try:
            yield sparse
        finally:
            sparse.close()


def copy_nonzero(source: Source, put: RunHandler, label: str, tap: RunHandler | None = None, *,
                 positional: bool = False) -> int:
    """Hand every non-zero run of `source` to `put` (a SparseFile's, a dynamic writer's), with
    a progress bar over the scan; `tap` sees each run too, in order (to hash the copy in the
    same pass). A `positional` put (SparseFile.put) runs on the engine's writer threads, out
    of order; any other gets the runs in order on this thread. Returns the bytes put."""
    written = 0
    # closing: an error here (a tap's, Ctrl-C) ends the scan, its writer threads joined, before
    # the caller closes the output they write to
    with progress_bar(source, label) as update, closing(scan(source, progress=update,
                                                             put=put if positional else None)) as chunks:
        for offset, data in nonzero_data(chunks):
            if not positional:
                put(offset, data)
            if tap is not None:
                tap(offset, data)
            written += len(data)
    return written
