"""Direct I/O beside the page cache: for data the cache does not hold, and for outputs.

On this kind of machine (a VM, 4 KiB pages) the page cache costs more CPU than the disk: a cold
16 GiB read through it took 21 s of system time on 2 cores against 0.9 s with O_DIRECT, and
was slower. So a read whose pages are all absent from the cache goes around it; any page
present (a warm cache, or another program's unwritten data) and the read goes through the
cache as usual, as does everything on a filesystem without O_DIRECT. Writes go direct only
when long (MIN_LENGTH): a cached write returns at once, a direct one waits for the device.

Direct I/O wants offsets, lengths and memory aligned to the device's logical block: 4 KiB
covers both 512-byte and 4K-native devices. Page residency is asked with mincore(2) on a
mapping that is never touched, so a file truncated meanwhile cannot raise SIGBUS. Since Linux
5.2 mincore says "all resident" for a file the caller neither owns nor may write (it would
leak another user's reads): such a file is always read through the cache, as before.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading

ALIGN = 4096
MIN_LENGTH = 256 * 1024  # shorter writes go through the cache, which merges them


def reopen(fd: int, flags: int) -> int | None:
    """A second descriptor of `fd`'s file with O_DIRECT and `flags` (its own open file, so
    `fd` keeps its flags), or None where the filesystem has no direct I/O. /proc/self/fd
    names our own descriptor: nothing outside can redirect it."""
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | os.O_DIRECT | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None


def address(buf: memoryview) -> int:
    """Where `buf` starts in memory (-1 for a read-only buffer, which direct I/O never gets)."""
    import ctypes  # here, not at the top: read-only commands never load it

    if buf.readonly:
        return -1
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


@functools.cache
def _libc():  # -> ctypes.CDLL | None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        return libc
    except (OSError, AttributeError):
        return None


class Reader:
    """A file's way around the page cache: its O_DIRECT descriptor (`fd`), and which of its
    pages the cache holds, asked with mincore(2) on one mapping of the file made at open and
    never touched (no access, so no SIGBUS whatever happens to the file). A mapping per
    question cost an mmap and a munmap for each 4 MiB chunk, and each munmap in a threaded
    process interrupts the other CPUs to flush their TLBs."""

    def __init__(self, fd: int, direct_fd: int, size: int):
        import ctypes

        self.fd, self.length, self.where = direct_fd, size, None
        libc = _libc()
        if libc is not None and size:
            where = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if where not in (None, ctypes.c_void_p(-1).value):
                self.where = where  # else (no address space for it): every read goes through the cache

    def close(self) -> None:
        os.close(self.fd)
        if self.where is not None:
            _libc().munmap(self.where, self.length)
            self.where = None

    def none_cached(self, offset: int, length: int) -> bool:
        """Whether no page of [offset, offset + length) of the file is in the page cache (False
        when it cannot be told: then the cache is used). The first page is asked alone first: in
        a warm cache that settles it, at a fraction of the cost of asking about 4 MiB."""
        first = min(length, mmap.PAGESIZE - offset % mmap.PAGESIZE)
        return self._none_resident(offset, first) and (first == length or self._none_resident(offset, length))

    def _none_resident(self, offset: int, length: int) -> bool:
        import ctypes

        if self.where is None or offset + length > self.length:
            return False
        length, offset = length + offset % mmap.PAGESIZE, offset - offset % mmap.PAGESIZE
        pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        flags = ctypes.create_string_buffer(pages)
        if _libc().mincore(self.where + offset, length, flags) != 0:
            return False
        return flags.raw.count(0) == pages  # bit 0: resident; the others are reserved, zero


def reader(fd: int, size: int) -> Reader | None:
    """A `Reader` for the first `size` bytes of `fd`'s file, or None where the filesystem has
    no direct I/O."""
    direct_fd = reopen(fd, os.O_RDONLY)
    return None if direct_fd is None else Reader(fd, direct_fd, size)


def in_place(offset: int, buf: memoryview) -> bool:
    """Whether `buf` can take a direct read at `offset` itself: aligned on disk and in memory."""
    return not (offset | len(buf)) % ALIGN and address(buf) % ALIGN == 0


_bounce = threading.local()
_went_around = threading.local()


def note_read(around_cache: bool) -> None:
    """Record how this thread's latest file read went (see went_around)."""
    _went_around.value = around_cache


def went_around() -> bool:
    """Whether this thread's latest file read went around the page cache. Such a read waits
    on the device, so the engine keeps many in flight; a cached one copies on a CPU, where
    more reads in flight than CPUs only evict each other's buffers from the CPU caches."""
    return getattr(_went_around, "value", False)


def bounce(length: int) -> memoryview:
    """This thread's page-aligned scratch of `length` bytes, for a direct read whose place in
    memory cannot share its disk offset's alignment (a dynamic VHD's blocks start one bitmap
    sector past a page): copying the bytes costs far less than the page cache does."""
    memory = getattr(_bounce, "memory", None)
    if memory is None or len(memory) < length:
        memory = _bounce.memory = mmap.mmap(-1, length)
    return memoryview(memory)[:length]
