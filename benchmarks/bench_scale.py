#!/usr/bin/env python3
"""Snapshot and convert on disks of real size, cold and warm, against flushing peers.

Beside the peers, this machine's floor for the same bytes (issue 17).

Cases (issue #17), generated on the fly in the scratch folder and deleted afterwards:
  dense:   snapshot of a fixed VHD of SIZE/2 with every byte written (as Hyper-V writes it),
           10% random data;
  sparse:  snapshot of a fixed VHD of SIZE with holes, 10% random data;
  dynamic: convert to fixed of a dynamic VHD of SIZE made by qemu-img from the sparse one.
Every command flushes its output (vhdtool fsyncs; `cp ... && sync FILE`; `qemu-img convert
-t writeback`). Cold: the page cache is dropped before every command (needs root; without
it only warm is measured, and the output says so). Warm: the source is read into the cache
before every command. Commands run interleaved, in the orders of a Williams design (no command
always follows the same one: this disk carries one command's read pattern into the next);
medians, min-max, peak RSS. The floor (vhdtool.workflows.bench.floor) is measured in the same
rounds: an O_DIRECT read of the source's data extents and a write + fsync of the bytes vhdtool
writes; cold floor = their sum, warm floor = the write alone. Outputs are checked before timing:
vhdtool's snapshot against its source (cmp), its conversion against qemu-img's (qemu-img
compare).

Usage: python benchmarks/bench_scale.py [--dir SCRATCH] [--size-gib 32] [--rounds 3]
                                        [--cases dense,sparse,dynamic] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import GiB, MiB, Samples, add_json_option, byte_compile, check, finish, interleaved, print_table  # noqa: E402
from vhdtool.workflows.bench import floor  # noqa: E402
from vhdtool.workflows.bench.cases import vhdtool  # noqa: E402
from vhdtool.workflows.bench.images import Image, qemu_dynamic, write_fixed  # noqa: E402

PERCENT = 10
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
OURS = "vhdtool"


@dataclass(frozen=True)
class Case:
    name: str
    image: Image
    output: Path
    commands: dict[str, list[str]]  # vhdtool first, then the peers
    compare: list[str]  # checks vhdtool's output (exit 0: identical)
    reference: list[str] | None = None  # the peer command whose output `compare` reads, run first
    reference_output: Path | None = None


def can_drop_caches() -> bool:
    try:
        drop_caches()
    except OSError:
        return False
    return True


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def warm(path: Path) -> None:
    """Read the file's data extents into the page cache (cat would read the holes too)."""
    floor.read_direct(str(path), direct=False)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def snapshot_case(name: str, image: Image, scratch: Path) -> Case:
    src, out = image.path, scratch / f"{name}-out.vhd"
    return Case(name, image, out, {
        OURS: vhdtool("snapshot", str(src), "-o", str(out)),
        "qemu-img convert -t writeback": ["qemu-img", "convert", "-f", "raw", "-O", "raw", "-t", "writeback",
                                          str(src), str(out)],
        "cp --sparse=always + sync": sh(f'cp --sparse=always "{src}" "{out}" && sync "{out}"'),
    }, ["cmp", str(src), str(out)])


def convert_case(image: Image, scratch: Path) -> Case:
    src, out, ref = image.path, scratch / "dynamic-out.vhd", scratch / "dynamic-ref.vhd"
    qemu = ["qemu-img", "convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=fixed,force_size=on", "-t", "writeback"]
    return Case("dynamic", image, out, {
        OURS: vhdtool("convert", str(src), str(out), "--to", "fixed"),
        "qemu-img convert -t writeback": [*qemu, str(src), str(out)],
    }, ["qemu-img", "compare", "-q", "-f", "vpc", "-F", "vpc", str(out), str(ref)],
        reference=[*qemu, str(src), str(ref)], reference_output=ref)


