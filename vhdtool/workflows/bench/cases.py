"""What `vhdtool bench` measures: on each image, each operation done by vhdtool and by the
peers found on PATH that do the same job, as command lines.

Peers: `cp` (plain, as most people copy, and --sparse=always, which also punches zero pages)
and `qemu-img` (map, a raw copy, conversion to a fixed VHD), each flushing what it writes. A peer missing from PATH is
reported as missing; vhdtool is still measured.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vhdtool.workflows.bench.images import Image

PEERS = ("cp", "qemu-img")
OURS = "vhdtool"
# Run as a child by the "scan" case: the engine's pass over the whole virtual disk, which
# every command pays first (allocation, reads, zero detection), without any output.
SCAN = "import sys; from vhdtool.workflows.bench.cases import scan_image; scan_image(sys.argv[1])"


@dataclass(frozen=True)
class Case:
    image: Image
    operation: str
    commands: dict[str, list[str]]  # "vhdtool" first, then each available peer's
    missing: dict[str, str] = field(default_factory=dict)  # peer tool -> program not on PATH
    output: Path | None = None  # removed after every run


def find_peers() -> dict[str, str | None]:
    """Each peer program's path on PATH, None when absent."""
    return {program: shutil.which(program) for program in PEERS}


def vhdtool(*args: str) -> list[str]:
    return [sys.executable, "-m", "vhdtool.cli", *args]


def flushed(argv: list[str], output: str) -> list[str]:
    """`argv`, then `sync output` if it succeeded (one command line, measured as one). sh and
    sync are the system's (os.defpath): base tools, not peers, whatever PATH holds."""
    shell, sync = (shutil.which(tool, path=os.defpath) or f"/bin/{tool}" for tool in ("sh", "sync"))
    return [shell, "-c", 'out=$1; sync=$2; shift 2; "$@" && "$sync" "$out"', "sh", output, sync, *argv]


def scan_image(path: str) -> None:
    """Read and zero-scan every allocated byte of the virtual disk at `path`."""
    from vhdtool.engine.pipeline import scan
    from vhdtool.disk.image import open_disk

    with open_disk(path) as disk:
        for _ in scan(disk):
            pass


def image_cases(image: Image, out: Path, peers: dict[str, str | None], blob: str | None = None) -> list[Case]:
    """Every case on `image`; outputs go to `out`, an upload to `blob` when given."""
    src, dst = str(image.path), str(out)
    table: list[tuple[str, list[str], dict[str, tuple[str, list[str]]], Path | None]] = [
        ("scan", [sys.executable, "-c", SCAN, src], {}, None),
        ("map", vhdtool("map", src, "--json"),
         {"qemu-img map": ("qemu-img", ["map", "--output=json", "-f", "vpc", src])}, None),
        # Every copy flushes its output, as vhdtool does before naming it (issue #17): cp then
        # sync FILE, qemu-img with -t writeback (its default cache mode, unsafe, never flushes).
        ("snapshot", vhdtool("snapshot", src, "-o", dst),
         {"cp + sync": ("cp", [src, dst]),
          "cp --sparse=always + sync": ("cp", ["--sparse=always", src, dst]),
          "qemu-img convert raw": ("qemu-img", ["convert", "-f", "raw", "-O", "raw", "-t", "writeback", src, dst])},
         out),
        ("convert --to fixed", vhdtool("convert", src, dst, "--to", "fixed"),
         {"qemu-img convert fixed": ("qemu-img", ["convert", "-f", "vpc", "-O", "vpc", "-o",
                                                  "subformat=fixed,force_size=on", "-t", "writeback", src, dst])},
         out),
    ]
    if blob is not None:
        table.append(("upload", vhdtool("upload", src, blob, "--overwrite", "--no-resume"), {}, None))
    cases = []
    for operation, ours, others, output in table:
        found = {tool: flushed([path, *args], dst) if tool.endswith("+ sync") else [path, *args]
                 for tool, (program, args) in others.items() if (path := peers[program])}
        missing = {tool: program for tool, (program, _) in others.items() if not peers[program]}
        cases.append(Case(image, operation, {OURS: ours} | found, missing, output))
    return cases
