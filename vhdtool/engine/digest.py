"""Content-MD5, as Azure shows it: the MD5 of every byte of a blob or file, in base64.

Only a source's data is read (a file's holes, a blob's unwritten pages are not): `ContentMd5`
hashes the gaps between the non-zero parts from one preallocated zero buffer. That still costs
MD5's time per byte (it is sequential: zeros cannot be skipped, only made cheap to produce).
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from vhdtool.errors import WriterError

if TYPE_CHECKING:
    from vhdtool.engine.pipeline import Source

_ZEROS = memoryview(bytes(1024 * 1024))


class ContentMd5:
    """MD5 over data given in increasing offsets, zeros in between."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self.position = 0

    def zeros_to(self, offset: int) -> None:
        if offset < self.position:
            raise WriterError(f"MD5 input out of order: {offset:,} after {self.position:,}")
        while self.position < offset:
            n = min(len(_ZEROS), offset - self.position)
            self._md5.update(_ZEROS[:n])
            self.position += n

    def add(self, offset: int, data: bytes | memoryview) -> None:
        self.zeros_to(offset)
        self._md5.update(data)
        self.position += len(data)

    def digest(self, size: int) -> bytes:
        """The MD5 of the first `size` bytes (zeros after the last data)."""
        self.zeros_to(size)
        return self._md5.digest()


def b64(md5: bytes | bytearray | None) -> str | None:
    """A digest as Azure shows Content-MD5 (base64), None for none."""
    return base64.b64encode(bytes(md5)).decode() if md5 else None


def feed(md5: ContentMd5, source: Source, label: str, workers: int | None = None) -> ContentMd5:
    """Add `source`'s data to `md5` (a progress bar on a terminal); returns `md5`."""
    from vhdtool.engine.pipeline import progress_bar, scan

    with progress_bar(source, label) as update:
        for chunk in scan(source, workers=workers, progress=update):
            md5.add(chunk.offset, chunk.view)
    return md5


def content_md5(source: Source, label: str) -> str:
    """Base64 MD5 of `source`'s `virtual_size` bytes."""
    return b64(feed(ContentMd5(), source, f"md5 {label}").digest(source.virtual_size))
