"""Copying every disk of an image at once, all or nothing.

The copies run in parallel (each is I/O or a server-side copy: threads overlap them). If one
fails, or the user interrupts, the others are let finish and every copy made is deleted
again, so that a failed capture or deploy leaves nothing in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from vhdtool.errors import VhdError
from vhdtool.workflows.store import Store, StoredDisk


def made(futures: list[Future[StoredDisk]]) -> list[StoredDisk]:
    return [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]


def discard(store: Store, disks: list[StoredDisk]) -> None:
    """Delete copies again (best effort: the failure being handled is what the user sees)."""
    for disk in disks:
        try:
            store.delete_vhd(disk.name)
        except (VhdError, OSError):
            pass


def copy_all(store: Store, jobs: list[Callable[[], StoredDisk]]) -> list[StoredDisk]:
    """Run the copy jobs in parallel; their results in order, or the first failure raised
    after every copy made was deleted."""
    pool = ThreadPoolExecutor(len(jobs), thread_name_prefix="vhdtool-copy")
    futures = [pool.submit(job) for job in jobs]
    try:
        wait(futures)
    except BaseException:  # interrupted: let the running copies end, then undo them
        pool.shutdown(wait=True, cancel_futures=True)
        discard(store, made(futures))
        raise
    pool.shutdown()
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        discard(store, made(futures))
        raise failures[0]
    return [f.result() for f in futures]


def keep_or_discard(store: Store, disks: list[StoredDisk], finish: Callable[[], None]) -> None:
    """Run `finish` (writing the record); if it fails, the copies are deleted."""
    try:
        finish()
    except BaseException:
        discard(store, disks)
        raise
