"""One VHD, inspected once: every structural finding, the decoded structures, and for a
differencing image its resolved parent chain. `check` renders this; `open_disk` reads
through it."""

from __future__ import annotations

import os
from pathlib import Path

from vhdtool.disk.file import naming
from vhdtool.disk.parents import check_chain
from vhdtool.disk.vhd_rules.structure import Inspection, inspect_file
from vhdtool.format.vhd.footer import DiskType


def inspect_open(path: Path, fd: int, st: os.stat_result) -> Inspection:
    """Inspect an already opened file; the Inspection owns `fd` from here on."""
    try:
        with naming(path):
            inspection = inspect_file(path, fd, st)
            footer = inspection.footer
            if footer is not None and footer.disk_type == DiskType.DIFFERENCING and inspection.header is not None:
                check_chain(inspection)
    except BaseException:
        os.close(fd)
        raise
    return inspection

