"""The local store: a folder with vhds/ (the VHD files), images/ and vms/ (JSON records).

VHDs come in through `snapshot` (sparse, byte-identical, reflinked where the filesystem can):
each is first written under a hidden temporary name in vhds/, then given its final name by
the same race-safe link(2) as every atomic output (`output.publish`, numbered "-NN" on a
taken name). A hidden ".NAME.XXXX.vhdtool-partial" left there is a copy that never completed
(its writer was killed): `vhds` lists it as incomplete, for NAME. What Azure keeps in blob
metadata is kept in the records. "In use" is another process holding the file open for
writing (see vhdtool.workflows.store.writers).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhdtool.errors import VhdError
from vhdtool.workflows.store.base import CopyTrail, DiskEntry, Log, Store, StoredDisk
from vhdtool.engine.digest import b64, content_md5
from vhdtool.workflows.store.writers import busy_reason, writers

if TYPE_CHECKING:
    from vhdtool.engine.sink import RunHandler
    from vhdtool.workflows.snapshot import SnapshotResult


def file_md5(path: Path, label: str) -> str:
    from vhdtool.disk.image import open_disk

    with open_disk(path, raw=True) as disk:
        return content_md5(disk, label)


def fixed_copy(source: Path, dest: Path, *, tap: RunHandler | None = None) -> SnapshotResult:
    """A VHDX stored as the fixed VHD it represents (Azure and every deploy take VHD only),
    sparse, in one pass; `tap` sees every non-zero run, as snapshot's does."""
    from vhdtool.disk.fixed import FixedImage
    from vhdtool.disk.image import open_disk
    from vhdtool.engine.sink import copy_nonzero, sparse_output
    from vhdtool.workflows.snapshot import SnapshotResult

    with open_disk(source) as disk:
        image = FixedImage(disk)
        with sparse_output(dest, image.virtual_size) as out:
            copy_nonzero(image, out.put, f"capture {source.name}", tap, positional=True)
    return SnapshotResult(out.path, image.virtual_size, out.written, reflinked=False, verified=False)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def snapshot_trail(source: Path, copied: SnapshotResult) -> CopyTrail:
    method = "reflink" if copied.reflinked else "sparse-copy"
    return CopyTrail(str(uuid.uuid4()), str(source), method, "success", copied.size, copied.size, utc_now())


def staged_for(name: str) -> str | None:
    """The VHD name a hidden staged copy ".NAME.XXXXXXXX.vhdtool-partial" is for (see
    `output.temp_name`), or None for any other name."""
    from vhdtool.engine.output import TEMP_SUFFIX

    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    stem, _, token = name[1:-len(TEMP_SUFFIX)].rpartition(".")
    return stem if stem and len(token) == 8 else None


class LocalStore(Store):
    kind = "local"
    md5_by_default = False

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()
        self.vhd_dir = self.root / "vhds"

    def describe(self) -> str:
        return str(self.root)

    def has_vhd(self, name: str) -> bool:
        return (self.vhd_dir / name).exists()

    def copy_in(self, source: Path, name: str, *, metadata: dict[str, str], md5: bool, log: Log,
                numbered: bool = True) -> StoredDisk:
        from vhdtool.disk.sniff import readable_format
        from vhdtool.engine.digest import ContentMd5
        from vhdtool.engine.output import staged_file
        from vhdtool.workflows.snapshot import snapshot

        self.vhd_dir.mkdir(parents=True, exist_ok=True)
        hashing = ContentMd5() if md5 else None  # fed by the copy itself: one pass
        with staged_file(self.vhd_dir / name, numbered=numbered) as staged:
            copy = fixed_copy if readable_format(source) == "vhdx" else snapshot
            copied = copy(source, staged.temp, tap=hashing.add if hashing else None)
            digest = None
            if hashing is not None:  # a reflink copies no bytes: then the copy is read to hash it
                digest = file_md5(staged.temp, source.name) if copied.reflinked else b64(hashing.digest(copied.size))
        final = staged.path
        return StoredDisk(final.name, final.as_uri(), copied.size, digest, snapshot_trail(source, copied))

    def resolve(self, source: Any) -> Path:
        if not isinstance(source, Path):
            raise VhdError("a local store takes local VHD files; capture blobs into an Azure store "
                           "(--store with a container URL), or download them first", source)
        return source

    def copy_within(self, name: str, new_name: str, *, metadata: dict[str, str], log: Log) -> StoredDisk:
        from vhdtool.workflows.snapshot import snapshot

        source = self.vhd_dir / name
        copied = snapshot(source, self.vhd_dir / new_name)
        return StoredDisk(copied.path.name, copied.path.as_uri(), copied.size, None, snapshot_trail(source, copied))

    def vhds(self) -> list[DiskEntry]:
        try:
            names = sorted(os.listdir(self.vhd_dir))
        except FileNotFoundError:
            return []
        paths = [self.vhd_dir / n for n in names if (self.vhd_dir / n).is_file()]
        paths = [p for p in paths if not p.name.startswith(".") or staged_for(p.name)]
        busy = writers(paths)
        found = []
        for path in paths:
            st = path.stat()
            found.append(DiskEntry(path.name, path.as_uri(), st.st_size, st.st_blocks * 512,
                                   busy_reason(busy.get(path)), staged_for(path.name)))
        return found

    def delete_vhd(self, name: str) -> None:
        (self.vhd_dir / name).unlink()

    def record_path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name}.json"

    def read_record(self, kind: str, name: str) -> dict[str, Any] | None:
        path = self.record_path(kind, name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise VhdError(f"unreadable record: {exc}", path) from None

    def records(self, kind: str) -> dict[str, dict[str, Any]]:
        folder = self.root / kind
        if not folder.is_dir():
            return {}
        names = sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))
        found = {n: self.read_record(kind, n) for n in names}
        return {n: r for n, r in found.items() if r is not None}

    def create_record(self, kind: str, name: str, record: dict[str, Any], metadata: dict[str, str]) -> None:
        from vhdtool.engine.output import atomic_file

        path = self.record_path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(path) as out:  # exclusive: link(2) fails if the name is taken, even meanwhile
                os.write(out.fd, (json.dumps(record, indent=2) + "\n").encode())
        except VhdError:
            if path.exists():
                raise VhdError("a record of that name already exists", path) from None
            raise

    def delete_record(self, kind: str, name: str) -> None:
        self.record_path(kind, name).unlink()
