"""Independent readers of VHD images, used as oracles: qemu-img/qemu-io and libvhdi.

libvhdi is driven through Debian's python3-libvhdi (pyvhdi) under the system interpreter,
because it is built for /usr/bin/python3 only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import found

SYSTEM_PYTHON = "/usr/bin/python3"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def qemu_info(path: Path) -> dict:
    """`qemu-img info --output=json -f vpc` (always -f vpc: qemu probes a fixed VHD as raw)."""
    return json.loads(run("qemu-img", "info", "--output=json", "-f", "vpc", str(path)).stdout)


def qemu_raw(path: Path, out: Path) -> bytes:
    """The virtual disk as qemu-img reads it."""
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(out))
    return out.read_bytes()


def qemu_map(path: Path) -> list[dict]:
    return json.loads(run("qemu-img", "map", "--output=json", "-f", "vpc", str(path)).stdout)


def vhdi_info(path: Path) -> dict:
    """vhdiinfo's disk type, media size and identifier."""
    text = run("vhdiinfo", str(path)).stdout
    kind = found(r"Disk type\s*:\s*(\w+)", text).group(1).lower()
    size = int(found(r"Media size\s*:.*\((\d+) bytes\)", text).group(1))
    ident = found(r"Identifier\s*:\s*([0-9a-f-]+)", text).group(1)
    return {"type": kind, "virtual_size": size, "unique_id": ident}


_VHDI_READ = r"""
import sys, pyvhdi
paths = sys.argv[1:]
files = []
for p in reversed(paths):          # open the base first, then each child on top
    f = pyvhdi.file(); f.open(p)
    if files: f.set_parent(files[-1])
    files.append(f)
top = files[-1]
size = top.get_media_size(); out = sys.stdout.buffer; pos = 0
while pos < size:
    n = min(1 << 20, size - pos)
    out.write(top.read_buffer_at_offset(n, pos)); pos += n
"""


def vhdi_read(chain: list[Path]) -> bytes:
    """The virtual disk as libvhdi reads it; `chain` is [image, parent, grandparent, ...]."""
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", _VHDI_READ, *map(str, chain)], capture_output=True, check=True
    )
    return proc.stdout


def vhdtool(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed CLI the way a user does (a fresh process: real exit codes)."""
    return subprocess.run(
        [sys.executable, "-m", "vhdtool.cli", *args], capture_output=True, text=True, check=check
    )


def vhdi_sector_size(path: Path) -> int:
    """vhdiinfo's bytes per sector (a VHDX's logical sector size)."""
    text = run("vhdiinfo", str(path)).stdout
    return int(found(r"Bytes per sector\s*:\s*(\d+)", text).group(1))
