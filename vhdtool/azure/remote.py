"""A VHD in a blob, seen from here: its properties and its two ends, or all of it as a source.

`read_blob_ends` is what `info` and `image capture`'s check need for a blob URL: two ranged GETs (the first
sector, then the last 512 bytes, where the footer is) and nothing else, since a GET answers
with every property and the metadata too. `BlobSource` lets the engine scan a page blob
(download, upload verification): its page ranges are what is allocated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from construct import Container

from vhdtool.azure.location import BlobLocation
from vhdtool.azure.pageblob import PageBlob
from vhdtool.errors import VhdError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhd.footer import FOOTER_SIZE, parse_footer
from vhdtool.ranges import Range

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties

PAGE_BLOB = "PageBlob"


@dataclass(frozen=True)
class BlobInfo:
    """The properties `info` and `check` look at."""

    blob_type: str  # "PageBlob", "BlockBlob" or "AppendBlob"
    size: int
    content_md5: bytes | None
    lease_state: str  # available, leased, expired, breaking, broken
    lease_status: str  # locked, unlocked
    lease_duration: str | None  # infinite, fixed, or None when not leased
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def is_page_blob(self) -> bool:
        return self.blob_type == PAGE_BLOB

    @classmethod
    def from_properties(cls, props: BlobProperties, size: int) -> BlobInfo:
        md5 = props.content_settings.content_md5
        return cls(
            blob_type=str(getattr(props.blob_type, "value", props.blob_type)),
            size=size,
            content_md5=bytes(md5) if md5 else None,
            lease_state=str(props.lease.state or "available"),
            lease_status=str(props.lease.status or "unlocked"),
            lease_duration=props.lease.duration,
            etag=props.etag,
            metadata=dict(props.metadata or {}),
        )


@dataclass(frozen=True)
class BlobEnds:
    """A blob's properties, its first sector and its last 512 bytes (fewer if it is shorter)."""

    info: BlobInfo
    head: bytes
    tail: bytes

    @property
    def footer(self) -> Container | None:
        """The last 512 bytes decoded as a VHD footer (None for a blob under 512 bytes);
        whether it is a valid one is for the caller to judge (cookie, checksum...)."""
        return parse_footer(self.tail) if len(self.tail) == FOOTER_SIZE else None


def read_blob_ends(location: BlobLocation) -> BlobEnds:
    """Properties, first sector and footer of the blob at `location`, in two ranged GETs
    (one GET and the properties for an empty blob, which has no byte to get)."""
    with PageBlob(location, connections=1, timeout=60.0) as blob:
        head, props = blob.get(0, SECTOR)
        if props is None:
            props, size = blob.properties(), 0
            if props is None:
                raise VhdError("no such blob", location)
        else:
            size = _total_size(props.content_range, len(head))
        tail = blob.get(size - FOOTER_SIZE, FOOTER_SIZE)[0] if size > FOOTER_SIZE else head[-FOOTER_SIZE:]
    return BlobEnds(BlobInfo.from_properties(props, size), head, tail)


def _total_size(content_range: str | None, fallback: int) -> int:
    """The blob's length from a ranged answer's "bytes 0-511/LENGTH"."""
    total = (content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else fallback


class BlobSource:
    """A page blob as an engine `Source`: allocated = its page ranges, reads = ranged GETs
    (with `etag`, each read fails rather than mix in bytes of a blob changed meanwhile)."""

    def __init__(self, blob: PageBlob, size: int, page_ranges: list[Range], etag: str | None = None):
        self.blob, self.virtual_size, self.page_ranges, self.etag = blob, size, page_ranges, etag

    def allocated(self) -> Iterator[Range]:
        return iter(self.page_ranges)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.blob.readinto(offset, buf, self.etag)
