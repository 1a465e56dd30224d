"""`vhdtool map`: where the virtual disk holds non-zero data, in the spirit of
`qemu-img map --output=json`.

Finer than qemu-img: an allocated block (or file extent) is read and only its non-zero pages
count as data. Runs are streamed as they are found, so memory stays bounded on any disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from vhdtool.engine.pipeline import CHUNK, PAGE, check_granularity, nonzero_runs, progress_bar, scan
from vhdtool.disk.image import Disk, open_disk
from vhdtool.errors import VhdError
from vhdtool.ranges import Range
from vhdtool.units import format_size, plural


@dataclass
class MapSummary:
    virtual_size: int
    granularity: int
    data_bytes: int = 0
    run_count: int = 0

    @property
    def data_percent(self) -> float:
        return 100 * self.data_bytes / self.virtual_size if self.virtual_size else 0.0

    def add(self, run: Range) -> None:
        self.data_bytes += run[1] - run[0]
        self.run_count += 1

    def text(self) -> str:
        return (
            f"{plural(self.run_count, 'run')}, {format_size(self.data_bytes)} of data: "
            f"{self.data_percent:.2f}% of the {format_size(self.virtual_size)} virtual disk"
        )


def check_map_granularity(granularity: int) -> None:
    """At most one read unit: the scan's buffers grow to a whole page, so a larger page would
    make memory grow with the option (4 GiB pages took 4.2 GB; 1 TiB could not be allocated)."""
    check_granularity(granularity)
    if granularity > CHUNK:
        raise VhdError(f"granularity {granularity:,} is over {format_size(CHUNK)}, the unit map reads in")


def data_runs(disk: Disk, granularity: int = PAGE) -> Iterator[Range]:
    """The non-zero runs of the virtual disk, with a progress bar on a terminal."""
    with progress_bar(disk, f"map {disk.path.name}", granularity) as update:
        yield from nonzero_runs(scan(disk, granularity=granularity, progress=update))


def write_map(image: str | os.PathLike, out: TextIO, *, granularity: int = PAGE, as_json: bool = False) -> MapSummary:
    """Stream the map of `image` to `out`, as a table or as JSON."""
    check_map_granularity(granularity)
    with open_disk(image) as disk:
        summary = MapSummary(disk.virtual_size, granularity)
        runs = data_runs(disk, granularity)
        if as_json:
            write_json(str(disk.path), runs, summary, out)
        else:
            write_table(runs, summary, out)
    return summary


def write_table(runs: Iterator[Range], summary: MapSummary, out: TextIO) -> None:
    out.write(f"{'start':>18} {'length':>18}\n")
    for run in runs:
        summary.add(run)
        out.write(f"{run[0]:>18,} {run[1] - run[0]:>18,}\n")
    out.write(summary.text() + "\n")


def write_json(path: str, runs: Iterator[Range], summary: MapSummary, out: TextIO) -> None:
    head = {"image": path, "virtual_size": summary.virtual_size, "granularity": summary.granularity}
    out.write(json.dumps(head, indent=2)[:-2] + ',\n  "runs": [')
    for run in runs:
        out.write("," if summary.run_count else "")
        summary.add(run)
        out.write(f'\n    {{"start": {run[0]}, "length": {run[1] - run[0]}}}')
    tail = {"data_bytes": summary.data_bytes, "data_percent": round(summary.data_percent, 4),
            "run_count": summary.run_count}
    out.write("\n  ],\n" + json.dumps(tail, indent=2)[2:] + "\n")
