"""`vhdtool check`: structural validation and Azure suitability of a VHD, all findings at once.

`check_image(path, target)` returns a `Report` (findings with stable codes, severities,
messages and fix commands, plus the exit code); the CLI only renders it. Importing this
package is light (no numpy): the rules load on the first call.
"""

from __future__ import annotations

import os

from vhdtool.workflows.check.findings import (
    CODES,
    REPAIRED_BY_ALIGNMENT,
    REPAIRED_BY_CONVERSION,
    UNUSABLE_CODES,
    Finding,
    Report,
    Severity,
    Target,
    unrepaired,
)

__all__ = [
    "CODES", "REPAIRED_BY_ALIGNMENT", "REPAIRED_BY_CONVERSION", "UNUSABLE_CODES", "Finding", "Report",
    "Severity", "Target", "check_image", "unrepaired",
]


def check_image(path: str | os.PathLike, target: Target | str = Target.AZURE) -> Report:
    """Check one image for `target`; never raises for bad input (it becomes a finding)."""
    from vhdtool.workflows.check.run import run_checks

    return run_checks(path, Target(target))
