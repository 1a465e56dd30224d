"""Shared benchmark helpers: run commands interleaved, measure wall time and peak RSS of each
child process, print medians and ratios against targets.

Peak RSS is GNU time's %M for the command alone: the rusage of a child forked straight from
this Python process would also count the memory of this process, inherited until exec.
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

GNU_TIME = "/usr/bin/time"
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass
class Samples:
    """Measurements of one command: wall seconds and peak RSS bytes per run."""

    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak_rss(self) -> int:
        return max(self.rss)


def run_measured(argv: Sequence[str]) -> tuple[float, int]:
    """Run `argv` to completion; (wall seconds, its peak RSS in bytes). Fails loudly."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", rss.name, *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"benchmark command failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr}")
        return wall, int(rss.read().split()[-1]) * 1024  # GNU time reports KiB


def interleaved(
    commands: dict[str, Sequence[str]],
    repeats: int,
    between: Callable[[], None] = lambda: None,
    warmup: int = 1,
) -> dict[str, Samples]:
    """Run every command `warmup` + `repeats` times, round-robin (rotating the order each round
    so no command always follows the same one); `between` runs after every command."""
    names = list(commands)
    results = {name: Samples() for name in names}
    for round_no in range(warmup + repeats):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            wall, rss = run_measured(commands[name])
            between()
            if round_no >= warmup:
                results[name].walls.append(wall)
                results[name].rss.append(rss)
    return results


def print_table(title: str, results: dict[str, Samples]) -> None:
    print(f"\n{title}")
    print(f"  {'command':<28} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS':>10}")
    for name, s in results.items():
        print(f"  {name:<28} {s.wall:9.3f} {min(s.walls):8.3f} {max(s.walls):8.3f} {s.peak_rss / MiB:7.1f} MiB")


def check(label: str, value: float, target: float, unit: str = "x", higher_is_better: bool = False) -> bool:
    """Print one measured value against its target; True when the target is met."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"  {'PASS' if ok else 'MISS'}  {label:<52} {value:8.2f}{unit}  (target {sign} {target}{unit})")
    return ok


def ratio(results: dict[str, Samples], a: str, b: str) -> float:
    return results[a].wall / results[b].wall
