"""Shared benchmark helpers: run commands interleaved, measure wall time and peak RSS of each
child process, print medians and ratios against targets.

The measuring itself (interleaving, medians, peak RSS of the command alone, ratios) lives in
vhdtool.workflows.bench.measure, shared with `vhdtool bench`; its names are re-exported here. What
print_table and check show is also kept, for a script's `--json FILE` (benchmarks/run_all.py).
"""

from __future__ import annotations

import argparse
import compileall
import json
from pathlib import Path

import vhdtool

from vhdtool.workflows.bench.measure import Samples, interleaved, ratio, run_measured  # noqa: F401

MiB = 1024 * 1024
GiB = 1024 * MiB
SHOWN: dict[str, list[dict]] = {"tables": [], "checks": []}  # what was printed, for --json


def byte_compile() -> None:
    """Compile vhdtool's modules to .pyc, as `pip install` does, so that the measured commands
    load bytecode like an installed vhdtool. Without it, where PYTHONDONTWRITEBYTECODE is set
    (this sandbox sets it) an editable install has every command compile each module it
    imports again: 15-40 ms a command, which is not the tool's cost."""
    compileall.compile_dir(Path(vhdtool.__file__).parent, quiet=1)


def print_table(title: str, results: dict[str, Samples]) -> None:
    SHOWN["tables"].append({"title": title, "commands": {name: s.as_dict() for name, s in results.items()}})
    print(f"\n{title}")
    print(f"  {'command':<28} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS':>10}")
    for name, s in results.items():
        print(f"  {name:<28} {s.wall:9.3f} {min(s.walls):8.3f} {max(s.walls):8.3f} {s.peak_rss / MiB:7.1f} MiB")


def check(label: str, value: float, target: float, unit: str = "x", higher_is_better: bool = False) -> bool:
    """Print one measured value against its target; True when the target is met."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    SHOWN["checks"].append({"label": label, "value": value, "target": target, "unit": unit.strip(),
                            "higher_is_better": higher_is_better, "met": ok})
    print(f"  {'PASS' if ok else 'MISS'}  {label:<52} {value:8.2f}{unit}  (target {sign} {target}{unit})")
    return ok


def finish(json_path: Path | None) -> int:
    """End a script: how many targets were met, the --json file, and the exit code (1 when a
    target was missed)."""
    met = [c["met"] for c in SHOWN["checks"]]
    print(f"\n{sum(met)}/{len(met)} targets met")
    write_json(json_path)
    return 0 if all(met) else 1


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every table and target shown to FILE as JSON (for run_all.py)")


def write_json(path: Path | None) -> None:
    """Write what print_table and check showed to `path` (nothing without --json)."""
    if path is not None:
        path.write_text(json.dumps(SHOWN, indent=2) + "\n")
