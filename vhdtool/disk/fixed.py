"""The fixed VHD that any disk represents, as a read-only byte source: no temporary file.

`FixedImage(disk)` looks like a `Disk` whose bytes are the virtual disk (zero-extended to the
target size) followed by a fresh fixed footer. The engine streams it like any other source,
so `convert --to fixed`, `prepare` and `upload` share one path from dynamic, differencing,
raw or misaligned fixed images to the image Azure accepts.
"""

from __future__ import annotations

from collections.abc import Iterator

from vhdtool import ranges
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import (
    FOOTER_SIZE,
    DiskType,
    build_footer,
    new_footer,
    seal_footer,
)
from vhdtool.disk.image import Disk, zero
from vhdtool.disk.vhdx import VhdxDisk
from vhdtool.format.sector import SECTOR


def source_uuid(disk: Disk) -> bytes | None:
    """The source's identity as a VHD footer UUID: a VHD's own; a VHDX's data write GUID (as
    stored in the file), which its differencing children name as their parent linkage and
    which changes whenever its data does (MS-VHDX 2.2.2, 2.6.2.6); none for a raw image."""
    if disk.footer is not None:
        return disk.footer.unique_id
    if isinstance(disk, VhdxDisk):
        return disk.current_header.data_write_guid.bytes_le
    return None


class FixedImage:
    """Bytes [0, size) are the disk's data (zeros past its end), then the 512-byte footer.

    A fixed disk kept at its size keeps its own footer unless `fresh_footer` (prepare, when
    readers size that footer differently: see `qemu_7_2_size`)."""

    kind = "fixed"

    def __init__(
        self,
        disk: Disk,
        size: int | None = None,
        *,
        keep_uuid: bool = False,
        timestamp: int | None = None,
        fresh_footer: bool = False,
    ):
        self.disk = disk
        self.data_size = disk.virtual_size if size is None else size
        if self.data_size < disk.virtual_size or self.data_size % SECTOR:
            raise VhdError(f"cannot represent a {disk.virtual_size:,}-byte disk as "
                           f"{self.data_size:,} bytes", disk.path)
        self.footer_bytes = self._footer(keep_uuid, timestamp, fresh_footer)
        self.virtual_size = self.data_size + FOOTER_SIZE  # the engine's "source size"
        self.path = disk.path

    def _footer(self, keep_uuid: bool, timestamp: int | None, fresh: bool) -> bytes:
        src = self.disk.footer
        same = src is not None and self.disk.kind == "fixed" and self.data_size == self.disk.virtual_size
        if same and not fresh:
            return build_footer(src)  # already what Azure wants: the file's own footer, unchanged
        footer = new_footer(
            self.data_size,
            DiskType.FIXED,
            unique_id=source_uuid(self.disk) if keep_uuid else None,
            timestamp=timestamp,
        )
        return seal_footer(footer)

    def allocated(self) -> Iterator[ranges.Range]:
        yield from self.disk.allocated()
        yield self.data_size, self.virtual_size

    def readinto(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if offset < 0 or end > self.virtual_size:
            raise VhdError(f"read past the end of the {self.virtual_size:,}-byte image", self.path)
        disk_end = self.disk.virtual_size
        if offset < disk_end:
            n = min(end, disk_end) - offset
            self.disk.readinto(offset, buf[:n])
        if end > disk_end and offset < self.data_size:
            s, e = max(offset, disk_end), min(end, self.data_size)
            zero(buf[s - offset : e - offset])
        if end > self.data_size:
            s = max(offset, self.data_size)
            buf[s - offset :] = self.footer_bytes[s - self.data_size : end - self.data_size]

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)
