"""A digest of a disk at the cost of its non-zero data: what `upload` records in the blob's
metadata in place of a whole-blob Content-MD5 (which hashes every zero of the disk).

SHA-256 of (the disk size, the SHA-256 of its non-zero runs as (start, end) pairs, the SHA-256
of their data in order). Runs are merged as they come, so how a reader cut its pieces (4 MiB
Put Pages, chunk edges, page ranges) does not change the digest: two disks have the same
digest exactly when they read the same, zero pages being zero whether written or not.
"""

from __future__ import annotations

import hashlib
import struct

METADATA_KEY = "vhdtool_sparse_sha256"


class SparseDigest:
    """Fed the non-zero pieces of a disk in ascending offset order."""

    def __init__(self) -> None:
        self.runs, self.data = hashlib.sha256(), hashlib.sha256()
        self.start = self.end = -1  # the run being extended

    def add(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self.end:
            if self.end > self.start:
                self.runs.update(struct.pack("<QQ", self.start, self.end))
            self.start = offset
        self.end = offset + len(data)
        self.data.update(data)

    def hexdigest(self, size: int) -> str:
        runs = self.runs.copy()
        if self.end > self.start:
            runs.update(struct.pack("<QQ", self.start, self.end))
        return hashlib.sha256(struct.pack("<Q", size) + runs.digest() + self.data.digest()).hexdigest()
