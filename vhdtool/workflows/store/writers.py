"""Whether a local VHD is in use: some process has it open for writing.

A local file has no lease like a page blob's, so "in use" is read from the kernel: every
/proc/<pid>/fd entry that is this file (same device and inode), opened with O_WRONLY or
O_RDWR (the flags in /proc/<pid>/fdinfo/<fd>). That is what a running hypervisor (qemu,
VirtualBox) holding the disk looks like, and it needs no cooperation from the writer, unlike
an advisory lock. Limits: only processes whose /proc entries we may read (ours, or all as
root) are seen, and a file mapped for writing whose descriptor was closed is not. Where there
is no /proc (not Linux), nothing is detected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Writer:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"process {self.pid} ({self.command})"


def opened_for_writing(fdinfo: Path) -> bool:
    try:
        text = fdinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    return False


def command_of(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def writers(paths: Iterable[Path]) -> dict[Path, list[Writer]]:
    """The processes holding each of `paths` open for writing, from one pass over /proc."""
    wanted: dict[tuple[int, int], list[Path]] = {}
    for path in paths:
        key = file_id(path)
        if key is not None:
            wanted.setdefault(key, []).append(path)
    found: dict[Path, list[Writer]] = {}
    if not wanted:
        return found
    try:
        pids = [int(p) for p in os.listdir(PROC) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = PROC / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited meanwhile, or not ours to read
            continue
        for fd in fds:
            key = file_id(fd_dir / fd)
            if key in wanted and opened_for_writing(PROC / str(pid) / "fdinfo" / fd):
                for path in wanted[key]:
                    if pid not in (w.pid for w in found.get(path, [])):
                        found.setdefault(path, []).append(Writer(pid, command_of(pid)))
    return found


def busy_reason(found: list[Writer] | None) -> str | None:
    return "open for writing by " + ", ".join(map(str, found)) if found else None
