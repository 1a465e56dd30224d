"""`vhdtool image deploy`: a new VM from an image, as Azure deploys one: every disk of the
image is copied to a fresh VHD for the VM (<vm>-os.vhd, <vm>-datadisk-<lun>.vhd), never
attached, and a VM record shaped like Azure's storage profile is written (createOption
FromImage). Existing VHDs are never overwritten; a failure leaves nothing behind, and a
killed deploy's copies are deleted by the next capture, deploy or `image orphans --clean`
(its journal names them: see vmimage.pending).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any

from vhdtool.errors import VhdError
from vhdtool.workflows.store import VM, Store, StoredDisk
from vhdtool.workflows.store.base import Log
from vhdtool.workflows.vmimage.copies import copy_all, keep_or_discard
from vhdtool.workflows.vmimage.pending import journal, recover
from vhdtool.workflows.vmimage.names import DATA_DISK, OS_DISK, check_name, deployed_name
from vhdtool.workflows.vmimage.records import image_disks, load_image, record_metadata, vm_record


def vm_disk_metadata(vm: str, image: str, lun: int | None, name: str) -> dict[str, str]:
    """What Azure sets on a VM's disk blob (Azure: MicrosoftAzureCompute_VMName and so on)."""
    return {
        "microsoftazurecompute_vmname": vm,
        "microsoftazurecompute_disktype": OS_DISK if lun is None else DATA_DISK,
        "microsoftazurecompute_diskname": name.removesuffix(".vhd"),
        "vhdtool_image": image,
    }


def copy_disk(store: Store, image_name: str, disk: str, new: str, metadata: dict[str, str], log: Log) -> StoredDisk:
    """`store.copy_within`, saying so when the failure is that the disk was deleted meanwhile
    (a copy only sees its source change: "modified while being copied", or a failed copy)."""
    try:
        return store.copy_within(disk, new, metadata=metadata, log=log)
    except VhdError:
        if store.has_vhd(disk):
            raise
        raise missing_disk(store, image_name, disk, " (deleted while being copied)") from None


def missing_disk(store: Store, image_name: str, disk: str, when: str = "") -> VhdError:
    return VhdError(f"image {image_name!r}: its disk {disk} is missing from the store{when}", store.describe())


def deploy(store: Store, image_name: str, vm: str, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Deploy VM `vm` from image `image_name` in `store`; returns the VM record."""
    check_name(vm, "VM")
    image = load_image(store, image_name)
    recover(store, log)
    if store.read_record(VM, vm) is not None:
        raise VhdError(f"VM {vm!r} already exists in the store", store.describe())
    plan = [(disk, deployed_name(vm, disk.get("lun"))) for disk in image_disks(image)]
    for disk, new in plan:
        if not store.has_vhd(disk["name"]):
            raise missing_disk(store, image_name, disk["name"])
        if store.has_vhd(new):
            raise VhdError(f"{new} already exists in the store: deploy never overwrites a VHD",
                           store.describe())
    with journal(store, VM, vm, [new for _, new in plan]):
        stored = copy_all(store, [
            partial(copy_disk, store, image_name, disk["name"], new,
                    vm_disk_metadata(vm, image_name, disk.get("lun"), new), log)
            for disk, new in plan
        ])
        now = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        record = vm_record(store, vm, image, now, stored)
        keep_or_discard(store, stored, partial(store.create_record, VM, vm, record,
                                               record_metadata("vm", vm, {"vhdtool_image": image_name})))
    return record
