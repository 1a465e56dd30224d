#!/usr/bin/env python3
"""Benchmark `vhdtool snapshot` against cp and qemu-img, and the engine's zero scan.

Generates, in a scratch folder that is deleted afterwards:
  (a) an 8 GiB fixed VHD, sparse, with ~5% random data in scattered 1 MiB pieces;
  (b) the same image fully allocated (the holes written as zeros).
Then runs, interleaved, `vhdtool snapshot`, `cp --sparse=auto`, `cp --sparse=always` and
`qemu-img convert -f raw -O raw` on each (all produce a byte-identical copy of the file),
printing median wall times, peak RSS, the ratios (context: issue 17 retired their targets for
bench_scale.py's), and the zero scan throughput in GB/s on cached data.

Usage: python benchmarks/bench_snapshot.py [--dir SCRATCH] [--repeats N] [--size-gib N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import GiB, MiB, add_json_option, byte_compile, check, finish, interleaved, print_table, ratio  # noqa: E402
from vhdtool.workflows.bench.cases import vhdtool  # noqa: E402
from vhdtool.workflows.create import create  # noqa: E402
from vhdtool.engine.pipeline import CHUNK, PAGE, nonzero_pages, nonzero_runs, scan  # noqa: E402
from vhdtool.format.vhd.footer import DiskType  # noqa: E402
from vhdtool.disk.image import open_disk  # noqa: E402
from vhdtool.workflows.snapshot import snapshot  # noqa: E402

DATA_FRACTION = 0.05
PIECE = MiB


def make_sparse(path: Path, size: int, seed: int = 1) -> int:
    """The (a) image: returns how many bytes of random data it holds."""
    create(path, size, DiskType.FIXED)
    rng = random.Random(seed)
    pieces = rng.sample(range(size // PIECE), int(size * DATA_FRACTION) // PIECE)
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in sorted(pieces):
            os.pwrite(fd, rng.randbytes(PIECE), index * PIECE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(pieces) * PIECE


def make_dense(sparse: Path, dense: Path) -> None:
    """The (b) image: every hole of (a) written as zeros."""
    subprocess.run(["cp", "--sparse=never", str(sparse), str(dense)], check=True)
    subprocess.run(["sync", str(dense)], check=True)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def commands(src: Path, dst: Path) -> dict[str, list[str]]:
    return {
        # this interpreter and the code byte_compile() compiled, not whatever `vhdtool` PATH finds
        # first (a pyenv shim there is a shell script that costs ~0.1 s a run)
        "vhdtool snapshot": vhdtool("snapshot", str(src), "-o", str(dst)),
        "cp --sparse=auto": ["cp", "--sparse=auto", str(src), str(dst)],
        "cp --sparse=always": ["cp", "--sparse=always", str(src), str(dst)],
        "qemu-img convert raw": ["qemu-img", "convert", "-f", "raw", "-O", "raw", str(src), str(dst)],
        # cp and qemu-img convert (cache=unsafe) leave their output in the page cache; vhdtool
        # fsyncs its own before giving it its name.
        "cp --sparse=auto + sync": ["sh", "-c", f'cp --sparse=auto "{src}" "{dst}" && sync "{dst}"'],
    }


def verify_outputs(src: Path, dst: Path, cmds: dict[str, list[str]]) -> None:
    """Every tool's output is byte-identical to the source; print what each allocates."""
    print(f"  outputs (allocated on disk; source {allocated(src) / MiB:,.1f} MiB):")
    for name, argv in cmds.items():
        subprocess.run(argv, check=True, capture_output=True)
        subprocess.run(["cmp", str(src), str(dst)], check=True)
        print(f"    {name:<28} identical, {allocated(dst) / MiB:9,.1f} MiB")
        dst.unlink()


def bench_case(title: str, src: Path, dst: Path, repeats: int) -> dict:
    cmds = commands(src, dst)
    print(f"\n== {title}: {src.stat().st_size / GiB:.0f} GiB, {allocated(src) / MiB:,.0f} MiB allocated")
    verify_outputs(src, dst, cmds)
    results = interleaved(cmds, repeats, between=lambda: dst.unlink(missing_ok=True))
    print_table(f"{title}: {repeats} interleaved runs", results)
    return results


def in_process(src: Path, dst: Path, repeats: int) -> float:
    """Median seconds of snapshot() called in this process: the engine, sink and fsync
    without interpreter and CLI start-up."""
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot(src, dst)
        walls.append(time.perf_counter() - start)
        dst.unlink()
    return statistics.median(walls)


