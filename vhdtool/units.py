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
_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def parse_size(text: str) -> int:
    match = _SIZE.match(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise VhdError(f"'{text}' is not a size (examples: 20GiB, 512MiB, 1073741824)")
    value = float(match.group(1)) * unit
    if value != int(value):
        raise VhdError(f"'{text}' is not a whole number of bytes")
    return int(value)


def decimal_note(text: str) -> str | None:
    """A note when TEXT used a decimal unit (1GB = 10^9 bytes), which people often mean as binary."""
    match = _SIZE.match(text)
    if match and match.group(2).lower() in ("kb", "mb", "gb", "tb"):
        unit = match.group(2)
        return (f"{text} is decimal: {parse_size(text):,} bytes "
                f"(for binary units write {match.group(1)}{unit[0].upper()}iB)")
    return None


def format_size(n: int) -> str:
    """Exact binary size when it is one (1 GiB), else bytes with a rounded hint."""
    for name, unit in _BINARY:
        if n >= unit:
            if n % unit == 0:
                return f"{n // unit} {name}"
            return f"{n:,} bytes ({n / unit:.2f} {name})"
    return f"{n:,} bytes"


def format_change(old: int, new: int) -> str:
    """OLD -> NEW, in exact bytes when either is not a whole unit (rounding would hide the change)."""
    if "bytes" in format_size(old) or "bytes" in format_size(new):
        return f"{old:,} -> {new:,} bytes"
    return f"{format_size(old)} -> {format_size(new)}"


def format_short(n: float) -> str:
    """A rounded binary size for progress lines: 1.5 GiB, 512.0 KiB, 100 bytes."""
    for name, unit in _BINARY:
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return plural(int(n), "byte")


def format_rate(bytes_per_second: float) -> str:
    return f"{format_short(bytes_per_second)}/s"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 page', '2 pages', '1,024 bytes'; `nouns` for an irregular plural (retries)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
