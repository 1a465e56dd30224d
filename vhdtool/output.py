"""Atomic outputs: write under a temporary name in the destination folder, rename when done.

An interrupted job (even SIGKILL) leaves nothing under the final name; without `force` an
existing destination is never replaced, and the final link is race-safe (link(2) fails if the
name appeared meanwhile).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vhdtool.errors import VhdError

TEMP_SUFFIX = ".vhdtool-partial"


def temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def check_destination(dest: Path, force: bool) -> None:
    if dest.is_dir():
        raise VhdError("is a directory; give a file name for the output", dest)
    if dest.exists() and not force:
        raise VhdError("already exists (use --force to overwrite)", dest)
    if not dest.parent.is_dir():
        raise VhdError("folder does not exist", dest.parent)


@contextmanager
def atomic_output(dest: str | os.PathLike, *, force: bool = False) -> Iterator[int]:
    """Yield a write fd for a temporary file that becomes `dest` only on success."""
    dest = Path(dest)
    check_destination(dest, force)
    tmp = temp_name(dest)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise VhdError(f"cannot create output: {exc.strerror}", dest) from None
    try:
        yield fd
        os.fsync(fd)
        publish(tmp, dest, force)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VhdError(f"cannot write output: {exc.strerror or exc}", dest) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def publish(tmp: Path, dest: Path, force: bool) -> None:
    """Give the finished temporary file its final name."""
    if force:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise VhdError("already exists (use --force to overwrite)", dest) from None
    tmp.unlink()
