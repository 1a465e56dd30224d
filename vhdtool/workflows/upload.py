"""`vhdtool upload`: a VHD into an Azure page blob, sending only its non-zero 512-byte pages.

The source (any VHD, or a VHDX) is streamed as the fixed VHD it represents
(`FixedImage`, no temporary file) in one engine pass: allocated data is read once, zero pages
are dropped, the non-zero runs go out as Put Page requests (512-aligned, at most 4 MiB, each
with the Content-MD5 of its body) from N workers. The same pass computes the sparse digest
(vhdtool.workflows.sparse_digest) recorded in the blob's metadata, and with --md5 the blob's
whole Content-MD5 (every zero of the disk hashed: opt-in, as AzCopy's --put-md5).

Two kinds of destination:
- a page blob vhdtool creates and owns (metadata, lease, page ranges: below);
- a managed disk created for upload (`az disk create --for-upload`): an existing blob whose
  SAS allows page writes only. Chosen by --managed-disk, or when the SAS lacks the permission
  to read the blob. Its size must be the fixed VHD's (checked with Clear Pages); progress is
  kept in a local journal (vhdtool.workflows.journal) since the blob can hold none.

Sending less than the image: --since OLD (the blob holds OLD: only the pages that differ,
vhdtool.workflows.delta) and --base PARENT_URL (a differencing child onto a server-side copy
of its parent's blob: only the child's own sectors).

Surviving a crash, a kill or a network failure:
- the footer is sent last, once every data page is acknowledged, so a blob cut short is
  never a valid VHD;
- the blob's metadata names its source (size, mtime, footer UUID, parent chain) and its state;
  a re-run lists the blob's page ranges and sends only the runs not there yet. Each Put Page
  is atomic and runs are cut the same way every time, so a run is wholly there or not at all;
- a lease is held while writing (see vhdtool.azure.lease); a blob of another source is
  refused without --overwrite, and someone else's lease is never broken;
- every file of the source is checked unchanged (size, mtime, ctime, inode) before the footer
  is sent: a writer that restores the mtime still changes the ctime.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from contextlib import nullcontext
from threading import Condition
from typing import TYPE_CHECKING, Any, TypeVar

from vhdtool import ranges
from vhdtool.azure import lease as leases
from vhdtool.azure.limits import PAGE, PUT_PAGE_MAX
from vhdtool.azure.location import BlobLocation, ContainerLocation
from vhdtool.azure.pageblob import Forbidden, PageBlob
from vhdtool.azure.remote import PAGE_BLOB, BlobSource
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.engine.digest import ContentMd5, b64, feed
from vhdtool.engine.pipeline import Window, nonzero_data, progress_bar, scan
from vhdtool.errors import VhdError
from vhdtool.disk.fixed import FixedImage, source_uuid
from vhdtool.disk.image import Disk, SparseDisk, open_disk
from vhdtool.format.vhd.timestamp import from_datetime
from vhdtool.ranges import Range
from vhdtool.workflows.delta import Widened, changes
from vhdtool.workflows.journal import Journal
from vhdtool.workflows.snapshot import fingerprint
from vhdtool.workflows.sparse_digest import METADATA_KEY as SPARSE_KEY
from vhdtool.workflows.sparse_digest import SparseDigest

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties


MiB = 1024 * 1024
STATE_KEY = "vhdtool_state"
MD5_KEY = "vhdtool_md5"
PARTIAL, COMPLETE = "partial", "complete"
PATCHING = "patching"  # --since or --base under way: pages of another image are on the blob
VERIFY_READERS = 4  # parallel ranged GETs of --verify (memory: 2n + 1 buffers of 4 MiB)
IN_FLIGHT_BYTES = 48 * MiB  # page data held for requests not yet answered


@dataclass(frozen=True)
class UploadOptions:
    workers: int = 16  # parallel Put Page requests (Azurite on loopback: 16 beats 8 and 32)
    overwrite: bool = False  # replace a blob that holds something else
    resume: bool = True  # False: start again from an empty blob even if it is ours
    md5: bool = False  # set the blob's Content-MD5 (hashes every zero of the disk)
    verify: bool = False  # read back page ranges and content after the upload
    align: bool = False  # round a non-MiB virtual size up on the fly
    timeout: float = 120.0  # seconds per request before it counts as failed
    managed_disk: bool = False  # the blob is a managed disk's: write pages only, read nothing
    dry_run: bool = False  # count what would be sent, contact nothing
    cap_mbps: float | None = None  # bandwidth cap, megabits per second of page data
    since: Path | None = None  # the image the blob holds: send only where the source differs
    base: BlobLocation | None = None  # the parent's blob: copy it, send only the child's own sectors
    retry: RetryPolicy = RetryPolicy()
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class UploadResult:
    blob: str  # redacted URL
    blob_size: int
    nonzero_bytes: int = 0  # of the whole fixed image, footer included
    sent_bytes: int = 0  # page data sent by this run
    requests: int = 0  # Put Page requests by this run
    present_bytes: int = 0  # found already on the blob (resumed upload)
    retries: int = 0
    seconds: float = 0.0
    cleared: int = 0  # Clear Pages requests (--since: pages that became zero)
    content_md5: str | None = None  # base64, as Azure shows it
    sparse_digest: str | None = None
    managed_disk: bool = False
    resumed: bool = False
    already_complete: bool = False
    verified: bool = False

    @property
    def zero_pages(self) -> int:
        """Pages never sent because they are zero."""
        return (self.blob_size - self.nonzero_bytes) // PAGE if self.nonzero_bytes else 0


@dataclass(frozen=True)
class SourceIdentity:
    """Which source a blob belongs to, as its metadata records it: no paths, no secrets."""

    size: int
    mtime_ns: int
    uuid: str
    parents: str  # digest of the parent chain's identities, "none" without parents
    blob_size: int

    @classmethod
    def of(cls, disk: Disk, blob_size: int) -> SourceIdentity:
        def tag(d: Disk) -> str:
            return f"{d.stat.st_size}:{d.stat.st_mtime_ns}:{source_uuid(d).hex()}"

        parents = [tag(d) for d in disk.chain()[1:]]
        digest = hashlib.sha256("/".join(parents).encode()).hexdigest()[:32] if parents else "none"
        return cls(disk.stat.st_size, disk.stat.st_mtime_ns, source_uuid(disk).hex(), digest, blob_size)

    def metadata(self, state: str) -> dict[str, str]:
        return {
            "vhdtool_source_size": str(self.size),
            "vhdtool_source_mtime": str(self.mtime_ns),
            "vhdtool_source_uuid": self.uuid,
            "vhdtool_parents": self.parents,
            STATE_KEY: state,
        }

    def mismatch(self, props: BlobProperties) -> str | None:
        """Why the blob is not an upload of this source, or None if it is one."""
        blob_type = str(getattr(props.blob_type, "value", props.blob_type))
        if blob_type != PAGE_BLOB:
            return f"it is a {blob_type}"
        if props.size != self.blob_size:
            return f"it is {props.size:,} bytes, this image {self.blob_size:,}"
        metadata = props.metadata or {}
        if STATE_KEY not in metadata:
            return "it was not written by vhdtool upload"
        differ = [k.removeprefix("vhdtool_") for k, v in self.metadata("").items()
                  if k != STATE_KEY and metadata.get(k) != v]
        return f"it belongs to another source ({', '.join(differ)} differ)" if differ else None

    def completed(self, props: BlobProperties) -> bool:
        return self.mismatch(props) is None and (props.metadata or {}).get(STATE_KEY) == COMPLETE


def source_timestamp(disk: Disk) -> int:
    """A VHD's footer timestamp; a VHDX has none: its modification time, which the blob's
    metadata records too, so a resumed upload builds the same footer."""
    if disk.footer is not None:
        return disk.footer.timestamp
    return from_datetime(datetime.fromtimestamp(disk.stat.st_mtime, timezone.utc))


def refuse_unfixable(disk: Disk, align: bool) -> None:
    """Refuse, before anything is sent, a source `check --target azure` fails for a reason that
    on-the-fly conversion cannot fix (damage, size limits, a non-MiB size without --align)."""
    from vhdtool.workflows.check import (
        REPAIRED_BY_ALIGNMENT,
        REPAIRED_BY_CONVERSION,
        streamed_report,
        unrepaired,
    )

    path = disk.path
    for finding in unrepaired(streamed_report(disk, "azure"), REPAIRED_BY_CONVERSION):
        if finding.code in REPAIRED_BY_ALIGNMENT:
            if align:
                continue
            raise VhdError(f"{finding.message} [use --align to round it up while uploading]", path)
        raise VhdError(f"cannot be uploaded: {finding.message} [{finding.code}]", path)


def fixed_image(disk: Disk, align: bool) -> FixedImage:
    """The fixed VHD to upload. Its footer bytes are the same on every run (source UUID and
    timestamp kept), so a resumed upload regenerates exactly what the first run began."""
    size = ranges.round_up(disk.virtual_size, MiB) if align else disk.virtual_size
    return FixedImage(disk, size, keep_uuid=True, timestamp=source_timestamp(disk))


class Pacer:
    """Holds the sender back to `mbps` megabits per second of page data (--cap-mbps), on
    average since the start: a token bucket with no burst beyond one request."""

    def __init__(self, mbps: float | None):
        self.rate = mbps * 1e6 / 8 if mbps else None  # bytes per second
        self.started = time.monotonic()
        self.admitted = 0

    def admit(self, length: int) -> None:
        if self.rate is None:
            return
        wait = self.started + self.admitted / self.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.admitted += length


Acknowledged = Callable[[int, int], None]  # (offset, length) of a Put Page the service answered


class Sender:
    """Put Page requests on `workers` threads. Memory stays bounded whatever `workers` is: at
    most workers + 1 pieces and IN_FLIGHT_BYTES are held at once. The first failure stops it
    and is raised to the caller; each success is reported to `acknowledged`."""

    def __init__(self, blob: PageBlob, lease_id: str | None, workers: int, pacer: Pacer | None = None,
                 acknowledged: Acknowledged | None = None):
        self.blob, self.lease_id, self.workers = blob, lease_id, workers
        self.pacer, self.acknowledged = pacer, acknowledged
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="vhdtool-put")
        self.room = Condition()
        self.held = self.held_bytes = 0
        self.failure: BaseException | None = None
        self.requests = self.sent = self.clears = 0

    def put(self, offset: int, data: bytes) -> None:
        self._submit(offset, len(data), data)

    def clear(self, offset: int, length: int) -> None:
        """A Clear Pages request (no data: nothing held, nothing paced)."""
        self._submit(offset, length, None)

    def _submit(self, offset: int, length: int, data: bytes | None) -> None:
        held = length if data is not None else 0
        with self.room:
            while self.held and (self.held > self.workers or self.held_bytes + held > IN_FLIGHT_BYTES):
                self.room.wait()
            if self.failure is not None:
                raise self.failure
            self.held += 1
            self.held_bytes += held
        if data is None:
            future = self.pool.submit(self.blob.clear, offset, length, self.lease_id)
        else:
            if self.pacer is not None:
                self.pacer.admit(length)
            future = self.pool.submit(self.blob.put, offset, data, self.lease_id)
        future.add_done_callback(lambda done: self._done(done, offset, held, data is None))

    def _done(self, future: Future[None], offset: int, length: int, cleared: bool = False) -> None:
        error = None if future.cancelled() else future.exception()
        if error is None and not future.cancelled() and not cleared and self.acknowledged is not None:
            try:
                self.acknowledged(offset, length)
            except OSError as exc:  # the journal could not be written: stop, say why
                error = VhdError(f"cannot write the upload journal: {exc.strerror}")
        with self.room:
            self.held -= 1
            self.held_bytes -= length
            if error is not None:
                self.failure = self.failure or error
            elif cleared:
                self.clears += 1
            elif not future.cancelled():
                self.requests += 1
                self.sent += length
            self.room.notify()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        """Wait for every request in flight; raise the first failure if nothing else is."""
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)
        if exc_type is None and self.failure is not None:
            raise self.failure


def claim(blob: PageBlob, props: BlobProperties | None, identity: SourceIdentity,
          options: UploadOptions) -> tuple[leases.Lease | None, list[Range]]:
    """Make the blob (`props`: as just read) this upload's: (lease, page ranges already
    written), or (None, []) when this very source is already completely uploaded there."""
    if props is None:
        blob.create(identity.blob_size, identity.metadata(PARTIAL), if_absent=True)
        props = blob.properties()
        if props is None:
            raise VhdError("the blob disappeared right after being created", blob.location)
    if options.resume and identity.completed(props):
        return None, []
    held = leases.acquire(blob, props, options.log)
    try:
        props = blob.properties()  # read again: only now, under our lease, does it hold still
        why = identity.mismatch(props) if props is not None else "it was deleted"
        metadata = identity.metadata(PARTIAL) | leases.holder_metadata(held.id)
        # a blob being patched holds another image's pages: not ours to resume page by page
        if why is None and options.resume and (props.metadata or {}).get(STATE_KEY) != PATCHING:
            blob.set_metadata(metadata, held.id)
            return held, blob.page_ranges(identity.blob_size, held.id)
        if why is not None and not options.overwrite:
            hint = " (or --managed-disk if it is a managed disk created for upload)" if "not written" in why else ""
            raise VhdError(f"the blob holds something else ({why}): use --overwrite to replace it{hint}",
                           blob.location)
        blob.create(identity.blob_size, metadata, lease=held.id)
        return held, []
    except BaseException:
        held.release()
        raise


def source_changed(disk: Disk) -> bool:
    """Whether any file of the chain was written to since it was opened (the blob would then
    mix two versions of the disk). Snapshot's fingerprint: a writer can set the mtime back,
    not the ctime."""
    return any(fingerprint(os.fstat(d.fd)) != fingerprint(d.stat) for d in disk.chain())


def send(blob: PageBlob | None, lease_id: str | None, image: FixedImage, present: ranges.SortedRanges,
         options: UploadOptions, result: UploadResult, runs: list[Range] | None,
         acknowledged: Acknowledged | None = None) -> bytes | None:
    """Send the non-zero runs that are not on the blob yet, the footer last (without a blob:
    count them only, for --dry-run); return the MD5 of the whole image (None without --md5
    unless verifying) and set `result.sparse_digest`. `runs` collects every run; the data
    pieces the service acknowledged are reported to `acknowledged` (the footer is not: a
    re-run always sends it again)."""
    md5 = ContentMd5() if options.md5 or options.verify else None
    sparse = SparseDigest()
    body = Window(image, 0, image.data_size)  # everything but the footer

    def piece(offset: int, data: bytes | memoryview, sender: Sender | None) -> None:
        end = offset + len(data)
        result.nonzero_bytes += len(data)
        sparse.add(offset, data)
        if runs is not None:
            runs.append((offset, end))
        if present.covers(offset, end):
            result.present_bytes += len(data)
        elif sender is None:
            result.requests += 1
            result.sent_bytes += len(data)
        else:
            sender.put(offset, bytes(data))  # a copy: the engine reuses its buffer

    def sender(workers: int, acknowledged: Acknowledged | None) -> Sender | nullcontext[None]:
        return nullcontext() if blob is None else Sender(blob, lease_id, workers, pacer, acknowledged)

    pacer = Pacer(options.cap_mbps)
    with progress_bar(body, "upload") as progress:
        with sender(options.workers, acknowledged) as data_sender:
            for chunk in scan(body, progress=progress):
                if md5 is not None:
                    md5.add(chunk.offset, chunk.view)
                for offset, data in nonzero_data([chunk], PUT_PAGE_MAX):
                    piece(offset, data, data_sender)
        if source_changed(image.disk):  # checked before the footer makes the blob a VHD
            raise VhdError("changed while it was being uploaded: run the upload again", image.path)
        with sender(1, None) as last:  # every data page is acknowledged by now
            piece(image.data_size, image.footer_bytes, last)
    for done in (data_sender, last):
        if done is not None:
            result.requests += done.requests
            result.sent_bytes += done.sent
    result.sparse_digest = sparse.hexdigest(image.virtual_size)
    if md5 is None:
        return None
    md5.add(image.data_size, image.footer_bytes)
    return md5.digest(image.virtual_size)


def finish(blob: PageBlob, lease_id: str, identity: SourceIdentity, md5: bytes | None, sparse: str | None) -> None:
    """Mark the upload complete: Content-MD5 first, then the state (a crash in between only
    means the next run recomputes and sets the same MD5)."""
    metadata = identity.metadata(COMPLETE)
    if sparse is not None:
        metadata[SPARSE_KEY] = sparse
    if md5 is not None:
        blob.set_content_md5(md5, lease_id)
        metadata[MD5_KEY] = b64(md5)
    blob.set_metadata(metadata, lease_id)


def verify(blob: PageBlob, size: int, runs: list[Range], md5: bytes, sparse: str | None, workers: int) -> None:
    """The blob's page ranges are exactly the image's non-zero runs, and the MD5 of its
    content (page ranges read back, gaps as zeros), its Content-MD5 and its recorded sparse
    digest equal ours."""
    local = list(ranges.merge(runs))
    remote = blob.page_ranges(size)
    if remote != local:
        differ = ranges.total(remote) + ranges.total(local) - 2 * ranges.total(ranges.intersect(remote, local))
        raise VhdError(f"verify failed: the blob's page ranges differ from the image's non-zero runs "
                       f"({differ:,} bytes are in only one of them)", blob.location)
    got = feed(ContentMd5(), BlobSource(blob, size, remote), "verify", workers).digest(size)
    if got != md5:
        raise VhdError(f"verify failed: the blob's content has MD5 {b64(got)}, "
                       f"the image {b64(md5)}", blob.location)
    props = blob.properties()
    stored = props.content_settings.content_md5 if props is not None else None
    if stored and bytes(stored) != md5:
        raise VhdError(f"verify failed: the blob's Content-MD5 {b64(stored)} "
                       f"is not the image's", blob.location)
    recorded = (props.metadata or {}).get(SPARSE_KEY) if props is not None else None
    if recorded != sparse:
        raise VhdError(f"verify failed: the blob's recorded sparse digest {recorded} is not the image's "
                       f"{sparse}", blob.location)


T = TypeVar("T")


class NothingSent(TransferError):
    """The blob could not be claimed: no page went out, so there is nothing to resume."""


def nothing_sent_yet(step: Callable[..., T], *args: Any) -> T:
    """Run a step that comes before any page is sent: its failure leaves nothing to resume."""
    try:
        return step(*args)
    except TransferError as exc:
        raise NothingSent(f"upload failed before any page was sent: {exc.detail}; "
                          "run the same command again", exc.path) from None


def transfer(blob: PageBlob, props: BlobProperties | None, image: FixedImage, identity: SourceIdentity,
             options: UploadOptions, result: UploadResult) -> None:
    """Claim the blob, send what it lacks, mark it complete, verify if asked."""
    runs: list[Range] | None = [] if options.verify else None
    held, written = nothing_sent_yet(claim, blob, props, identity, options)
    if held is None:
        result.already_complete = True
        if not options.verify:
            return
        # nothing to send, but the image is read once more to verify the blob against it
        md5 = send(blob, None, image, ranges.SortedRanges([(0, image.virtual_size)]), options, result, runs)
    else:
        result.resumed = bool(written)
        try:
            md5 = send(blob, held.id, image, ranges.SortedRanges(written), options, result, runs)
            finish(blob, held.id, identity, md5 if options.md5 else None, result.sparse_digest)
        finally:
            held.release()
        if md5 is not None and options.md5:
            result.content_md5 = b64(md5)
    if runs is not None and md5 is not None:
        verify(blob, image.virtual_size, runs, md5, result.sparse_digest, min(options.workers, VERIFY_READERS))
        result.verified = True


def managed_size_problem(blob: PageBlob, size: int) -> str | None:
    """How the managed disk's size differs from `size`, or None when it is `size`, found with
    Clear Pages only (its SAS may refuse every read): the last page of `size` must be inside
    the blob and the page after it outside. Clearing is harmless here: the footer page is
    written last anyway, and the page after it exists only on a disk of the wrong size, which
    is refused (a disk created for upload holds nothing yet)."""
    if not blob.clear_within(size - PAGE):
        return "is smaller than"
    if blob.clear_within(size):
        return "is larger than"
    return None


def to_managed_disk(blob: PageBlob, image: FixedImage, options: UploadOptions, result: UploadResult) -> None:
    """Write the image into a managed disk created for upload: page writes only, its progress
    in the local journal (resumed from there), the footer last."""
    if options.md5 or options.verify:
        raise VhdError("--md5 and --verify need to set and read the blob: a managed disk's upload SAS "
                       "allows page writes only", blob.location)
    size = image.virtual_size
    problem = managed_size_problem(blob, size)
    if problem is not None:
        raise VhdError(f"the managed disk {problem} this image's {size:,} bytes (virtual size "
                       f"{image.data_size:,} + 512 for the footer): create it with "
                       f"--upload-size-bytes {size}", blob.location)
    journal = Journal.open(blob.location.url, [d.stat for d in image.disk.chain()], size)
    try:
        result.resumed = bool(journal.acknowledged)
        send(blob, None, image, ranges.SortedRanges(journal.acknowledged), options, result, None, journal.record)
        journal.remove()
    finally:
        journal.close()


def patch_since(blob: PageBlob, image: FixedImage, identity: SourceIdentity, old: FixedImage,
                options: UploadOptions, result: UploadResult) -> None:
    """Turn the blob, which holds OLD (as uploaded by vhdtool), into this image: only the pages
    where they differ are sent or cleared, the footer last.

    That the blob holds OLD is taken from its metadata (OLD's identity and sparse digest) before
    anything is sent, and OLD's digest is computed in the same pass and compared before the
    footer: a blob that did not hold OLD after all is left marked incomplete, never complete.
    While patching, the metadata says so: a plain upload will not resume it as its own.
    """
    if old.virtual_size != image.virtual_size:
        raise VhdError(f"--since: {old.virtual_size:,} bytes as a fixed VHD, this image {image.virtual_size:,}: "
                       "only an image of the same size can be patched", old.path)
    if options.md5 or options.verify:
        raise VhdError("--since sends only the changes: --md5 and --verify need the whole image, "
                       "upload without --since for them")
    old_identity = SourceIdentity.of(old.disk, old.virtual_size)
    props = blob.properties()
    metadata = (props.metadata or {}) if props is not None else {}
    recorded = metadata.get(SPARSE_KEY)
    why = old_identity.mismatch(props) if props is not None else "there is no such blob"
    if why is None and metadata.get(STATE_KEY) not in (COMPLETE, PATCHING):
        why = "its upload did not complete"
    if why is None and recorded is None:
        why = "it has no sparse digest recorded"
    if why is not None or props is None or recorded is None:
        raise VhdError(f"--since: the blob does not hold {old.path} ({why}): upload without --since",
                       blob.location)
    held = leases.acquire(blob, props, options.log)
    try:
        blob.set_metadata(old_identity.metadata(PATCHING) | {SPARSE_KEY: recorded} | leases.holder_metadata(held.id),
                          held.id)
        blob.set_content_md5(None, held.id)  # a whole-blob MD5 of OLD would be wrong from now on
        new_digest, old_digest = SparseDigest(), SparseDigest()
        body, old_body = Window(image, 0, image.data_size), Window(old, 0, old.data_size)
        with Sender(blob, held.id, options.workers, Pacer(options.cap_mbps)) as sender:
            for change in changes(body, old_body, new_digest, old_digest):
                if change.data is None:
                    sender.clear(change.offset, change.length)
                else:
                    sender.put(change.offset, bytes(change.data))
        new_digest.add(image.data_size, image.footer_bytes)
        old_digest.add(old.data_size, old.footer_bytes)
        if old_digest.hexdigest(old.virtual_size) != recorded:
            raise VhdError(f"--since: the blob did not hold {old.path} after all (its recorded digest is not "
                           "OLD's): it is left incomplete; upload with --overwrite", blob.location)
        if source_changed(image.disk) or source_changed(old.disk):
            raise VhdError("changed while it was being uploaded: run the upload again", image.path)
        with Sender(blob, held.id, 1) as last:
            last.put(image.data_size, image.footer_bytes)
        result.sparse_digest = new_digest.hexdigest(image.virtual_size)
        result.nonzero_bytes = 0  # not counted: only the changes were scanned for
        result.requests, result.sent_bytes = sender.requests + last.requests, sender.sent + last.sent
        result.cleared = sender.clears
        finish(blob, held.id, identity, None, result.sparse_digest)
    finally:
        held.release()


def with_key_of(base: BlobLocation, dest: BlobLocation) -> BlobLocation:
    """`base` as given, or, given without a SAS in the account DEST is reached by its key,
    with that key (as `az` does for a source in the same account)."""
    if base.credential_kind is not None or base.account_url != dest.account_url or not dest.account_key:
        return base
    same = dest.container_location
    return BlobLocation(ContainerLocation(same.account_url, base.container, same.account_name, None, same.account_key),
                        base.name)


def copy_base(blob: PageBlob, base: BlobLocation, child: Disk, size: int, options: UploadOptions) -> None:
    """Check that the blob at `base` is the child's parent as vhdtool uploads it (its footer's
    UUID is the one the child's header names, same size), then copy it into the destination
    server-side, waiting for the copy to end."""
    from vhdtool.azure.remote import read_blob_ends

    ends = read_blob_ends(base)
    footer = ends.footer
    wanted = child.header.parent_unique_id
    if footer is None or footer.cookie != b"conectix" or footer.unique_id != wanted:
        found = footer.unique_id.hex() if footer is not None and footer.cookie == b"conectix" else "no VHD footer"
        raise VhdError(f"--base: the blob is not this child's parent (its footer UUID: {found}; the child's parent: "
                       f"{wanted.hex()})", base)
    if ends.info.size != size:
        raise VhdError(f"--base: the blob is {ends.info.size:,} bytes, this child as a fixed VHD {size:,}", base)
    props = blob.properties()
    if props is not None and not options.overwrite:
        raise VhdError("the blob exists: use --overwrite to replace it with the base and this child", blob.location)
    from vhdtool.workflows.store.azure import wait_for_copy

    blob.start_copy(base)
    wait_for_copy(blob)


def patch_base(blob: PageBlob, image: FixedImage, identity: SourceIdentity, options: UploadOptions,
               result: UploadResult) -> None:
    """The differencing child onto a copy of its parent's blob: only the sectors the child's
    bitmaps mark are sent (cleared where the child wrote zeros), the footer last. Interrupted,
    the blob stays marked as being patched: a re-run starts over (the copy is server-side)."""
    disk = image.disk
    if not isinstance(disk, SparseDisk) or disk.kind != "differencing" or options.base is None:
        raise VhdError("--base is for a differencing image (its parent's blob is the base)", disk.path)
    if options.md5 or options.verify:
        raise VhdError("--base sends only the child's sectors: --md5 and --verify need the whole image, "
                       "upload without --base for them")
    copy_base(blob, with_key_of(options.base, blob.location), disk, image.virtual_size, options)
    props = blob.properties()
    if props is None:
        raise VhdError("the blob disappeared right after the copy", blob.location)
    held = leases.acquire(blob, props, options.log)
    try:
        blob.set_metadata(identity.metadata(PATCHING) | leases.holder_metadata(held.id), held.id)
        blob.set_content_md5(None, held.id)  # Copy Blob brought the parent's whole-blob MD5
        own = list(ranges.merge(disk.own_allocated()))
        body, owned = Widened(Window(image, 0, image.data_size), own), ranges.SortedRanges(own)
        with Sender(blob, held.id, options.workers, Pacer(options.cap_mbps)) as sender:
            for chunk in scan(body):
                for offset, data in nonzero_data([chunk], PUT_PAGE_MAX):
                    sender.put(offset, bytes(data))
                # the child's own sectors that are zero: the base's data there must go
                for start, end in ranges.subtract(owned.within(chunk.offset, chunk.offset + len(chunk.view)),
                                                  chunk.runs):
                    sender.clear(start, end - start)
        if source_changed(disk):
            raise VhdError("changed while it was being uploaded: run the upload again", image.path)
        with Sender(blob, held.id, 1) as last:
            last.put(image.data_size, image.footer_bytes)
        result.requests, result.sent_bytes = sender.requests + last.requests, sender.sent + last.sent
        result.cleared = sender.clears
        finish(blob, held.id, identity, None, None)
    finally:
        held.release()


def readable_properties(blob: PageBlob) -> tuple[bool, BlobProperties | None]:
    """(False, None) when the SAS lacks the permission to read the blob (a managed disk's
    upload SAS), else (True, its properties or None if it does not exist). A credential
    refused outright (a wrong key or token) is an error, not a managed disk."""
    try:
        return True, blob.properties()
    except Forbidden as refused:
        if refused.code != "AuthorizationPermissionMismatch":
            raise
        return False, None


def upload(src: str | Path, location: BlobLocation, options: UploadOptions = UploadOptions()) -> UploadResult:
    """Upload SRC to the page blob at `location` (see the module docstring)."""
    started = time.monotonic()
    src = Path(src)
    if options.workers < 1:
        raise VhdError("--workers must be at least 1")
    if options.cap_mbps is not None and options.cap_mbps <= 0:
        raise VhdError("--cap-mbps must be more than 0")
    with open_disk(src) as disk:
        refuse_unfixable(disk, options.align)
        image = fixed_image(disk, options.align)
        identity = SourceIdentity.of(disk, image.virtual_size)
        result = UploadResult(str(location), image.virtual_size)
        if options.dry_run:
            send(None, None, image, ranges.SortedRanges([]), options, result, None)
            result.seconds = time.monotonic() - started
            return result
        with PageBlob(location, connections=options.workers + 2, timeout=options.timeout, retry=options.retry) as blob:
            try:
                if options.base is not None:
                    patch_base(blob, image, identity, options, result)
                elif options.since is not None:
                    with open_disk(options.since) as old:
                        patch_since(blob, image, identity, fixed_image(old, options.align), options, result)
                else:
                    readable, props = ((False, None) if options.managed_disk
                                       else nothing_sent_yet(readable_properties, blob))
                    result.managed_disk = not readable
                    if result.managed_disk:
                        to_managed_disk(blob, image, options, result)
                    else:
                        transfer(blob, props, image, identity, options, result)
            except NothingSent:
                raise
            except TransferError as exc:
                raise TransferError(f"upload interrupted: {exc.detail}; run the same command again to "
                                    "resume, only the missing pages will be sent", exc.path) from None
            result.retries = blob.retries
    result.seconds = time.monotonic() - started
    return result
