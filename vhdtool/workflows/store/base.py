"""What a VM-image store holds and the one interface its two back ends implement.

A store keeps VHDs (one flat namespace: a folder, or a container's page blobs) and JSON
records of two kinds, images and VMs, each named. Records refer to VHDs by name, so a record
never depends on where the store is mounted, and by URI, for other tools. Nothing stored
ever holds a credential.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhdtool.engine.output import MAX_NUMBER
from vhdtool.errors import VhdError

if TYPE_CHECKING:
    from vhdtool.azure.location import BlobLocation

IMAGE, VM = "images", "vms"  # record kinds: also their folder (or blob prefix) in the store
Log = Callable[[str], None]


def candidate_names(name: str, numbered: bool) -> Iterable[str]:
    """name, then name-01 ... name-99 before any .vhd suffix (Azure's "-ZZ", added only when
    the name is taken)."""
    yield name
    stem, suffix = (name[:-4], name[-4:]) if name.endswith(".vhd") else (name, "")
    if numbered:
        for number in range(1, MAX_NUMBER + 1):
            yield f"{stem}-{number:02d}{suffix}"


@dataclass(frozen=True)
class CopyTrail:
    """How one VHD came into the store, as Azure reports a Copy Blob (x-ms-copy-*)."""

    id: str
    source: str  # path, or blob URL with any SAS signature redacted
    method: str  # reflink, sparse-copy, download, upload, copy-blob
    status: str  # success (anything else is an error, and no VHD is kept)
    bytes_copied: int
    bytes_total: int
    completion_time: str  # ISO 8601, UTC

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "method": self.method,
            "status": self.status,
            "progress": f"{self.bytes_copied}/{self.bytes_total}",
            "bytesCopied": self.bytes_copied,
            "bytesTotal": self.bytes_total,
            "completionTime": self.completion_time,
        }


@dataclass(frozen=True)
class StoredDisk:
    """A VHD the store now holds: its name there, URI, size in bytes, Content-MD5 (base64)."""

    name: str
    uri: str
    size: int
    md5: str | None
    trail: CopyTrail


@dataclass(frozen=True)
class DiskEntry:
    """A VHD found in the store: what `orphans` lists."""

    name: str
    uri: str
    size: int  # bytes (a page blob's length, a file's length)
    allocated: int | None  # bytes actually stored (local: blocks on disk), when known
    busy: str | None  # why it must not be deleted now (open for writing, leased), or None
    # A copy that never completed (a hidden staged file, a blob whose copy or upload did not
    # finish): the name it was being made for, else None.
    incomplete: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri, "size": self.size, "allocated": self.allocated,
                "busy": self.busy, "incomplete": self.incomplete is not None}


class Store(ABC):
    """A local folder or an Azure container holding VHDs and image/VM records."""

    kind: str  # "local" or "azure"
    # Whether captures set Content-MD5 unless told otherwise: on Azure it is blob metadata that
    # Azure shows and checks (copies carry it; an upload hashes in its one pass); a local copy
    # has no use for it, and MD5 costs ~1.2 s per GiB of disk, holes included.
    md5_by_default: bool

    @abstractmethod
    def describe(self) -> str:
        """Where the store is: a path, or the container URL (without any credential)."""

    @abstractmethod
    def has_vhd(self, name: str) -> bool: ...

    def free_name(self, wanted: str) -> str:
        """`wanted`, or its first "-NN" variant that holds no VHD now (see `candidate_names`)."""
        for name in candidate_names(wanted, True):
            if not self.has_vhd(name):
                return name
        raise VhdError(f"every name up to {name} is taken", self.describe())

    @abstractmethod
    def copy_in(self, source: Path | BlobLocation, name: str, *, metadata: dict[str, str], md5: bool,
                log: Log, numbered: bool = True) -> StoredDisk:
        """Copy a disk into the store as `name`, or if taken (and `numbered`) as its first free
        "-NN" variant (see `candidate_names`), chosen race-safely: two copies never take one
        name; not `numbered`, a taken name is refused. `metadata` goes on the blob (Azure);
        Content-MD5 is computed unless the copy has it."""

    @abstractmethod
    def copy_within(self, name: str, new_name: str, *, metadata: dict[str, str], log: Log) -> StoredDisk:
        """A fresh copy of the store's VHD `name` as `new_name`, refused if that is taken."""

    def resolve(self, source: Path | BlobLocation) -> Path | BlobLocation:
        """The source as this store reaches it (Azure: with the store's credential if needed)."""
        return source

    @abstractmethod
    def vhds(self) -> list[DiskEntry]:
        """Every VHD in the store, incomplete copies too."""

    @abstractmethod
    def delete_vhd(self, name: str) -> None:
        """Delete a VHD, or an incomplete copy (listed by `vhds`) whose writer is gone."""

    @abstractmethod
    def read_record(self, kind: str, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def records(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of a kind by the name it is stored under, sorted by name."""

    @abstractmethod
    def create_record(self, kind: str, name: str, record: dict[str, Any], metadata: dict[str, str]) -> None:
        """Write a new record; a VhdError if one of that name exists (even one created a moment
        ago by another process: the create is exclusive)."""

    @abstractmethod
    def delete_record(self, kind: str, name: str) -> None: ...
