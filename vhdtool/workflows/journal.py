"""The local record of an upload into a blob that keeps no state of ours (a managed disk).

A managed disk's upload SAS allows page writes only: no metadata to name the source, no
Get Page Ranges to see what arrived. So an upload notes each acknowledged Put Page here, and
a re-run sends only what is not noted. The journal lives in the user's state folder
($XDG_STATE_HOME/vhdtool, else ~/.local/state/vhdtool), under a name derived from the blob URL
without its SAS and from the identity of every file of the source; a source that changed in
any way (size, mtime, ctime, inode, device) therefore never finds an old journal. The file
holds no secret: the URL without its query, the identities, and "offset length" lines.

Created without following links (O_NOFOLLOW, O_EXCL), readable by its owner only, and
locked while an upload runs (two uploads into one disk would each trust half a journal).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path

from vhdtool import ranges
from vhdtool.errors import VhdError
from vhdtool.ranges import Range
from vhdtool.workflows.snapshot import fingerprint

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vhdtool"


def file_identity(st: os.stat_result) -> list[int]:
    """Which file, in which state: snapshot's fingerprint (an mtime can be set back, a ctime
    cannot) and the device."""
    return [*fingerprint(st), st.st_dev]


class Journal:
    """Acknowledged page ranges of one upload of one source into one blob."""

    def __init__(self, path: Path, fd: int, acknowledged: list[Range]):
        self.path, self.fd, self.acknowledged = path, fd, acknowledged

    @classmethod
    def open(cls, url: str, sources: list[os.stat_result], blob_size: int) -> Journal:
        """The journal of this upload (its acknowledged ranges), created if there is none."""
        header = json.dumps({"url": url, "blob_size": blob_size,
                             "sources": [file_identity(st) for st in sources]}, sort_keys=True)
        folder = state_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"upload-{hashlib.sha256(header.encode()).hexdigest()[:40]}.journal"
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | NOFOLLOW)
        except FileNotFoundError:
            return cls._create(path, header)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VhdError("the upload journal is a symbolic link: remove it", path) from None
            raise VhdError(f"cannot open the upload journal: {exc.strerror}", path) from None
        try:
            cls._lock(fd, path)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise VhdError("the upload journal is not a regular file of yours: remove it", path)
            with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as f:
                lines = f.read().split("\n")
        except BaseException:
            os.close(fd)
            raise
        if lines[0] != header:  # not ours after all (a hash collision or an edit): start afresh
            os.close(fd)
            os.unlink(path)
            return cls._create(path, header)
        return cls(path, fd, parse(lines[1:-1], blob_size))  # [-1]: after the last newline

    @classmethod
    def _create(cls, path: Path, header: str) -> Journal:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
        except OSError as exc:
            raise VhdError(f"cannot create the upload journal: {exc.strerror}", path) from None
        try:
            cls._lock(fd, path)
            os.write(fd, (header + "\n").encode())
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, [])

    @staticmethod
    def _lock(fd: int, path: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VhdError("another upload of this source into this blob is running", path) from None

    def record(self, offset: int, length: int) -> None:
        """Note one acknowledged Put Page. One small O_APPEND write: whole or absent after a
        kill (a torn last line from a power cut is skipped when read)."""
        os.write(self.fd, f"{offset} {length}\n".encode())

    def remove(self) -> None:
        """The upload is complete: nothing left to resume."""
        os.unlink(self.path)
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(lines: list[str], blob_size: int) -> list[Range]:
    """The ranges of well-formed, newline-ended "offset length" lines inside the blob, merged."""
    found: list[Range] = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            offset, length = int(parts[0]), int(parts[1])
            if 0 < length and offset + length <= blob_size:
                found.append((offset, offset + length))
    return list(ranges.merge(sorted(found)))
