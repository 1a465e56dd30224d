"""`vhdtool bench`: is vhdtool fast on this machine, against the tools already here?

Makes the synthetic images in a temporary folder, measures every case (vhdtool and each peer
interleaved, median of N runs, after a warm-up run so every tool reads from the page cache),
and removes everything it created, on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vhdtool.workflows.bench import machine
from vhdtool.workflows.bench.cases import OURS, Case, find_peers, image_cases
from vhdtool.workflows.bench.images import PIECE, write_images
from vhdtool.workflows.bench.measure import Samples, interleaved, ratio, rss_meter
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import MAX_VHD_SIZE
from vhdtool.units import format_size

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass(frozen=True)
class BenchOptions:
    size: int  # virtual size of each image
    data_percent: float  # share of it holding random data
    runs: int  # measured runs per command (plus one warm-up)
    folder: Path  # where the temporary folder is made
    blob: str | None = None  # blob URL (with SAS) to measure uploads against


@dataclass(frozen=True)
class Row:
    """One tool on one case: its samples, or None when its program is not on PATH."""

    image: str
    operation: str
    tool: str
    samples: Samples | None
    ratio: float | None = None  # vhdtool's median wall time over this tool's
    missing: str | None = None  # the program not found


@dataclass
class BenchReport:
    options: BenchOptions
    peers: dict[str, str | None]
    machine: dict[str, object]
    rss_meter: str
    images: list[dict[str, object]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


def check_options(options: BenchOptions) -> None:
    if options.size < PIECE or options.size % PIECE or options.size > MAX_VHD_SIZE:
        raise VhdError(f"--size {options.size:,} is not a whole number of MiB from 1 MiB to "
                       f"{format_size(MAX_VHD_SIZE)} (the largest dynamic VHD)")
    if not 0 <= options.data_percent <= 100:
        raise VhdError(f"--data {options.data_percent:g} is not a percentage between 0 and 100")
    if options.runs < 1:
        raise VhdError("--runs must be at least 1")
    if not options.folder.is_dir():
        raise VhdError("is not a folder", options.folder)
    data = options.size * options.data_percent / 100
    need = 2 * options.size + 2 * data  # the dense image, its largest copy, the other two images
    free = shutil.disk_usage(options.folder).free
    if free < need:
        raise VhdError(f"needs about {format_size(int(need))} free, has {format_size(free)}: "
                       "use a smaller --size or another --dir", options.folder)


def bar(total: int, label: str, unit: str) -> tqdm:
    """A tqdm bar on stderr (disabled when stderr is not a terminal)."""
    from tqdm import tqdm

    scaled = unit == "B"
    return tqdm(total=total, desc=label, unit=unit, unit_scale=scaled, unit_divisor=1024 if scaled else 1000,
                leave=False, disable=None)


def measure_case(case: Case, runs: int, tick: Callable[[], object]) -> list[Row]:
    """vhdtool and the peers on one case, interleaved; rows for every tool, missing ones too."""
    def remove_output() -> None:
        if case.output is not None:
            case.output.unlink(missing_ok=True)

    results = interleaved(case.commands, runs, between=remove_output, done=tick)
    kind, operation = case.image.kind, case.operation
    rows = [Row(kind, operation, tool, samples, None if tool == OURS else ratio(results, OURS, tool))
            for tool, samples in results.items()]
    return rows + [Row(kind, operation, tool, None, missing=program) for tool, program in case.missing.items()]


def bench(options: BenchOptions) -> BenchReport:
    """Measure every case; the temporary folder (and any blob) is gone when this returns."""
    check_options(options)
    peers = find_peers()
    report = BenchReport(options, peers, machine.describe(options.folder, peers), rss_meter())
    scratch = Path(tempfile.mkdtemp(prefix="vhdtool-bench-", dir=options.folder))
    try:
        with ExitStack() as stack:
            blob = None
            if options.blob is not None:
                from vhdtool.workflows.bench.blob import scratch_blob

                blob = stack.enter_context(scratch_blob(options.blob))
            with bar(options.size, "writing images", "B") as shown:
                images = write_images(scratch, options.size, options.data_percent, shown.update)
            report.images = [{"kind": i.kind, "file_size": i.path.stat().st_size, "allocated": i.allocated}
                             for i in images]
            cases = [case for image in images for case in image_cases(image, scratch / "out.vhd", peers, blob)]
            with bar(sum(len(c.commands) for c in cases) * (options.runs + 1), "measuring", "run") as shown:
                for case in cases:
                    shown.set_postfix_str(f"{case.image.kind}: {case.operation}")
                    report.rows += measure_case(case, options.runs, shown.update)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
