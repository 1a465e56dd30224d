"""Human-readable output: aligned key/value tables, one section per structure."""

from __future__ import annotations

from typing import Any

import typer

from vhdtool.disk.partitions import render_dict
from vhdtool.redaction import one_line, shown
from vhdtool.units import format_size

_SIZE_KEYS = {"virtual_size", "file_size", "allocated_on_disk", "original_size", "current_size",
              "capacity", "block_size", "qemu_7_2_virtual_size", "virtual_disk_size"}


def say(line: str) -> None:
    """Print one line of the report, one line whatever the image's strings hold (one_line)."""
    typer.echo(one_line(line))


def value_text(key: str, value: Any) -> str:
    if key in _SIZE_KEYS and isinstance(value, int):
        return format_size(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


_LABELS = {"qemu_7_2_virtual_size": "qemu-img 7.2 reads"}


def print_table(title: str, rows: dict[str, Any], indent: int = 0) -> None:
    pad = " " * indent
    say(f"{pad}{title}")
    width = max((len(k) for k in rows), default=0)
    for key, value in rows.items():
        if isinstance(value, (list, dict)) and key != "geometry":
            continue
        label = _LABELS.get(key, key.replace("_", " "))
        say(f"{pad}  {label:<{width}}  {value_text(key, value)}")


def print_info(data: dict[str, Any]) -> None:
    summary = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) and k != "exit_code"}
    print_table(shown(data["path"]), summary)
    if data["type"] == "vhdx":
        print_vhdx(data)
    if "footer" in data:
        print_table("Footer", data["footer"])
    if "dynamic_header" in data:
        header = data["dynamic_header"]
        print_table("Dynamic header", header)
        for loc in header["parent_locators"]:
            # Shown as stored: a Windows path keeps its single backslashes.
            say(f"  locator {loc['platform_code']}: {loc['path']} "
                f"({loc['data_length']} of {loc['data_space']} bytes at {loc['data_offset']})")
    for parent in data.get("parent_chain", []):
        print_table(f"Parent {shown(parent['path'])}",
                    {k: v for k, v in parent.items() if not isinstance(v, (dict, list))})
        if "footer" in parent:
            say(f"  unique id  {parent['footer']['unique_id']}")
        if "headers" in parent:
            say(f"  data write guid  {current_header(parent)['data_write_guid']}")
    if "partitions" in data:
        say("Partitions")
        for line in render_dict(data["partitions"]):
            say(f"  {line}")
    findings = data.get("findings", [])
    if findings:
        say("Findings (vhdtool check explains each)")
        width = max(len(f["code"]) for f in findings)
        for f in findings:
            say(f"  {f['severity']:<7} {f['code']:<{width}}  {f['message']}")


def current_header(data: dict[str, Any]) -> dict[str, Any]:
    return next((h for h in data["headers"] if h["current"]), data["headers"][0])


def print_vhdx(data: dict[str, Any]) -> None:
    """The VHDX structures info_vhdx decoded, in file order."""
    for h in data.get("headers", []):
        state = ("current" if h["current"] else "valid") if h["valid"] else "damaged"
        print_table(f"Header {h['number']} at {h['offset']:,} ({state})",
                    {k: v for k, v in h.items() if k not in ("number", "offset", "valid", "current")})
    if "regions" in data:
        say("Region table")
        for r in data["regions"]:
            required = ", required" if r["required"] else ""
            say(f"  {r['name']:<8} {r['guid']}  at {r['file_offset']:,}, {format_size(r['length'])}{required}")
    if "metadata" in data:
        print_table("Metadata", data["metadata"])
        locator = data["metadata"].get("parent_locator")
        if locator:
            say(f"  parent locator ({locator['locator_type']})")
            for key, value in locator["entries"].items():
                say(f"    {key}: {value}")  # as stored: Windows paths keep their backslashes
    if "bat" in data:
        bat = data["bat"]
        states = ", ".join(f"{n} {state}" for state, n in bat["block_states"].items() if n)
        print_table("BAT", {**bat, "blocks_by_state": states or "none"})
