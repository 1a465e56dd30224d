"""Progress of long work on stderr: a bar on a terminal, a line at a steady interval elsewhere.

Logs of a CI job or `nohup` get one line per INTERVAL seconds (bytes done, rate, ETA) instead
of a bar's carriage returns; work shorter than the interval prints nothing there. The CLI's
`--quiet` sets `quiet`, which silences both.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vhdtool.units import format_rate, format_short

if TYPE_CHECKING:
    from vhdtool.engine.pipeline import Source

quiet = False  # set by the CLI's --quiet
# Seconds between lines when stderr is not a terminal; the environment variable lets a CI log
# (or a test) ask for another pace.
INTERVAL = float(os.environ.get("VHDTOOL_PROGRESS_INTERVAL", "10"))


class LineReporter:
    """The update callable for a non-terminal stderr: a line once per `interval` seconds."""

    def __init__(self, label: str, total: Callable[[], int], interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.count_total, self.interval, self.clock = label, total, interval, clock
        self.started = self.last = clock()
        self.done = 0
        self.total: int | None = None  # counted at the first line: short work never pays for it

    def __call__(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        if self.total is None:
            self.total = self.count_total()
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"vhdtool: {self.label}: {format_short(self.done)} of {format_short(self.total)}"
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        text += f", {format_rate(rate)}"
        if rate > 0 and self.total:
            minutes, seconds = divmod(round(max(self.total - self.done, 0) / rate), 60)
            text += f", ETA {minutes // 60}:{minutes % 60:02}:{seconds:02}"  # hours past 24 too
        return text

    @staticmethod
    def write(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


@contextmanager
def progress_bar(source: Source, label: str, granularity: int) -> Iterator[Callable[[int], None] | None]:
    """Yields the update callable for `scan(progress=...)` over the bytes it reads, or None
    when `quiet` (then nothing is imported or counted)."""
    if quiet:
        yield None
        return
    from vhdtool.engine.pipeline import scanned_bytes  # the pipeline delegates here

    if not sys.stderr.isatty():
        yield LineReporter(label, lambda: scanned_bytes(source, granularity), INTERVAL)
        return
    from tqdm import tqdm

    total = scanned_bytes(source, granularity)
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
        yield bar.update
