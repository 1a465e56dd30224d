"""`vhdtool image list / show / delete / orphans / vms / vm-delete`: what the store holds, and
what it still bills for.

Deleting an image behaves like Azure's: the record goes, its VHDs stay (and are listed, as
they are now orphans still billed) unless asked to delete them too; even then a VHD that
another record uses, or that is in use (leased, open for writing), is kept. A VM's disks
are its own copies, so a deployed image can be deleted; the VM's image.uri is history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vhdtool.errors import VhdError
from dataclasses import replace

from vhdtool.workflows.store import IMAGE, VM, DiskEntry, Store
from vhdtool.workflows.store.base import Log
from vhdtool.workflows.vmimage.names import check_name
from vhdtool.workflows.vmimage.pending import clean_leftovers, running
from vhdtool.workflows.vmimage.records import image_disks, image_records, load_image, malformed, references, vm_vhds


def summary(record: dict[str, Any]) -> dict[str, Any]:
    disks = image_disks(record)
    return {
        "name": record["name"],
        "label": record.get("label"),
        "osType": record["osType"],
        "osState": record["osState"],
        "hyperVGeneration": record["hyperVGeneration"],
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
    result = delete_disks_of(store, [d["name"] for d in image_disks(record)], references(store, skip_image=name),
                             delete_disks, lambda: store.delete_record(IMAGE, name))
    return {"image": name} | result


def delete_disks_of(store: Store, disks: list[str], used: dict[str, str], delete_disks: bool,
                    delete_record: Callable[[], None]) -> dict[str, Any]:
    """Delete a record, then (if asked) those of its `disks` that no other record uses and
    nothing has in use."""
    present = {entry.name: entry for entry in store.vhds()}
    delete_record()
    deleted, left = [], []
    for disk in disks:
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
    return {"deletedDisks": deleted, "leftBehind": left}


def orphans(store: Store) -> list[DiskEntry]:
    """VHDs no image or VM record refers to: storage still billed for nothing. A copy that a
    capture or deploy is still making is shown busy; one whose run was killed is incomplete."""
    used = references(store)
    writing = running(store)
    found = []
    for entry in store.vhds():
        if entry.name in used:
            continue
        busy = entry.busy or writing.get(entry.incomplete or entry.name)
        found.append(replace(entry, busy=busy))
    return found


def clean_orphans(store: Store, everything: bool, log: Log) -> dict[str, Any]:
    """Delete what killed captures and deploys left (their journals name it), every incomplete
    copy and, with `everything`, every orphan; never one in use. Returns what was deleted and
    the orphans that remain."""
    deleted = clean_leftovers(store, store.vhds(), references(store), log)
    for entry in orphans(store):
        if entry.busy is None and (everything or entry.incomplete):
            store.delete_vhd(entry.name)
            deleted.append(entry)
    return {"deleted": [e.to_dict() for e in deleted], "orphans": [e.to_dict() for e in orphans(store)]}


def list_vms(store: Store) -> list[dict[str, Any]]:
    """Every VM record with the VHDs it owns."""
    rows = []
    for name, record in store.records(VM).items():
        vhds = vm_vhds(store, record, name)
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise malformed(store, "VM", name, "no 'image'")
        rows.append({"name": name, "image": record["image"], "createdAt": record.get("createdAt"), "vhds": vhds})
    return rows


def delete_vm(store: Store, name: str, delete_disks: bool) -> dict[str, Any]:
    """Remove the VM record; with `delete_disks`, its VHDs too where nothing else needs them
    (as `delete_image`)."""
    check_name(name, "VM")
    record = store.read_record(VM, name)
    if record is None:
        raise VhdError(f"no VM {name!r} in the store", store.describe())
    result = delete_disks_of(store, vm_vhds(store, record, name), references(store, skip_vm=name), delete_disks,
                             lambda: store.delete_record(VM, name))
    return {"vm": name} | result
