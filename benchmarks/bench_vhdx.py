#!/usr/bin/env python3
"""VHDX to an Azure-ready fixed VHD: `vhdtool prepare` against `qemu-img convert`.

Issue 15 target: a 32 GiB VHDX with 10% data (qemu-img/qemu-io: 1 MiB pieces at seeded
random places, qemu's default block size) made Azure-ready by `vhdtool prepare` in <= 0.8x
the wall time of `qemu-img convert -f vhdx -O vpc -o subformat=fixed,force_size=on -t
writeback` (flushed when closed, as vhdtool fsyncs its output before naming it); qemu-img's
default cache=unsafe (never flushed) is run too, for context. Both outputs are made once
first and compared (`qemu-img compare`, and the source against each), then the commands run
interleaved, outputs removed between runs. Scratch files are deleted afterwards.
Usage: python benchmarks/bench_vhdx.py [--size 32G] [--repeats 3] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import make_image  # noqa: E402
from common import (  # noqa: E402
    MiB, add_json_option, byte_compile, check, finish, interleaved, print_table, ratio)

from vhdtool.units import format_size, parse_size  # noqa: E402

QEMU_FIXED = ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]


def identical(*args: str) -> None:
    """`qemu-img compare ARGS` says identical, or the benchmark stops: a fast wrong answer is none."""
    done = subprocess.run(["qemu-img", "compare", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_vhdx: outputs differ: qemu-img compare {' '.join(args)}: "
                         f"{done.stdout.strip()} {done.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("32G"), help="virtual size (default 32G)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the scratch folder goes (default: temp)")
    add_json_option(ap)
    args = ap.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vhdtool-bench-") as tmp:
        tmp = Path(tmp)
        src, ours, peer = tmp / "src.vhdx", tmp / "ours.vhd", tmp / "qemu.vhd"
        written = make_image(src, args.size, 0.10, fmt="vhdx")
        print(f"source: {format_size(args.size)} VHDX (qemu-img), {written / MiB:,.0f} MiB written, "
              f"{src.stat().st_size / MiB:,.0f} MiB file")
        qemu = ["qemu-img", "convert", "-f", "vhdx", *QEMU_FIXED, str(src), str(peer)]
        commands = {
            "vhdtool prepare": [sys.executable, "-m", "vhdtool.cli", "prepare", str(src), "-o", str(ours)],
            "qemu-img convert -t writeback": [*qemu[:2], "-t", "writeback", *qemu[2:]],
            "qemu-img convert (unsafe)": qemu,
        }
        for name in list(commands)[:2]:
            subprocess.run(commands[name], check=True, stdout=subprocess.DEVNULL)
        identical("-f", "vpc", "-F", "vpc", str(ours), str(peer))
        identical("-f", "vhdx", "-F", "vpc", str(src), str(ours))
        print("outputs: identical (qemu-img compare: vhdtool's VHD = qemu-img's VHD = the VHDX)")

        def clean() -> None:
            for path in (ours, peer):
                path.unlink(missing_ok=True)

        clean()
        results = interleaved(commands, args.repeats, between=clean)
        print_table(f"VHDX -> Azure-ready fixed VHD, {args.repeats} interleaved runs (after one warm-up)",
                    results)
        names = list(commands)
        check("prepare / qemu-img convert -t writeback", ratio(results, names[0], names[1]), 0.8)
        print(f"  (prepare / qemu-img convert with cache=unsafe: {ratio(results, names[0], names[2]):.2f}x, "
              "for context)")
        check("vhdtool prepare peak RSS", results[names[0]].peak_rss / MiB, 150, " MiB")
    return finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
