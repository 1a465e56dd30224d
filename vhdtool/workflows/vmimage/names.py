"""Names and enumerations of VM images, as Azure spells them.

Image and VM names become file and blob names, so only a safe subset is taken: letters,
digits, '.', '_' and '-', starting with a letter or digit, no "..", at most 80 characters.
"""

from __future__ import annotations

import re
from datetime import date

from vhdtool.errors import VhdError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # matched whole: "$" would let "x\n" in
OS_TYPES = {"windows": "Windows", "linux": "Linux"}
OS_STATES = {"generalized": "Generalized", "specialized": "Specialized"}
CACHING = {"readonly": "ReadOnly", "readwrite": "ReadWrite", "none": "None"}
DATA_CACHING_DEFAULT = "None"  # Azure's default for data disks; for the OS disk ReadWrite (--os-caching)
MAX_LUN = 63
OS_DISK, DATA_DISK = "OSDisk", "DataDisk"  # microsoftazurecompute_imagetype


def check_name(name: object, what: str) -> str:
    """`name` if it is usable as a file and blob name; records are untrusted, so any value."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise VhdError(f"{what} name {name!r} is not usable: 1-80 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit, no '..' (it names files and blobs)")
    return name


def choice(value: str, allowed: dict[str, str], option: str) -> str:
    """The canonical spelling of a case-insensitive choice."""
    try:
        return allowed[value.lower()]
    except KeyError:
        raise VhdError(f"{option}: '{value}' is not one of {', '.join(allowed.values())}") from None


def captured_name(image: str, lun: int | None, day: date) -> str:
    """<image>-os-YYYY-MM-DD.vhd or <image>-datadisk-<lun>-YYYY-MM-DD.vhd: one rule for both
    stores and for deployed disks, .vhd as Azure's own captured VHDs end (records written
    before, on Azure without .vhd, name their disks and are read as they are)."""
    role = "os" if lun is None else f"datadisk-{lun}"
    return f"{image}-{role}-{day:%Y-%m-%d}.vhd"


def deployed_name(vm: str, lun: int | None) -> str:
    """<vm>-os.vhd or <vm>-datadisk-<lun>.vhd."""
    return f"{vm}-os.vhd" if lun is None else f"{vm}-datadisk-{lun}.vhd"
