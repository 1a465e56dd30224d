"""The JSON records a store keeps, shaped after Azure's, readable by other tools.

Image record (images/<name>.json):
    {"kind": "vmimage", "schemaVersion": 1, "name", "label", "osType", "osState",
     "hyperVGeneration" ("V1", "V2" or null: unknown; records written before it lack it and
     read as null), "capturedAt" (UTC), "capturedVmKey", "store", "osDisk": DISK,
     "dataDisks": [DISK + "lun"]}
    DISK = {"name" (in the store), "hostCaching", "sizeBytes", "contentMd5" (base64),
            "location" (URI, no credentials), "metadata" (the blob metadata Azure sets),
            "crashConsistent" (captured while in use), "copy": {"id", "source", "method",
            "status", "progress" ("copied/total"), "bytesCopied", "bytesTotal", "completionTime"}}
VM record (vms/<name>.json): Azure's storage profile (osDisk, dataDisks with name, lun,
    caching, createOption FromImage, image.uri, vhd.uri, diskSizeGB) plus the image it came
    from, its hyperVGeneration (the image's), whether it needs provisioning, and the copy
    trail of each disk.
Records refer to VHDs by name within the store (a VM's by the last segment of vhd.uri).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from vhdtool import ranges
from vhdtool.errors import VhdError
from vhdtool.workflows.store import IMAGE, VM, Store, StoredDisk
from vhdtool.workflows.vmimage.disks import DiskSpec
from vhdtool.workflows.vmimage.names import check_name

SCHEMA_VERSION = 1
GiB = 1024**3
FOOTER = 512
# What the commands read from a record, with its JSON type (records are plain files that
# other tools, or hands, may write: a wrong type must be a one-line error, not a crash).
IMAGE_FIELDS = {"name": str, "osType": str, "osState": str, "capturedAt": str, "capturedVmKey": str,
                "store": str, "osDisk": dict, "dataDisks": list}
OPTIONAL_IMAGE_FIELDS = {"hyperVGeneration": (str, type(None))}  # absent from older records
DISK_FIELDS = {"name": str, "hostCaching": str, "sizeBytes": int, "contentMd5": (str, type(None)),
               "location": str, "copy": dict}
COPY_FIELDS = {"method": str, "status": str, "progress": str, "source": str}


def disk_metadata(role: str, os_state: str, os_type: str, vm_key: str) -> dict[str, str]:
    """The blob metadata Azure sets on every captured disk."""
    return {
        "microsoftazurecompute_imagetype": role,
        "microsoftazurecompute_osstate": os_state,
        "microsoftazurecompute_ostype": os_type,
        "microsoftazurecompute_capturedvmkey": vm_key,
    }


def image_disk(spec: DiskSpec, stored: StoredDisk, metadata: dict[str, str], in_use: bool) -> dict[str, Any]:
    lun = {} if spec.lun is None else {"lun": spec.lun}
    return lun | {
        "name": stored.name,
        "hostCaching": spec.caching,
        "sizeBytes": stored.size,
        "contentMd5": stored.md5,
        "location": stored.uri,
        "metadata": metadata,
        "crashConsistent": in_use,
        "copy": stored.trail.to_dict(),
    }


def image_record(store: Store, name: str, label: str | None, os_type: str, os_state: str, generation: str | None,
                 captured_at: str, vm_key: str, disks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "vmimage",
        "schemaVersion": SCHEMA_VERSION,
        "name": name,
        "label": label,
        "osType": os_type,
        "osState": os_state,
        "hyperVGeneration": generation,
        "capturedAt": captured_at,
        "capturedVmKey": vm_key,
        "store": store.describe(),
        "osDisk": disks[0],
        "dataDisks": disks[1:],
    }


def record_metadata(kind: str, name: str, extra: dict[str, str]) -> dict[str, str]:
    """Metadata on a record blob (Azure), so a listing tells what it is without reading it."""
    return {"vhdtool_kind": kind, "vhdtool_name": name} | extra


def disk_size_gb(size: int) -> int:
    """Azure's diskSizeGB: the virtual size (the blob minus its footer) in whole GiB, rounded up."""
    return max(1, ranges.ceil_div(size - FOOTER, GiB))


def vm_disk(image_disk_entry: dict[str, Any], stored: StoredDisk, os_type: str | None) -> dict[str, Any]:
    lun = image_disk_entry.get("lun")
    head = {"osType": os_type} if lun is None else {"lun": lun}
    return head | {
        "name": stored.name.removesuffix(".vhd"),
        "caching": image_disk_entry["hostCaching"],
        "createOption": "FromImage",
        "image": {"uri": image_disk_entry["location"]},
        "vhd": {"uri": stored.uri},
        "diskSizeGB": disk_size_gb(stored.size),
    }


