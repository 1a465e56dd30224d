#!/usr/bin/env python3
"""Start-up of read-only commands against the interpreter's own.

Issue 17 target: `vhdtool --help` and `vhdtool info` of a fixed VHD take <= 2x the wall time
of `python3 -c pass` (the same interpreter); `check` of the same image is shown for context.
The image is fixtures/azure-wa-fixed-4m.vhd. Commands run interleaved after a warm-up,
medians; vhdtool's modules are byte-compiled first, as pip install does.
Usage: python benchmarks/bench_startup.py [--repeats 30] [--json FILE] [--dir IGNORED]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_json_option, byte_compile, check, finish, interleaved, print_table  # noqa: E402

FIXED = Path(__file__).resolve().parent.parent / "fixtures" / "azure-wa-fixed-4m.vhd"
TARGET = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=None, help="unused: nothing is written (run_all.py passes one)")
    add_json_option(ap)
    args = ap.parse_args()
    byte_compile()
    vhdtool = [sys.executable, "-m", "vhdtool.cli"]
    commands = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "vhdtool --help": [*vhdtool, "--help"],
        "vhdtool info (fixed)": [*vhdtool, "info", str(FIXED)],
        "vhdtool check (fixed)": [*vhdtool, "check", str(FIXED)],
    }
    results = interleaved(commands, args.repeats, warmup=2)
    print_table(f"start-up, {args.repeats} interleaved rounds", results)
    base = results["python3 -c pass"].wall
    for name in ("vhdtool --help", "vhdtool info (fixed)"):
        check(f"{name} / python3 -c pass", results[name].wall / base, TARGET)
    print(f"  context: vhdtool check (fixed) / python3 -c pass = {results['vhdtool check (fixed)'].wall / base:.2f}x")
    return finish(args.json)


if __name__ == "__main__":
    sys.exit(main())
