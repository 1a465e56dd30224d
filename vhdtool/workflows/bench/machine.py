"""The machine a benchmark ran on, as its reader needs it to weigh the numbers: CPU, memory,
kernel, the filesystem the images were on, the peer tools' versions, and how busy it was."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def filesystem(folder: Path) -> str:
    """The type of the filesystem holding `folder` (the longest mount point above it)."""
    target, best, kind = str(folder.resolve()), "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        mount = mount.replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def tool_version(program: str) -> str:
    """First line of `program --version`."""
    done = subprocess.run([program, "--version"], capture_output=True, text=True)
    return (done.stdout.strip().splitlines() or ["unknown version"])[0]


def describe(folder: Path, tools: dict[str, str | None]) -> dict[str, object]:
    """The facts above; `tools` maps a peer program to its path (None: not installed)."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_bytes": memory_bytes(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": f"{filesystem(folder)} ({folder})",
        "tools": {name: tool_version(path) if path else None for name, path in tools.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