def vm_record(
    store: Store, vm: str, image: dict[str, Any], created_at: str, stored: list[StoredDisk]
) -> dict[str, Any]:
    generalized = image["osState"] == "Generalized"
    disks = image_disks(image)
    note = ("the image is generalized: the VM must be provisioned at first boot (computer name, "
            "administrator account: an osProfile), as Azure does for a generalized image"
            if generalized else
            "the image is specialized: the VM boots as the captured machine, no provisioning")
    return {
        "kind": "vm",
        "schemaVersion": SCHEMA_VERSION,
        "name": vm,
        "image": image["name"],
        "hyperVGeneration": image["hyperVGeneration"],
        "createdAt": created_at,
        "store": store.describe(),
        "provisioningRequired": generalized,
        "note": note,
        "storageProfile": {
            "osDisk": vm_disk(disks[0], stored[0], image["osType"]),
            "dataDisks": [vm_disk(d, s, None) for d, s in zip(disks[1:], stored[1:])],
        },
        "copies": [{"vhd": s.name} | s.trail.to_dict() for s in stored],
    }


def image_disks(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [record["osDisk"], *record.get("dataDisks", [])]


def vm_vhds(store: Store, record: Any, name: str) -> list[str]:
    """The store names of a VM's own VHDs (from the vhd URIs of its storage profile), each a
    valid name: a record is untrusted input, and these names are deleted and copied from."""
    try:
        profile = record["storageProfile"]
        disks = [profile["osDisk"], *profile.get("dataDisks", [])]
        names = [unquote(urlsplit(d["vhd"]["uri"]).path.rsplit("/", 1)[-1]) for d in disks]
    except (KeyError, TypeError, AttributeError):
        raise malformed(store, "VM", name) from None
    try:
        return [check_name(n, "disk") for n in names]
    except VhdError as exc:
        raise malformed(store, "VM", name, exc.detail) from None


def malformed(store: Store, kind: str, name: str, why: str = "not the expected shape") -> VhdError:
    """The record stored as `name` (never the name it gives itself: it may lie) is unusable."""
    return VhdError(f"the {kind} record {name!r} is malformed ({why}): fix or remove it", store.describe())


def wrong_field(record: dict[str, Any], fields: dict[str, type | tuple[type, ...]], where: str,
                optional: bool = False) -> str | None:
    """What is missing from `record` (unless `optional`) or of the wrong JSON type, or None."""
    for key, kind in fields.items():
        if key not in record:
            if optional:
                continue
            return f"no {where}{key!r}"
        value = record[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{where}{key!r} is a {type(value).__name__}"
    return None


def disk_problem(disk: Any, data_disk: bool) -> str | None:
    if not isinstance(disk, dict):
        return "a disk is not an object"
    if data_disk and (not isinstance(disk.get("lun"), int) or isinstance(disk["lun"], bool)):
        return "no 'lun' of a data disk"
    return wrong_field(disk, DISK_FIELDS, "disk field ") or wrong_field(disk["copy"], COPY_FIELDS, "copy field ")


def checked_image(store: Store, record: Any, name: str) -> dict[str, Any]:
    """The image record stored as `name`, once every field the commands read is there with
    its type and every name in it is usable (a record is untrusted: a disk named "../x" would
    reach outside the store)."""
    if not isinstance(record, dict):
        raise malformed(store, "image", name)
    why = wrong_field(record, IMAGE_FIELDS, "") or wrong_field(record, OPTIONAL_IMAGE_FIELDS, "", optional=True)
    if why is None:
        problems = (disk_problem(d, data_disk=i > 0) for i, d in enumerate(image_disks(record)))
        why = next((p for p in problems if p), None)
    if why is None and record["name"] != name:
        why = f"it names itself {record['name']!r} but is stored as {name!r}"
    if why is None:
        try:
            for disk in image_disks(record):
                check_name(disk["name"], "disk")
        except VhdError as exc:
            why = exc.detail
    if why:
        raise malformed(store, "image", name, why)
    record.setdefault("hyperVGeneration", None)  # one shape for old records and new
    return record


def image_records(store: Store) -> list[dict[str, Any]]:
    return [checked_image(store, r, n) for n, r in store.records(IMAGE).items()]


def load_image(store: Store, name: str) -> dict[str, Any]:
    check_name(name, "image")
    record = store.read_record(IMAGE, name)
    if record is None:
        raise VhdError(f"no image {name!r} in the store", store.describe())
    return checked_image(store, record, name)


def references(store: Store, skip_image: str | None = None, skip_vm: str | None = None) -> dict[str, str]:
    """Every VHD name a record refers to, with which record ("image X", "VM Y"); records are
    told apart by the name they are stored under, never by the name they give themselves."""
    used: dict[str, str] = {}
    for name, record in store.records(VM).items():
        if name != skip_vm:
            for vhd in vm_vhds(store, record, name):
                used.setdefault(vhd, f"VM {name}")
    for record in image_records(store):
        if record["name"] != skip_image:
            for disk in image_disks(record):
                used.setdefault(disk["name"], f"image {record['name']}")
    return used
