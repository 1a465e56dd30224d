"""A VHD in a blob, seen from here: its properties and its two ends, or all of it as a source.

`read_blob_ends` is what `info` and `check` need for a blob URL: two ranged GETs (the first
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
from vhdtool.azure.retry import RetryPolicy
from vhdtool.format.footer import FOOTER_SIZE, parse_footer
from vhdtool.ranges import Range

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobProperties

SECTOR = 512
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


def _first_sector(client: BlobClient) -> tuple[bytes, BlobProperties, int]:
    """The first sector, the properties and the blob's length from one ranged GET."""
    from azure.core.exceptions import HttpResponseError

    try:
        download = client.download_blob(offset=0, length=SECTOR, max_concurrency=1)
    except HttpResponseError as exc:
        if exc.status_code != 416:  # 416: an empty blob has no byte 0
            raise
        return b"", client.get_blob_properties(), 0
    data, props = download.readall(), download.properties
    total = props.content_range.rpartition("/")[2] if props.content_range else ""
    return data, props, int(total) if total.isdigit() else len(data)


def read_blob_ends(location: BlobLocation, *, timeout: float = 60.0, retry: RetryPolicy = RetryPolicy()) -> BlobEnds:
    """Properties, first sector and footer of the blob at `location`, in two ranged GETs."""
    with PageBlob(location, connections=1, timeout=timeout, retry=retry) as blob:
        head, props, size = blob.call("reading the first sector", _first_sector, blob.client)
        tail = blob.read(size - FOOTER_SIZE, FOOTER_SIZE) if size > FOOTER_SIZE else head[-FOOTER_SIZE:]
    return BlobEnds(BlobInfo.from_properties(props, size), head, tail)


class BlobSource:
    """A page blob as an engine `Source`: allocated = its page ranges, reads = ranged GETs
    (with `etag`, each read fails rather than mix in bytes of a blob changed meanwhile)."""

    def __init__(self, blob: PageBlob, size: int, page_ranges: list[Range], etag: str | None = None):
        self.blob, self.virtual_size, self.page_ranges, self.etag = blob, size, page_ranges, etag

    def allocated(self) -> Iterator[Range]:
        return iter(self.page_ranges)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self.blob.readinto(offset, buf, self.etag)
