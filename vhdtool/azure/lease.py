"""The write lease an upload holds on its blob, so that two uploads never write one blob.

Choice: a finite lease of 60 s (the longest finite lease Azure grants), renewed every 15 s by
a background thread, rather than an infinite lease released at the end. A crashed or killed
upload then never locks the blob for good: its lease lapses within a minute. To make a re-run
on the same machine instant, the blob's metadata names the lease ID and its holder (a hash of
the host name, and the pid); when that process is gone, the re-run takes the lease over by
proposing the same ID (Azure's Acquire Lease accepts the active ID). A lease ID is not a
credential: breaking any lease only needs the write access an uploader has anyway.

Someone else's lease is never broken: an infinite one (a disk attached to a VM) is refused at
once, a finite one is waited out for one lease period and refused if it is still renewed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from vhdtool.azure.pageblob import PageBlob
from vhdtool.errors import VhdError

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties

LEASE_SECONDS = 60
RENEW_SECONDS = 15
RELEASE_WAIT = 5.0  # seconds a release waits for a renewal in flight (it may be retrying)
POLL_SECONDS = 1.0
LEASE_KEY = "vhdtool_lease"
HOLDER_KEY = "vhdtool_holder"
FREE_STATES = frozenset({"available", "expired", "broken"})


def host_tag() -> str:
    """This machine, without telling its name."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:12]


def holder_metadata(lease_id: str) -> dict[str, str]:
    return {LEASE_KEY: lease_id, HOLDER_KEY: f"{host_tag()}:{os.getpid()}"}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def dead_holder_lease(metadata: dict[str, str]) -> str | None:
    """The recorded lease ID if its holder was a process on this machine that has exited."""
    host, _, pid = metadata.get(HOLDER_KEY, "").partition(":")
    lease_id = metadata.get(LEASE_KEY)
    if lease_id and host == host_tag() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
        return lease_id
    return None


class Lease:
    """A lease we hold, renewed in the background until `release`."""

    def __init__(self, blob: PageBlob, lease_id: str):
        self.blob, self.id = blob, lease_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="vhdtool-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.blob.renew_lease(self.id)
            except VhdError:
                pass  # retried already; if the lease is really lost, the next write says so

    def release(self) -> None:
        """Stop renewing and give the lease back (best effort: unreleased, it lapses in 60 s)."""
        self._stop.set()
        self._thread.join(RELEASE_WAIT)  # a daemon: one stuck retrying must not hold up the exit
        try:
            self.blob.release_lease(self.id)
        except VhdError:
            pass


def _lease_state(props: BlobProperties) -> tuple[str, str | None]:
    lease = props.lease
    return str(lease.state or "available"), lease.duration


def acquire(blob: PageBlob, props: BlobProperties, log: Callable[[str], None]) -> Lease:
    """Lease the blob for this upload: free, or held by a dead upload from this machine,
    or lapsing within one lease period; anything else is refused with a one-line error."""
    lease_id = str(uuid.uuid4())
    deadline = time.monotonic() + LEASE_SECONDS + 5
    waiting = False
    while True:
        state, duration = _lease_state(props)
        if state in FREE_STATES:
            if blob.acquire_lease(lease_id, LEASE_SECONDS):
                return Lease(blob, lease_id)
        elif duration == "infinite":
            raise VhdError(
                "the blob is under an infinite lease held by someone else (a disk attached to a "
                "VM?): not writing to it",
                blob.location,
            )
        else:
            taken_over = dead_holder_lease(props.metadata or {})
            if taken_over and blob.acquire_lease(taken_over, LEASE_SECONDS):
                log("took over the lease of an interrupted upload from this machine")
                return Lease(blob, taken_over)
        if time.monotonic() > deadline:
            raise VhdError(
                f"the blob is leased by another writer that kept renewing it for over "
                f"{LEASE_SECONDS} s (another upload still running?): not writing to it",
                blob.location,
            )
        if not waiting:
            log(f"the blob is leased by another writer: waiting up to {LEASE_SECONDS} s for the lease to lapse")
            waiting = True
        time.sleep(POLL_SECONDS)
        props = blob.properties()
        if props is None:
            raise VhdError("the blob was deleted while waiting for its lease", blob.location)