def startup_floor(scratch: Path, repeats: int) -> float:
    """Median wall seconds of `vhdtool snapshot` on a 1 MiB image: start-up and exit alone."""
    tiny, out = scratch / "tiny.vhd", scratch / "tiny-out.vhd"
    create(tiny, MiB, DiskType.FIXED)
    results = interleaved({"tiny": commands(tiny, out)["vhdtool snapshot"]}, repeats,
                          between=lambda: out.unlink(missing_ok=True))
    return results["tiny"].wall


def scan_rate(path: Path, workers: int) -> float:
    """GB/s of the engine's full scan (allocation, pread, zero detection) of a cached file."""
    with open_disk(path, raw=True) as disk:
        for _ in nonzero_runs(scan(disk, workers=workers)):  # warm the page cache
            pass
        start = time.perf_counter()
        for _ in nonzero_runs(scan(disk, workers=workers)):
            pass
        return disk.virtual_size / (time.perf_counter() - start) / 1e9


def page_scan_rate() -> float:
    """GB/s of the zero detection alone, one core, on a buffer in cache (half data, half zero)."""
    words = np.zeros(CHUNK // 8, dtype=np.uint64)
    words[::3] = np.random.default_rng(1).integers(1, 2**63, size=len(words[::3]), dtype=np.uint64)
    words[: len(words) // 2] = 0
    scratch = np.empty(CHUNK // PAGE, dtype=np.uint64)
    rounds = 500
    start = time.perf_counter()
    for _ in range(rounds):
        nonzero_pages(words, PAGE, scratch)
    return CHUNK * rounds / (time.perf_counter() - start) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-gib", type=int, default=8)
    add_json_option(parser)
    args = parser.parse_args()
    byte_compile()
    scratch = Path(tempfile.mkdtemp(prefix="vhdtool-bench-", dir=args.dir))
    try:
        sparse, dense, dst = scratch / "sparse.vhd", scratch / "dense.vhd", scratch / "out.vhd"
        data = make_sparse(sparse, args.size_gib * GiB)
        make_dense(sparse, dense)
        print(f"images: {args.size_gib} GiB fixed VHDs, {data / MiB:,.0f} MiB random data in 1 MiB pieces")
        a = bench_case("(a) sparse source", sparse, dst, args.repeats)
        b = bench_case("(b) dense mostly-zero source", dense, dst, args.repeats)
        print("\nwhere vhdtool's time goes")
        floor = startup_floor(scratch, args.repeats)
        print(f"  start-up + exit floor (snapshot of a 1 MiB image): {floor:.3f} s")
        for name, src, res in (("(a)", sparse, a), ("(b)", dense, b)):
            inside = in_process(src, dst, args.repeats)
            print(f"  {name} snapshot() in process {inside:.3f} s vs CLI {res['vhdtool snapshot'].wall:.3f} s;"
                  f" in-process / cp --sparse=auto {inside / res['cp --sparse=auto'].wall:.2f}x,"
                  f" / cp --sparse=always {inside / res['cp --sparse=always'].wall:.2f}x,"
                  f" / qemu-img {inside / res['qemu-img convert raw'].wall:.2f}x")
        print("\nzero scan on cached data")
        page = page_scan_rate()
        one, two = scan_rate(dense, 1), scan_rate(dense, 2)
        print(f"  page zero detection alone (1 core, in cache): {page:6.1f} GB/s")
        print(f"  engine scan of cached dense image, 1 worker:  {one:6.1f} GB/s")
        print(f"  engine scan of cached dense image, 2 workers: {two:6.1f} GB/s")
        print("\ntargets")
        v = "vhdtool snapshot"
        # Context only, no targets (issue 17 retired them: bench_scale.py measures at scale)
        for label, case, peer in (("(a)", a, "cp --sparse=auto"), ("(a)", a, "qemu-img convert raw"),
                                  ("(b)", b, "qemu-img convert raw"), ("(b)", b, "cp --sparse=always")):
            print(f"  context: {label} vhdtool / {peer} = {ratio(case, v, peer):.2f}x")
        check("zero scan per core (engine, 1 worker)", one, 5.0, " GB/s", higher_is_better=True)
        check("(a) vhdtool peak RSS", a[v].peak_rss / MiB, 150, " MiB")
        check("(b) vhdtool peak RSS", b[v].peak_rss / MiB, 150, " MiB")
        print(f"  context: (a) vhdtool / (cp --sparse=auto + sync) = {ratio(a, v, 'cp --sparse=auto + sync'):.2f}x")
        return finish(args.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
