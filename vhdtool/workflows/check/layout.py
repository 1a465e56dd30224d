"""The partition table of an image that `info` or `check` already opened: read through that
opening (no second parse), and only when the disk it describes can be read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vhdtool.disk.partitions import Layout, read_layout
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import DiskType

if TYPE_CHECKING:
    from vhdtool.disk.vhd_rules.structure import Inspection


@dataclass(frozen=True)
class FlatView:
    """The first `virtual_size` bytes of an open file as a disk (fixed VHD, raw image), without
    the engine's reader: info and check of a fixed VHD import no numpy (start-up, #17)."""

    fd: int
    virtual_size: int

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset).ljust(length, b"\0")  # past EOF: zeros, as the reader


def inspection_layout(inspection: Inspection) -> Layout | None:
    """The layout of an inspected VHD, None when its findings make the disk unreadable."""
    from vhdtool.disk.vhd_rules.structure import refuse_unreadable

    try:
        refuse_unreadable(inspection)
    except VhdError:
        return None
    footer = inspection.footer
    assert footer is not None  # refuse_unreadable refuses a file without one
    if footer.disk_type == DiskType.FIXED:
        return read_layout(FlatView(inspection.fd, footer.current_size))
    from vhdtool.disk.image import (
        disk_from,  # numpy: dynamic and differencing images only
    )

    return read_layout(disk_from(inspection))  # shares the inspection's open files