def verify(case: Case) -> int:
    """Run vhdtool once, check its output; returns the bytes it allocates (what it writes)."""
    ref = case.reference_output
    if case.reference:
        subprocess.run(case.reference, check=True, capture_output=True)
    subprocess.run(case.commands[OURS], check=True, capture_output=True)
    try:
        subprocess.run(case.compare, check=True, capture_output=True)
        if ref is not None and case.output.stat().st_size != ref.stat().st_size:
            # qemu-img compare reads the disks only, not the files' sizes
            raise SystemExit(f"{case.name}: vhdtool's output has another size than qemu-img's")
        written = case.output.stat().st_blocks * 512
        print(f"  vhdtool's output identical ({' '.join(case.compare[:2])}); it allocates {written / MiB:,.0f} MiB")
        return written
    finally:
        case.output.unlink(missing_ok=True)
        if ref is not None:
            ref.unlink(missing_ok=True)


def measure(case: Case, written: int, scratch: Path, rounds: int, cold: bool) -> dict[str, Samples]:
    floor_out = scratch / "floor.bin"
    cmds = case.commands | floor.commands(str(case.image.path), written, str(floor_out))

    def prepare() -> None:
        case.output.unlink(missing_ok=True)
        floor_out.unlink(missing_ok=True)
        drop_caches() if cold else warm(case.image.path)

    prepare()
    return interleaved(cmds, rounds, between=prepare, warmup=0)


def judge(case: Case, temperature: str, results: dict[str, Samples]) -> None:
    ours = results[OURS]
    peers = {name: s for name, s in results.items() if name != OURS and not name.startswith("floor")}
    best = min(peers, key=lambda name: peers[name].wall)
    read, write = results["floor: direct read"].wall, results["floor: write + fsync"].wall
    label = f"{case.name} {temperature}"
    if temperature == "warm":
        check(f"{label}: vhdtool / {best}", ours.wall / peers[best].wall, 0.8)
        print(f"  context: {label}: vhdtool / floor (write + fsync) = {ours.wall / write:.2f}x")
    else:
        check(f"{label}: vhdtool / {best}", ours.wall / peers[best].wall,
              0.8 if case.name == "dynamic" else 1.0)
        check(f"{label}: vhdtool / floor (read + write)", ours.wall / (read + write), 1.15)
    check(f"{label}: vhdtool peak RSS", ours.peak_rss / MiB, 150, " MiB")


def make_images(scratch: Path, size: int, wanted: set[str]) -> dict[str, Image]:
    images: dict[str, Image] = {}
    if "dense" in wanted:
        images["dense"] = write_fixed(scratch / "dense.vhd", size // 2, PERCENT, dense=True)
    if wanted & {"sparse", "dynamic"}:
        images["sparse"] = write_fixed(scratch / "sparse.vhd", size, PERCENT, dense=False)
    if "dynamic" in wanted:
        images["dynamic"] = qemu_dynamic(images["sparse"].path, scratch / "dynamic.vhd")
    for name, image in images.items():
        print(f"  {name}: {image.path.stat().st_size / GiB:.1f} GiB file, {image.allocated / GiB:.2f} GiB allocated")
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="scratch folder (default: a new folder in benchmarks/work/)")
    parser.add_argument("--size-gib", type=int, default=32, help="sparse and dynamic size; dense is half")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="dense,sparse,dynamic")
    add_json_option(parser)
    args = parser.parse_args()
    wanted = set(args.cases.split(","))
    byte_compile()
    base = args.dir or Path(__file__).resolve().parent / "work"
    base.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=base))
    temperatures = ["warm", "cold"] if can_drop_caches() else ["warm"]
    if "cold" not in temperatures:
        print("cold runs skipped: cannot drop the page cache (needs root: sync; echo 3 > /proc/sys/vm/drop_caches)")
    try:
        print(f"images ({PERCENT}% random data in 1 MiB pieces):")
        images = make_images(scratch, args.size_gib * GiB, wanted)
        cases: list[Case] = []
        for name in ("dense", "sparse"):
            if name in wanted:
                cases.append(snapshot_case(name, images[name], scratch))
        if "dynamic" in wanted:
            cases.append(convert_case(images["dynamic"], scratch))
        for case in cases:
            operation = "convert --to fixed" if case.name == "dynamic" else "snapshot"
            print(f"\n== {case.name}: {operation}")
            written = verify(case)
            for temperature in temperatures:
                results = measure(case, written, scratch, args.rounds, temperature == "cold")
                print_table(f"{case.name} ({operation}), {temperature}: {args.rounds} interleaved rounds", results)
                judge(case, temperature, results)
        return finish(args.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
