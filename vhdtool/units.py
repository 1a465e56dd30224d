"""Sizes as users type them ("20GiB", "512MiB", "1.5TiB", "1073741824") and as we print them."""

import re

from vhdtool.errors import VhdError

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # single letters are binary, as in qemu-img
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise VhdError(f"'{text}' is not a size (examples: 20GiB, 512MiB, 1073741824)")
    value = float(match.group(1)) * unit
    if value != int(value):
        raise VhdError(f"'{text}' is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Exact binary size when it is one (1 GiB), else bytes with a rounded hint."""
    for name, unit in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= unit:
            if n % unit == 0:
                return f"{n // unit} {name}"
            return f"{n:,} bytes ({n / unit:.2f} {name})"
    return f"{n:,} bytes"
