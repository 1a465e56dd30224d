#!/usr/bin/env python3
"""convert --to fixed against qemu-img convert, on an 8 GiB dynamic VHD ~10% full.

The image is made by qemu-img/qemu-io (1 MiB pieces at seeded random places), converted by
both tools in one run, interleaved, outputs removed between runs. Kept as context: issue 17
retired its speed target (0.8x qemu-img, set on images where start-up decides the ratio) for
bench_scale.py's; peak RSS <= 150 MiB stays.
qemu-img convert writes its output with cache=unsafe (never flushed: its only fdatasync is
when it creates the image) while vhdtool fsyncs its output before giving it its name, so
`qemu-img convert -t writeback` (flushed when closed) is run too, for context.
Usage: python benchmarks/bench_convert.py [--size-gib 8] [--repeats 3] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GiB, MiB, add_json_option, byte_compile, check, finish, interleaved, print_table, ratio  # noqa: E402


def make_image(path: Path, size: int, fraction: float, seed: int = 1, fmt: str = "vpc") -> int:
    """A qemu dynamic image (VHD, or `fmt`) with `fraction` of its size written in 1 MiB pieces;
    returns bytes written."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)], check=True)
    rng = random.Random(seed)
    slots = rng.sample(range(size // MiB - 1), int(size * fraction) // MiB)
    cmds = [f"write -P {1 + i % 255} {slot * MiB} 1M" for i, slot in enumerate(sorted(slots))]
    for i in range(0, len(cmds), 400):  # qemu-io runs every -c in one process
        args = [a for c in cmds[i : i + 400] for a in ("-c", c)]
        subprocess.run(["qemu-io", "-f", fmt, *args, str(path)], check=True, stdout=subprocess.DEVNULL)
    return len(slots) * MiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    add_json_option(ap)
    args = ap.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vhdtool-bench-") as tmp:
        tmp = Path(tmp)
        src, ours, peer = tmp / "src.vhd", tmp / "ours.vhd", tmp / "qemu.vhd"
        written = make_image(src, int(args.size_gib * GiB), 0.10)
        print(f"source: {args.size_gib:g} GiB dynamic VHD (qemu-img), {written / MiB:.0f} MiB written, "
              f"{src.stat().st_size / MiB:.0f} MiB file")
        commands = {
            "vhdtool convert --to fixed": [sys.executable, "-m", "vhdtool.cli", "convert", str(src), str(ours),
                                           "--to", "fixed"],
            "qemu-img convert -O vpc fixed": ["qemu-img", "convert", "-f", "vpc", "-O", "vpc", "-o",
                                              "subformat=fixed", str(src), str(peer)],
            "qemu-img ... -t writeback": ["qemu-img", "convert", "-t", "writeback", "-f", "vpc", "-O", "vpc", "-o",
                                          "subformat=fixed", str(src), str(peer)],
        }
        results = interleaved(commands, args.repeats, between=lambda: [p.unlink(missing_ok=True) for p in (ours, peer)])
        print_table("convert dynamic -> fixed", results)
        names = list(commands)
        # Context only, no target (issue 17 retired it: bench_scale.py measures convert at scale)
        print(f"  context: vhdtool / qemu-img (unflushed) {ratio(results, names[0], names[1]):.2f}x, "
              f"/ qemu-img -t writeback {ratio(results, names[0], names[2]):.2f}x")
        check("vhdtool peak RSS", results["vhdtool convert --to fixed"].peak_rss / MiB, 150, " MiB")
    return finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
