"""Plain-text rendering of image and VM records for the `image` commands (--json prints the
records themselves)."""

from __future__ import annotations

from typing import Any

from vhdtool.units import format_size
from vhdtool.workflows.vmimage.records import image_disks


def disk_role(disk: dict[str, Any]) -> str:
    return "os" if "lun" not in disk else f"lun {disk['lun']}"


def generation(value: str | None) -> str:
    return f"Hyper-V generation {value or 'unknown'}"


def image_lines(record: dict[str, Any]) -> list[str]:
    label = f" \"{record['label']}\"" if record.get("label") else ""
    lines = [
        (f"image {record['name']}{label}: {record['osType']}, {record['osState']}, "
         f"{generation(record['hyperVGeneration'])}, captured {record['capturedAt']}"),
        f"  store:   {record['store']}",
        f"  vm key:  {record['capturedVmKey']}",
    ]
    for disk in image_disks(record):
        copy = disk["copy"]
        crash = ", crash-consistent" if disk.get("crashConsistent") else ""
        lines.append(f"  {disk_role(disk):<7}  {disk['name']}  {format_size(disk['sizeBytes'])}, caching "
                     f"{disk['hostCaching']}, md5 {disk['contentMd5'] or '-'}{crash}")
        lines.append(f"  {'':<7}  {copy['method']} {copy['status']} {copy['progress']} from {copy['source']}")
    return lines


def list_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no images"]
    table = [("NAME", "OS", "STATE", "GEN", "CAPTURED", "DISKS", "SIZE", "LABEL")]
    table += [(r["name"], r["osType"], r["osState"], r["hyperVGeneration"] or "-", r["capturedAt"], str(r["disks"]),
               format_size(r["sizeBytes"]), r["label"] or "") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table]


def vm_lines(record: dict[str, Any]) -> list[str]:
    profile = record["storageProfile"]
    lines = [(f"VM {record['name']} deployed from image {record['image']} in {record['store']}, "
              f"{generation(record['hyperVGeneration'])}")]
    for disk in [profile["osDisk"], *profile["dataDisks"]]:
        where = "os" if "lun" not in disk else f"lun {disk['lun']}"
        lines.append(f"  {where:<7}  {disk['vhd']['uri']}  ({disk['createOption']}, caching {disk['caching']})")
    lines.append(f"  note: {record['note']}")
    return lines


def entry_line(entry: dict[str, Any]) -> str:
    stored = f", {format_size(entry['allocated'])} allocated" if entry.get("allocated") is not None else ""
    notes = ["incomplete copy"] if entry.get("incomplete") else []
    notes += [why for why in (entry.get("reason") or entry.get("busy"),) if why]
    tags = f"  [{'; '.join(notes)}]" if notes else ""
    return f"  {entry['name']}  {format_size(entry['size'])}{stored}  {entry['uri']}{tags}"


def delete_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"deleted image {result['image']}" if "image" in result else f"deleted VM {result['vm']}"]
    if result["deletedDisks"]:
        lines.append("deleted its VHDs:")
        lines += [entry_line(e) for e in result["deletedDisks"]]
    if result["leftBehind"]:
        lines.append("left behind (still stored and billed; vhdtool image orphans lists them):")
        lines += [entry_line(e) for e in result["leftBehind"]]
    return lines


def orphan_lines(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return ["no orphaned VHDs"]
    total = sum(e["size"] for e in entries)
    lines = [f"{len(entries)} VHD{'s' * (len(entries) != 1)} no image or VM refers to ({format_size(total)}):"]
    lines += [entry_line(e) for e in entries]
    if any(e["incomplete"] for e in entries):
        lines.append("incomplete copies are what a killed capture or deploy left: vhdtool image orphans --clean "
                     "deletes them")
    return lines


def clean_lines(result: dict[str, Any]) -> list[str]:
    deleted = result["deleted"]
    lines = [f"deleted {len(deleted)} VHD{'s' * (len(deleted) != 1)}" + (":" if deleted else "")]
    return lines + [entry_line(e) for e in deleted] + orphan_lines(result["orphans"])


def vms_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no VMs"]
    return [f"VM {r['name']}  from image {r['image']}, created {r['createdAt']}: {', '.join(r['vhds'])}"
            for r in rows]
