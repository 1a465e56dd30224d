"""What opening a VHDX can find: errors that refuse the file, and findings that do not.

Both carry a stable code (`vhdx.*`) so that `check` can report them as it reports VHD rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vhdtool.errors import FormatError


class VhdxError(FormatError):
    """The VHDX cannot be read as it is; `code` names the rule it breaks."""

    def __init__(self, code: str, message: str, path: object | None = None):
        self.code = code
        super().__init__(message, path)


class VhdxLogError(VhdxError):
    """The file holds a log that must be replayed and we cannot replay it read-only."""

    def __init__(self, problem: str, path: object):
        super().__init__(
            "vhdx.log-not-replayable",
            f"the file was not closed cleanly and its log cannot be replayed ({problem}): "
            f"open it once in Hyper-V, or run `qemu-img check -r all` on a copy of it",
            path,
        )


@dataclass(frozen=True)
class Finding:
    """A structural observation that does not stop reading: (code, severity, message, numbers)."""

    code: str
    severity: str  # "error", "warning" or "info"
    message: str
    numbers: dict = field(default_factory=dict)
