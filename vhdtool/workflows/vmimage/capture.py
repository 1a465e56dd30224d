"""`vhdtool image capture`: copy a VM's disks into the store as a reusable image, as Azure does.

Every disk is checked first (Azure's rules, in use or not); only then are they copied, all at
once: into a local store through `snapshot` (sparse, reflinked where possible), into an Azure
store by server-side Copy Blob from a blob or by `upload` from a local file. Copies are named
<image>-os-YYYY-MM-DD.vhd and <image>-datadisk-<lun>-YYYY-MM-DD.vhd (UTC date), with "-NN"
when the name is taken. The names are chosen first and journaled (see vmimage.pending); a
copy never replaces a VHD. The image record is written last, and exclusively: if it cannot
be, or any copy fails, the copies are deleted again; if the process is killed, the next
capture or `image orphans --clean` deletes them.

Boot: the OS disk's partition table gives the Hyper-V generation and, unless --os-type is
given, the OS type (see vmimage.generation).

In use: a generalized image comes from a stopped VM, so a disk that is in use (a leased blob,
a file open for writing by another process) is refused; a specialized one may be captured
running, and is then only crash-consistent (a warning says so, and the record).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vhdtool.errors import VhdError
from vhdtool.workflows.store import IMAGE, Store
from vhdtool.workflows.vmimage.copies import copy_all, keep_or_discard
from vhdtool.workflows.vmimage.disks import DiskSpec, check_disk_set, check_sources, locate
from vhdtool.workflows.vmimage.generation import GENERATIONS, blob_layout, boot
from vhdtool.workflows.vmimage.pending import journal, recover
from vhdtool.workflows.vmimage.names import (
    DATA_DISK,
    OS_DISK,
    OS_STATES,
    OS_TYPES,
    captured_name,
    check_name,
    choice,
)
from vhdtool.workflows.vmimage.records import (
    disk_metadata,
    image_disk,
    image_record,
    record_metadata,
)

if TYPE_CHECKING:
    from vhdtool.disk.partitions import Layout
    from vhdtool.azure.location import BlobLocation


@dataclass(frozen=True)
class CaptureRequest:
    name: str
    os_disk: DiskSpec
    data_disks: list[DiskSpec]
    os_type: str | None  # windows or linux (any case); None: from the partition types
    os_state: str  # generalized or specialized (any case)
    label: str | None = None
    vm_key: str | None = None  # microsoftazurecompute_capturedvmkey; default: the disk set's key
    md5: bool | None = None  # compute Content-MD5 where a copy has none; None: the store's default
    hyper_v_generation: str | None = None  # V1 or V2 (any case); None: from the partition table


def disk_set_key(sources: list[Path | BlobLocation]) -> str:
    """A stable key for the set of source disks (redacted URLs, absolute paths): what a VM
    key is when there is no VM."""
    text = "\n".join(str(s.absolute()) if isinstance(s, Path) else str(s) for s in sources)
    return f"diskset-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def check_usable(sources: list[Path | BlobLocation], os_state: str,
                 log: Callable[[str], None]) -> tuple[list[bool], Layout]:
    """Refuse what Azure would refuse; per disk, whether it is captured while in use; the OS
    disk's partition table."""
    in_use = []
    reasons, table = check_sources(sources)
    for source, busy in zip(sources, reasons):
        if busy and os_state == "Generalized":
            raise VhdError(f"is in use, {busy}: a generalized image is captured from a stopped VM; "
                           "shut the VM down first", source)
        if busy:
            log(f"warning: {source} is in use, {busy}: captured running, the copy is only "
                "crash-consistent; shut the VM down for a consistent image")
        in_use.append(bool(busy))
    return in_use, table or blob_layout(sources[0])


def capture(store: Store, request: CaptureRequest, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Capture the disks as image `request.name` in `store`; returns the image record."""
    name = check_name(request.name, "image")
    os_type = None if request.os_type is None else choice(request.os_type, OS_TYPES, "--os-type")
    generation = (None if request.hyper_v_generation is None
                  else choice(request.hyper_v_generation, GENERATIONS, "--hyper-v-generation"))
    os_state = choice(request.os_state, OS_STATES, "--os-state")
    disks = [request.os_disk, *sorted(request.data_disks, key=lambda d: d.lun)]
    check_disk_set(disks)
    if store.read_record(IMAGE, name) is not None:
        raise VhdError(f"image {name!r} already exists in the store: delete it first (vhdtool image delete "
                       f"{name})", store.describe())
    sources = [locate(d.source, store) for d in disks]
    in_use, table = check_usable(sources, os_state, log)
    chosen = boot(table, os_type, generation, sources[0])
    os_type = chosen.os_type
    for warning in chosen.warnings:
        log(warning)
    recover(store, log)
    now = datetime.now(timezone.utc)
    vm_key = request.vm_key or disk_set_key(sources)
    md5 = store.md5_by_default if request.md5 is None else request.md5
    metadata = [disk_metadata(OS_DISK if d.lun is None else DATA_DISK, os_state, os_type, vm_key) for d in disks]
    names = [store.free_name(captured_name(name, d.lun, now.date())) for d in disks]
    with journal(store, IMAGE, name, names):
        stored = copy_all(store, [
            partial(store.copy_in, source, new, metadata=meta, md5=md5, log=log, numbered=False)
            for source, new, meta in zip(sources, names, metadata)
        ])
        entries = [image_disk(d, s, meta, busy) for d, s, meta, busy in zip(disks, stored, metadata, in_use)]
        captured_at = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        record = image_record(store, name, request.label, os_type, os_state, chosen.generation, captured_at,
                              vm_key, entries)
        extra = {"microsoftazurecompute_osstate": os_state, "microsoftazurecompute_ostype": os_type}
        keep_or_discard(store, stored, partial(store.create_record, IMAGE, name, record,
                                               record_metadata("vmimage", name, extra)))
    return record
