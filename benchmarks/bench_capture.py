#!/usr/bin/env python3
"""`vhdtool image capture` of three disks against `vhdtool snapshot` of one, on a local store.

Issue 7 target: capturing three 4 GiB sparse disks takes no longer than snapshotting the
largest one twice (the disks are copied in parallel). Generates, in a scratch folder deleted
afterwards, three 4 GiB fixed VHDs, sparse, each with ~5% random data in scattered 1 MiB
pieces (benchmarks/bench_snapshot.py's images, other seeds). Then runs, interleaved (the
store and the snapshot removed between runs): `vhdtool snapshot` of one disk, `vhdtool image
capture` of the three (os + 2 data disks) as is and with --md5, and three parallel `cp
--sparse=auto` followed by `sync` (the same bytes written and flushed: the disk's floor).
A local capture sets no Content-MD5 by default; --md5 hashes each copy while copying it,
every byte of the disk, holes included (MD5 is sequential: zeros cannot be skipped), so that
run is bound by MD5's speed, not the copy's: it is shown for scale, with this machine's
hashing rate, not held to the target.

Usage: python benchmarks/bench_capture.py [--size-gib 4] [--repeats 7] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_snapshot import make_sparse  # noqa: E402
from common import GiB, MiB, add_json_option, byte_compile, check, finish, interleaved, print_table  # noqa: E402


def md5_rate() -> float:
    """GB/s of hashlib's MD5 on one core (what Content-MD5 of a copy costs per byte)."""
    zeros, md5 = bytes(MiB), hashlib.md5()
    start = time.perf_counter()
    for _ in range(256):
        md5.update(zeros)
    return 256 * MiB / (time.perf_counter() - start) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    add_json_option(parser)
    args = parser.parse_args()
    byte_compile()
    scratch = Path(tempfile.mkdtemp(prefix="vhdtool-bench-", dir=args.dir))
    try:
        disks = [scratch / f"disk{i}.vhd" for i in range(3)]
        data = [make_sparse(path, args.size_gib * GiB, seed=10 + i) for i, path in enumerate(disks)]
        print(f"disks: 3 x {args.size_gib} GiB fixed VHDs, {sum(data) / MiB:,.0f} MiB random data in 1 MiB pieces")
        store, copy = scratch / "store", scratch / "snapshot.vhd"
        vhdtool = [sys.executable, "-m", "vhdtool.cli"]
        capture = [*vhdtool, "image", "capture", "bench", "--os-disk", str(disks[0]), "--data-disk",
                   f"0={disks[1]}", "--data-disk", f"1={disks[2]}", "--os-type", "linux", "--os-state",
                   "generalized", "--store", str(store)]
        cp_copies = [scratch / f"cp{i}.vhd" for i in range(3)]
        parallel_cp = " & ".join(f'cp --sparse=auto "{d}" "{c}"' for d, c in zip(disks, cp_copies))
        commands = {
            "snapshot (one disk)": [*vhdtool, "snapshot", str(disks[0]), "-o", str(copy)],
            "capture (3 disks)": capture,
            "capture (3 disks) --md5": [*capture, "--md5"],
            # the same three copies by cp, flushed as vhdtool flushes its own: the disk's floor
            "3 x cp --sparse=auto + sync": ["sh", "-c", f"{parallel_cp} & wait; sync"],
        }

        def clean() -> None:
            shutil.rmtree(store, ignore_errors=True)
            for path in (copy, *cp_copies):
                path.unlink(missing_ok=True)

        results = interleaved(commands, args.repeats, between=clean)
        print_table(f"{args.repeats} interleaved runs (after one warm-up)", results)
        snap = results["snapshot (one disk)"].wall
        print(f"\n  MD5 on this machine: {md5_rate():.2f} GB/s per core; a {args.size_gib} GiB disk is "
              f"{args.size_gib * GiB / 1e9 / md5_rate():.1f} s of hashing")
        print(f"  2 x snapshot = {2 * snap:.3f} s; 3 sequential snapshots would be ~{3 * snap:.3f} s")
        print(f"  capture --md5 / (2 x snapshot) = {results['capture (3 disks) --md5'].wall / (2 * snap):.2f}x "
              "(not a target: MD5-bound)")
        print(f"  capture / (3 x cp --sparse=auto + sync) = "
              f"{results['capture (3 disks)'].wall / results['3 x cp --sparse=auto + sync'].wall:.2f}x "
              "(context: the same bytes written and flushed by cp)")
        print("\ntargets")
        check("capture / (2 x snapshot of the largest)", results["capture (3 disks)"].wall / (2 * snap), 1.0)
        check("capture peak RSS", max(results[c].peak_rss for c in commands if c.startswith("capture")) / MiB, 150,
              " MiB")
        return finish(args.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
