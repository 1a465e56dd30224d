"""`vhdtool image list / show / delete / orphans`: what the store holds, and what it still
bills for.

Deleting an image behaves like Azure's: the record goes, its VHDs stay (and are listed, as
they are now orphans still billed) unless asked to delete them too; even then a VHD that
another record uses, or that is in use (leased, open for writing), is kept. A VM's disks
are its own copies, so a deployed image can be deleted; the VM's image.uri is history.
"""

from __future__ import annotations

from typing import Any

from vhdtool.errors import VhdError
from vhdtool.workflows.store import IMAGE, DiskEntry, Store
from vhdtool.workflows.vmimage.records import image_disks, image_records, load_image, references


def summary(record: dict[str, Any]) -> dict[str, Any]:
    disks = image_disks(record)
    return {
        "name": record["name"],
        "label": record.get("label"),
        "osType": record["osType"],
        "osState": record["osState"],
        "capturedAt": record["capturedAt"],
        "disks": len(disks),
        "sizeBytes": sum(d["sizeBytes"] for d in disks),
    }


def list_images(store: Store) -> list[dict[str, Any]]:
    return [summary(r) for r in image_records(store)]


def delete_image(store: Store, name: str, delete_disks: bool) -> dict[str, Any]:
    """Remove the image record; with `delete_disks`, its VHDs too where nothing else needs
    them. Returns what was deleted and what was left behind, and why."""
    record = load_image(store, name)
    used = references(store, skip_image=name)
    present = {entry.name: entry for entry in store.vhds()}
    store.delete_record(IMAGE, name)
    deleted, left = [], []
    for disk in (d["name"] for d in image_disks(record)):
        entry = present.get(disk)
        if entry is None:
            continue  # already gone: nothing to bill, nothing to delete
        reason = f"used by {used[disk]}" if disk in used else entry.busy
        if delete_disks and reason is None:
            try:
                store.delete_vhd(disk)
                deleted.append(entry.to_dict())
                continue
            except (VhdError, OSError) as exc:
                reason = f"could not be deleted: {getattr(exc, 'detail', None) or exc}"
        left.append(entry.to_dict() | {"reason": reason})
    return {"image": name, "deletedDisks": deleted, "leftBehind": left}


def orphans(store: Store) -> list[DiskEntry]:
    """VHDs no image or VM record refers to: storage still billed for nothing."""
    used = references(store)
    return [entry for entry in store.vhds() if entry.name not in used]
