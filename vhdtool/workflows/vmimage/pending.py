"""Journals of the captures and deploys in progress, so that one killed at any point leaves
nothing for good.

Before copying, a capture (deploy) chooses the names its copies will take and writes them,
with who is copying, to a journal record (pending/images/NAME.json, pending/vms/NAME.json),
created exclusively: a second run for the same name is refused while the first is alive. The
image (VM) record is written after every copy, the journal removed last. A journal left behind
is the mark of a run that was killed: its holder process is gone. The next capture or deploy,
or `image orphans --clean`, then deletes the copies it names that no record refers to
(complete or not) and the journal itself. A holder on another machine cannot be checked:
its journal is left alone and reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from vhdtool.errors import VhdError
from vhdtool.workflows.store import IMAGE, VM, DiskEntry, Store
from vhdtool.workflows.store.base import Log
from vhdtool.workflows.vmimage.names import check_name
from vhdtool.workflows.vmimage.records import references

PENDING = "pending"
WHAT = {IMAGE: "capture of image", VM: "deploy of VM"}


def journal_kind(kind: str) -> str:
    return f"{PENDING}/{kind}"


def process_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): with the
    pid, it tells a process from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_holder() -> str:
    from vhdtool.azure.lease import host_tag

    return f"{host_tag()}:{os.getpid()}:{process_start(os.getpid())}"


def holder_alive(holder: object) -> bool | None:
    """Whether the journal's holder still runs; None when it ran on another machine."""
    from vhdtool.azure.lease import host_tag

    host, pid, start = (str(holder).split(":") + ["", ""])[:3]
    if host != host_tag():
        return None
    return pid.isdigit() and process_start(int(pid)) == start


def holder_pid(record: dict[str, Any]) -> str:
    parts = str(record.get("holder", "")).split(":")
    return parts[1] if len(parts) > 1 else "?"


@contextmanager
def journal(store: Store, kind: str, name: str, vhds: list[str]) -> Iterator[None]:
    """Hold the journal of a capture (kind IMAGE) or deploy (VM) of `name` copying into `vhds`
    while the block runs (the block deletes its own copies on failure)."""
    record = {"kind": "pending", "of": kind, "name": name, "holder": this_holder(),
              "startedAt": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
              "vhds": vhds}
    try:
        store.create_record(journal_kind(kind), name, record, {"vhdtool_kind": "pending"})
    except VhdError:
        if store.read_record(journal_kind(kind), name) is None:
            raise
        raise VhdError(f"a {WHAT[kind]} {name!r} is in progress (its journal {journal_kind(kind)}/{name}.json "
                       "exists): wait for it, or if it is not running, vhdtool image orphans --clean",
                       store.describe()) from None
    try:
        yield
    finally:
        store.delete_record(journal_kind(kind), name)


def journals(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """Every journal: (kind, name, record); one that is not a JSON object names no VHDs."""
    found = []
    for kind in WHAT:
        for name, record in store.records(journal_kind(kind)).items():
            found.append((kind, name, record if isinstance(record, dict) else {}))
    return found


def journal_vhds(journal_record: dict[str, Any]) -> list[str]:
    """The VHD names a journal lists, those that are usable names (records are untrusted)."""
    names = journal_record.get("vhds")
    usable = []
    for name in names if isinstance(names, list) else []:
        try:
            usable.append(check_name(name, "disk"))
        except VhdError:
            continue
    return usable


def running(store: Store) -> dict[str, str]:
    """The VHD names that runs still alive (or on another machine) are writing, with who."""
    busy = {}
    for kind, name, record in journals(store):
        if holder_alive(record.get("holder")) is not False:
            for vhd in journal_vhds(record):
                busy[vhd] = f"being written by the {WHAT[kind]} {name} (process {holder_pid(record)})"
    return busy


def clean_leftovers(store: Store, entries: list[DiskEntry], used: dict[str, str], log: Log) -> list[DiskEntry]:
    """Delete what the journals of dead runs name (copies no record refers to, complete or
    not) and those journals; returns the VHDs deleted."""
    deleted = []
    for kind, name, record in journals(store):
        if holder_alive(record.get("holder")) is not False:
            continue
        mine = set(journal_vhds(record))
        gone = [e for e in entries if (e.incomplete or e.name) in mine and e.name not in used]
        # Another process may be cleaning up the same run at the same time: gone is done.
        for entry in gone:
            try:
                store.delete_vhd(entry.name)
            except (VhdError, OSError):
                if store.has_vhd(entry.name):
                    raise
        try:
            store.delete_record(journal_kind(kind), name)
        except (VhdError, OSError):
            if store.read_record(journal_kind(kind), name) is not None:
                raise
        log(f"removed what the interrupted {WHAT[kind]} {name} left behind: "
            f"{', '.join(e.name for e in gone) or 'no VHD'}")
        deleted += gone
    return deleted


def recover(store: Store, log: Log) -> list[DiskEntry]:
    """Clean up after the runs that were killed, if there are any (see the module docstring)."""
    if all(holder_alive(record.get("holder")) is not False for _, _, record in journals(store)):
        return []
    return clean_leftovers(store, store.vhds(), references(store), log)
