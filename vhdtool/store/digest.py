"""Content-MD5 of a stored VHD, as Azure shows it: the MD5 of every byte of the blob or file.

Only the source's data is read (a file's holes, a blob's unwritten pages are not); the zeros
in between are hashed from a zero buffer, which still costs MD5's time per byte (it is
sequential: zeros cannot be skipped). A progress bar shows it on a terminal.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vhdtool.engine import Source


def b64(md5: bytes | bytearray | None) -> str | None:
    """A digest as Azure shows Content-MD5 (base64), None for none."""
    return base64.b64encode(bytes(md5)).decode() if md5 else None


def content_md5(source: Source, label: str) -> str:
    """Base64 MD5 of `source`'s `virtual_size` bytes."""
    from vhdtool.azure.stream import ContentMd5
    from vhdtool.engine import progress_bar, scan

    md5 = ContentMd5()
    with progress_bar(source, f"md5 {label}") as update:
        for chunk in scan(source, progress=update):
            md5.add(chunk.offset, chunk.view)
    return b64(md5.digest(source.virtual_size))
