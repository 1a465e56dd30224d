"""Atomic outputs: write an unnamed (or temporary) file in the destination folder, fsync it,
and give it its final name only when it is complete.

The file is created with O_TMPFILE where the filesystem supports it, so an interrupted job
(even SIGKILL) leaves nothing behind at all; elsewhere it is a hidden temporary name that is
removed on any error. Without `force` an existing destination is never replaced, and the
final link is race-safe (link(2) fails if the name appeared meanwhile); with `numbered` a
taken name gets "-01", "-02"... instead, chosen at that same race-safe link.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vhdtool.errors import VhdError

TEMP_SUFFIX = ".vhdtool-partial"
MAX_NUMBER = 99  # "-NN"


@dataclass
class PendingOutput:
    """An output being written: its fd, and its path (the name actually taken, once published)."""

    fd: int
    path: Path
    temp: Path | None  # None: an O_TMPFILE file, nameless until published


def temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def numbered_name(dest: Path, number: int) -> Path:
    return dest.with_name(f"{dest.stem}-{number:02d}{dest.suffix}")


def check_destination(dest: Path, force: bool) -> None:
    if dest.is_dir():
        raise VhdError("is a directory; give a file name for the output", dest)
    if dest.exists() and not force:
        raise VhdError("already exists (use --force to overwrite)", dest)
    if not dest.parent.is_dir():
        raise VhdError("folder does not exist", dest.parent)


def create_unnamed(dest: Path) -> PendingOutput:
    """A new file in dest's folder: nameless (O_TMPFILE) if possible, else a hidden temp name."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            return PendingOutput(os.open(dest.parent, flags | os.O_TMPFILE, 0o644), dest, None)
        except OSError:
            pass  # filesystem without O_TMPFILE: fall back to a named temporary
    tmp = temp_name(dest)
    try:
        return PendingOutput(os.open(tmp, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), dest, tmp)
    except OSError as exc:
        raise VhdError(f"cannot create output: {exc.strerror}", dest) from None


def link(out: PendingOutput, name: Path) -> None:
    """Give the file `name`; FileExistsError if the name is taken."""
    if out.temp is not None:
        os.link(out.temp, name, follow_symlinks=False)  # the temporary itself, never where a link points
        return
    # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE file (plain link(2),
    # which os.link uses without a dir fd, would try to link the /proc symlink itself).
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(out.fd), name, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def publish(out: PendingOutput, force: bool, numbered: bool) -> Path:
    """Give the finished file its final name (see module docstring) and return it."""
    dest = out.path
    if force and not numbered:
        if out.temp is None:  # O_TMPFILE: give it a temporary name first (link() reads out.temp)
            temp = temp_name(dest)
            link(out, temp)
            out.temp = temp
        os.replace(out.temp, dest)
        out.temp = None
        return dest
    for number in range(MAX_NUMBER + 1 if numbered else 1):
        name = numbered_name(dest, number) if number else dest
        try:
            link(out, name)
        except FileExistsError:
            continue
        if out.temp is not None:
            out.temp.unlink()
            out.temp = None
        return name
    if numbered:
        raise VhdError(f"every name up to {numbered_name(dest, MAX_NUMBER).name} is taken", dest)
    raise VhdError("already exists (use --force to overwrite)", dest)


def sync_folder(path: Path) -> None:
    """Make the new name itself durable."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(dest: str | os.PathLike, *, force: bool = False, numbered: bool = False) -> Iterator[PendingOutput]:
    """Yield a file that becomes `dest` (or, `numbered`, its first free "-NN" variant) only
    on success; its `path` is the name taken once the block has finished."""
    dest = Path(dest)
    check_destination(dest, force or numbered)
    out = create_unnamed(dest)
    try:
        yield out
        os.fsync(out.fd)
        out.path = publish(out, force, numbered)
        sync_folder(out.path)
    except OSError as exc:
        raise VhdError(f"cannot write output: {exc.strerror or exc}", dest) from None
    finally:
        os.close(out.fd)
        out.fd = -1  # a late write fails (EBADF) rather than reach a file that reuses the number
        if out.temp is not None:
            out.temp.unlink(missing_ok=True)


@contextmanager
def staged_file(dest: str | os.PathLike, *, force: bool = False, numbered: bool = False) -> Iterator[PendingOutput]:
    """`atomic_file` for a writer that makes a whole file itself (`snapshot`): it writes to the
    hidden temporary name `.temp`, which may be finished in place; after the block the file
    takes its name as an atomic output does (`.path`), and on any error it is removed."""
    dest = Path(dest)
    check_destination(dest, force or numbered)
    out = PendingOutput(-1, dest, temp_name(dest))
    try:
        yield out
        out.path = publish(out, force, numbered)
        sync_folder(out.path)
    finally:
        if out.temp is not None:
            out.temp.unlink(missing_ok=True)


@contextmanager
def atomic_output(dest: str | os.PathLike, *, force: bool = False) -> Iterator[int]:
    """`atomic_file` for callers that only need the fd."""
    with atomic_file(dest, force=force) as out:
        yield out.fd
