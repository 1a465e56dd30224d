"""The image file itself: opened read-only, read at untrusted offsets, its footer located."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from construct import Container

from vhdtool.errors import NotVhdError, VhdError
from vhdtool.format.vhd.footer import COOKIE, FOOTER_SIZE, SHORT_FOOTER_SIZE, parse_footer

# A file with no VHD footer is read as raw only when asked, or when its name says so (as
# qemu-img's users name raw images): a damaged VHD must never be taken for raw data.
RAW_SUFFIXES = (".raw", ".img")


def raw_by_name(path: Path) -> bool:
    return path.suffix.lower() in RAW_SUFFIXES


@dataclass(frozen=True)
class FooterLocation:
    """Where the footer was found and the raw bytes of it."""

    footer: Container
    raw: bytes
    offset: int
    source: str  # "tail", "tail-511" (old Virtual PC) or "head" (dynamic copy at offset 0)


def open_readonly(path: Path) -> tuple[int, os.stat_result]:
    """Open a regular file read-only, with one-line errors for everything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VhdError("no such file", path) from None
    except OSError as exc:
        raise VhdError(exc.strerror or str(exc), path) from None
    if stat.S_ISDIR(st.st_mode):
        raise VhdError("is a directory, not a disk image", path)
    if not stat.S_ISREG(st.st_mode):
        raise VhdError("is not a regular file", path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise VhdError(exc.strerror or str(exc), path) from None
    # No readahead: the engine keeps its own reads in flight, and data the cache does not hold
    # is read around it (vhdtool.disk.direct); readahead behind a short read (a bitmap, a
    # piece cut at a chunk edge) would pull the data after it in through the cache, at the
    # cache's CPU cost. A hint: platforms without it just read.
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd, st


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Errors reading `path` as one-line VhdErrors that name it (os.pread's name no file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise VhdError(exc.strerror or str(exc), path) from None


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Read up to `length` bytes at `offset` (short only at EOF)."""
    return os.pread(fd, length, offset)


def locate_footer(fd: int, size: int) -> FooterLocation | None:
    """Find the footer the way libvhd does: EOF-512, then EOF-511, then the copy at 0."""
    candidates = []
    if size >= FOOTER_SIZE:
        candidates.append((size - FOOTER_SIZE, FOOTER_SIZE, "tail"))
    if size >= SHORT_FOOTER_SIZE:
        # Virtual PC before 2004 wrote a 511-byte footer (libvhd vhd_read_short_footer).
        candidates.append((size - SHORT_FOOTER_SIZE, SHORT_FOOTER_SIZE, "tail-511"))
    if size >= FOOTER_SIZE:
        # Dynamic and differencing images keep a copy at offset 0; libvhd falls back to it.
        candidates.append((0, FOOTER_SIZE, "head"))
    for offset, length, source in candidates:
        raw = pread_exact(fd, length, offset)
        if raw[:8] == COOKIE:
            return FooterLocation(parse_footer(raw), raw.ljust(FOOTER_SIZE, b"\0"), offset, source)
    return None


def require_footer(fd: int, size: int, path: Path) -> FooterLocation:
    """The footer (see locate_footer), or NotVhdError saying why there is none."""
    if size < SHORT_FOOTER_SIZE:
        raise NotVhdError(f"file is {size} bytes, too small to be a VHD (a footer is 512)", path)
    found = locate_footer(fd, size)
    if found is None:
        raise NotVhdError("not a VHD: no 'conectix' footer at the end or start of the file", path)
    return found


@dataclass(frozen=True)
class VhdFile:
    """An open file with the footer its structures are read against."""

    path: Path
    fd: int
    stat: os.stat_result
    found: FooterLocation

    @property
    def size(self) -> int:
        return self.stat.st_size

    @property
    def data_end(self) -> int:
        """Where blocks and fixed data must end: the tail footer, or EOF if there is none."""
        return self.size if self.found.source == "head" else self.found.offset

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at a (possibly absurd) offset from the file: nothing past its end."""
        if length <= 0 or offset >= self.size:
            return b""
        return pread_exact(self.fd, length, offset)
