"""What the OS disk's partition table tells `image capture`: the Hyper-V generation Azure must
boot it with, and the OS type.

A generation the disk's firmware cannot boot (BIOS-only as V2, UEFI-only as V1) is refused:
a VM created from it never starts. An OS type against the partition types is only warned
about: types are a hint (set by hand, and a disk may carry another system's partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vhdtool.disk.partitions import (
    V1,
    V2,
    Layout,
    contradiction,
    generation_findings,
    read_layout,
)
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import FOOTER_SIZE
from vhdtool.workflows.vmimage.names import OS_TYPES

if TYPE_CHECKING:
    from vhdtool.azure.location import BlobLocation
    from vhdtool.azure.pageblob import PageBlob

GENERATIONS = {g.lower(): g for g in (V1, V2)}  # --hyper-v-generation, as az spells it


@dataclass(frozen=True)
class Boot:
    os_type: str  # Windows or Linux
    generation: str | None  # V1, V2, or None: the disk cannot tell and none was given
    warnings: tuple[str, ...] = ()


class BlobDisk:
    """A page blob holding a fixed VHD as `read_layout` reads a disk: a ranged GET per table
    structure (MBR, GPT header, entry array), never the footer."""

    def __init__(self, blob: PageBlob, virtual_size: int):
        self.blob, self.virtual_size = blob, virtual_size

    def read(self, offset: int, length: int) -> bytes:
        return self.blob.get(offset, length)[0]


def blob_layout(source: BlobLocation) -> Layout:
    """The partition table of an OS disk blob, once it passed the check (a file's is read as
    it is checked: vmimage.disks)."""
    from vhdtool.azure.pageblob import PageBlob

    with PageBlob(source, connections=1, timeout=60.0) as blob:
        props = blob.properties()
        if props is None:
            raise VhdError("no such blob", source)
        return read_layout(BlobDisk(blob, props.size - FOOTER_SIZE))


def boot(layout: Layout, os_type: str | None, generation: str | None, disk: object) -> Boot:
    """The OS type and generation to record for `disk`, from the options (canonical
    spellings, None when not given) and its partition table; refuses what cannot be."""
    hint = OS_TYPES.get(layout.os_hint or "")
    warnings = []
    if os_type is None:
        if hint is None:
            raise VhdError(f"the OS type cannot be told from the partition types ({layout.reasons[1]}): "
                           "pass --os-type windows or linux", disk)
        os_type = hint
    elif hint is not None and hint != os_type:
        warnings.append(f"warning: {disk}: --os-type {os_type}, but the {layout.reasons[1]}; "
                        f"captured as {os_type}, as given")
    if generation is not None and (why := contradiction(layout, generation)):
        raise VhdError(why, disk)
    if generation is None and layout.generation is None:  # the message names the table's problems
        warnings.append(f"warning: {disk}: {generation_findings(layout)[0].message}; recorded as unknown: "
                        "pass --hyper-v-generation V1 or V2 to record it")
    else:  # e.g. a GPT for 4096-byte sectors: an Azure OS disk has 512-byte ones (4096: Ultra
        # and Premium SSD v2 only, which cannot be OS disks; Azure docs, disks-enable-ultra-ssd)
        warnings += [f"warning: {disk}: partition table problem: {problem}" for problem in layout.problems]
    return Boot(os_type, generation or layout.generation, tuple(warnings))
