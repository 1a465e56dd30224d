"""Helpers for streaming a sparse image to or from a blob in one pass.

`ContentMd5` hashes a blob's whole content in order from its non-zero parts only: the gaps
between them are hashed from one preallocated zero buffer, never read from disk or network
(MD5 is sequential, so the gaps cannot be skipped, only made cheap).
"""

from __future__ import annotations

import hashlib

_ZEROS = memoryview(bytes(1024 * 1024))


class ContentMd5:
    """MD5 over data given in increasing offsets, zeros in between."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self.position = 0

    def zeros_to(self, offset: int) -> None:
        if offset < self.position:
            raise ValueError(f"MD5 input out of order: {offset:,} after {self.position:,}")
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
