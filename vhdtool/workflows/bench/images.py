"""The synthetic disks `vhdtool bench` measures: the same random data, in 1 MiB pieces at
seeded places, as a sparse fixed VHD (holes where there is no data), a dense fixed VHD (its
zeros written out, as a disk image copied without care looks) and a dynamic VHD.

Only what must be written is: the pieces into the sparse image, every byte into the dense one,
the blocks holding pieces into the dynamic one, all in one pass with one piece in memory.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from vhdtool.workflows.create import create
from vhdtool.format.vhd.footer import DiskType
from vhdtool.engine.output import atomic_file
from vhdtool.disk.writer import SparseImageWriter

PIECE = 1024 * 1024
ZEROS = 4 * 1024 * 1024  # write size of the dense image's zeros


@dataclass(frozen=True)
class Image:
    kind: str  # "sparse fixed", "dense fixed", "dynamic"
    path: Path

    @property
    def allocated(self) -> int:
        return self.path.stat().st_blocks * 512


def pieces(size: int, percent: float, seed: int = 1) -> Iterator[tuple[int, bytes]]:
    """(offset, 1 MiB of random bytes) covering `percent` of `size`, in increasing offsets."""
    rng = random.Random(seed)
    slots = size // PIECE
    for slot in sorted(rng.sample(range(slots), round(slots * percent / 100))):
        yield slot * PIECE, rng.randbytes(PIECE)


def fill_zeros(fd: int, start: int, end: int, zeros: bytes) -> None:
    while start < end:
        start += os.pwrite(fd, zeros[: min(len(zeros), end - start)], start)


def write_images(folder: Path, size: int, percent: float,
                 progress: Callable[[int], None] = lambda n: None) -> list[Image]:
    """The three images of `size` virtual bytes in `folder`, synced to disk; `progress` gets
    the virtual bytes done as they are."""
    sparse = Image("sparse fixed", folder / "sparse-fixed.vhd")
    dense = Image("dense fixed", folder / "dense-fixed.vhd")
    dynamic = Image("dynamic", folder / "dynamic.vhd")
    for fixed in (sparse, dense):
        create(fixed.path, size, DiskType.FIXED)
    zeros = bytes(ZEROS)
    with ExitStack() as files:
        fds = [os.open(fixed.path, os.O_WRONLY) for fixed in (sparse, dense)]
        for fd in fds:
            files.callback(os.close, fd)
        out = files.enter_context(atomic_file(dynamic.path))
        writer = SparseImageWriter(out.fd, size)
        done = 0
        for offset, data in pieces(size, percent):
            fill_zeros(fds[1], done, offset, zeros)
            for fd in fds:
                os.pwrite(fd, data, offset)
            writer.write(offset, data)
            progress(offset + len(data) - done)
            done = offset + len(data)
        fill_zeros(fds[1], done, size, zeros)
        progress(size - done)
        writer.finish()
        for fd in fds:
            os.fsync(fd)
    return [sparse, dense, dynamic]


def write_fixed(path: Path, size: int, percent: float, *, dense: bool) -> Image:
    """One fixed VHD of `size` virtual bytes with the random pieces, synced: `dense` writes
    every byte (as Hyper-V writes a fixed VHD), else the zeros stay holes."""
    create(path, size, DiskType.FIXED)
    zeros = bytes(ZEROS)
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        for offset, data in pieces(size, percent):
            if dense:
                fill_zeros(fd, done, offset, zeros)
            os.pwrite(fd, data, offset)
            done = offset + len(data)
        if dense:
            fill_zeros(fd, done, size, zeros)
        os.fsync(fd)
    finally:
        os.close(fd)
    return Image("dense fixed" if dense else "sparse fixed", path)


def qemu_dynamic(fixed: Path, path: Path) -> Image:
    """A dynamic VHD made by qemu-img from a fixed one (blocks laid out as QEMU writes them)."""
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
                    "-t", "writeback", str(fixed), str(path)], check=True, capture_output=True)
    return Image("dynamic", path)
