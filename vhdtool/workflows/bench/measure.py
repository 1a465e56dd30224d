"""Run commands interleaved and measure each: wall time and the peak memory of the command
alone. One implementation for `vhdtool bench` and the scripts in benchmarks/ (through
benchmarks/common.py), so that every published number is measured the same way.

Peak memory is the child's ru_maxrss from wait4, taken by a small intermediate parent: the
rusage of a child forked straight from this Python process would also count this process's
memory, inherited until exec (Linux keeps the high-water mark across exec). GNU time is that
parent when it is installed (about 1 MiB of its own); otherwise a minimal Python launcher is
(about 7 MiB: a command using less is reported at that floor).
"""

from __future__ import annotations

import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vhdtool.errors import VhdError

GNU_TIME = "/usr/bin/time"
# Forks the command from a fresh, small interpreter and writes its ru_maxrss (KiB) to argv[1].
LAUNCHER = """\
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


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

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {"median_s": self.wall, "min_s": min(self.walls), "max_s": max(self.walls),
                "walls_s": self.walls, "peak_rss_bytes": self.peak_rss}


def rss_meter() -> str:
    """Which parent measures peak memory here: "GNU time" or "python launcher"."""
    return "GNU time" if os.access(GNU_TIME, os.X_OK) else "python launcher"


def wrapped(argv: Sequence[str], report: str) -> list[str]:
    """`argv` under the intermediate parent that writes its peak RSS (KiB) to `report`."""
    if rss_meter() == "GNU time":
        return [GNU_TIME, "-f", "%M", "-o", report, *argv]
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, report, *argv]


def failure(argv: Sequence[str], code: int, stderr: str) -> VhdError:
    """One line: the command (SAS signatures redacted) and the last line it printed."""
    from vhdtool.azure.location import redact

    said = stderr.strip().splitlines()
    return VhdError(redact(f"benchmark command failed (exit {code}): {shlex.join(argv)}"
                           + (f": {said[-1]}" if said else "")))


def run_measured(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[float, int]:
    """Run `argv` (with environment `env`, default ours) to completion; (wall seconds, its peak
    RSS in bytes). A failure is a one-line VhdError with the command and its last stderr line."""
    with tempfile.NamedTemporaryFile("r", prefix="vhdtool-rss-") as report:
        start = time.perf_counter()
        # Its own process group: on Ctrl-C or an error here, the command and anything it
        # started are killed, not left writing into a folder being removed.
        with subprocess.Popen(wrapped(argv, report.name), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env, process_group=0) as proc:
            try:
                _, stderr = proc.communicate()
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
        wall = time.perf_counter() - start
        if proc.returncode:
            raise failure(argv, proc.returncode, stderr)
        return wall, int(report.read().split()[-1]) * 1024


def williams_order(n: int, round_no: int) -> list[int]:
    """Round `round_no`'s order of `n` commands, from a Williams design: over a whole cycle of
    n rounds (2n when n is odd) every command directly follows every other one equally often.
    Why: this VM's disk carries the last command's read pattern into the next one (a cold
    buffered read of 16 GiB took 16-22 s right after a pass of direct reads, 8-10 s
    otherwise), and a plain rotation keeps each command behind the same one, so one tool
    would always pay for it. Rows: 0, 1, n-1, 2, n-2, ... plus the row number (mod n); for
    odd n each row is followed by its mirror, so short runs vary the order from round two."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    row, mirrored = (round_no // 2 % n, round_no % 2 == 1) if n % 2 else (round_no % n, False)
    order = [(i + row) % n for i in first]
    return order[::-1] if mirrored else order


def interleaved(
    commands: dict[str, Sequence[str]],
    repeats: int,
    between: Callable[[], None] = lambda: None,
    warmup: int = 1,
    done: Callable[[], None] = lambda: None,
) -> dict[str, Samples]:
    """Run every command `warmup` + `repeats` times, round-robin in the orders of
    `williams_order`; `between` runs after every command (it removes outputs), then a sync,
    so that no command pays for the writeback another one left (a cp that leaves 8 GiB
    unflushed slows whatever runs next); `done` after every run (a progress bar's tick)."""
    names = list(commands)
    results = {name: Samples() for name in names}
    for round_no in range(-warmup, repeats):  # the measured rounds start the design's cycle
        for name in (names[i] for i in williams_order(len(names), round_no)):
            wall, rss = run_measured(commands[name])
            between()
            os.sync()
            done()
            if round_no >= 0:
                results[name].walls.append(wall)
                results[name].rss.append(rss)
    return results


def ratio(results: dict[str, Samples], a: str, b: str) -> float:
    """Median wall time of `a` over that of `b` (below 1: `a` is faster)."""
    return results[a].wall / results[b].wall
