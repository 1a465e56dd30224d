"""`vhdtool upload`: a VHD into an Azure page blob, sending only its non-zero 512-byte pages.

The source (any VHD, or a VHDX) is streamed as the fixed VHD it represents
(`FixedImage`, no temporary file) in one engine pass: allocated data is read once, zero pages
are dropped, the non-zero runs go out as Put Page requests (512-aligned, at most 4 MiB) from
N workers, and the blob's Content-MD5 is computed in the same pass, the zero gaps hashed
from a zero buffer.

Surviving a crash, a kill or a network failure:
- the footer is sent last, once every data page is acknowledged, so a blob cut short is
  never a valid VHD;
- the blob's metadata names its source (size, mtime, footer UUID, parent chain) and its state;
  a re-run lists the blob's page ranges and sends only the runs not there yet. Each Put Page
  is atomic and runs are cut the same way every time, so a run is wholly there or not at all;
- a lease is held while writing (see vhdtool.azure.lease); a blob of another source is
  refused without --overwrite, and someone else's lease is never broken.
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
from threading import Condition
from typing import TYPE_CHECKING

from vhdtool import ranges
from vhdtool.azure import lease as leases
from vhdtool.azure.location import BlobLocation
from vhdtool.azure.pageblob import PageBlob
from vhdtool.azure.remote import PAGE_BLOB, BlobSource
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.engine.digest import ContentMd5, b64, feed
from vhdtool.engine.pipeline import Window, nonzero_data, progress_bar, scan
from vhdtool.errors import VhdError
from vhdtool.disk.fixed import FixedImage, source_uuid
from vhdtool.disk.image import Disk, open_disk
from vhdtool.disk.sniff import readable_format
from vhdtool.format.vhd.footer import parse_footer
from vhdtool.format.vhd.timestamp import from_datetime
from vhdtool.ranges import Range
from vhdtool.redaction import redact

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties

    from vhdtool.workflows.check import Report

MiB = 1024 * 1024
PAGE = 512
STATE_KEY = "vhdtool_state"
MD5_KEY = "vhdtool_md5"
PARTIAL, COMPLETE = "partial", "complete"
VERIFY_READERS = 4  # parallel ranged GETs of --verify (memory: 2n + 1 buffers of 4 MiB)
IN_FLIGHT_BYTES = 48 * MiB  # page data held for requests not yet answered


@dataclass(frozen=True)
class UploadOptions:
    workers: int = 16  # parallel Put Page requests (Azurite on loopback: 16 beats 8 and 32)
    overwrite: bool = False  # replace a blob that holds something else
    resume: bool = True  # False: start again from an empty blob even if it is ours
    md5: bool = True  # set Content-MD5 on the blob
    verify: bool = False  # read back page ranges and content after the upload
    align: bool = False  # round a non-MiB virtual size up on the fly
    timeout: float = 120.0  # seconds per request before it counts as failed
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
    content_md5: str | None = None  # base64, as Azure shows it
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


def represented_report(path: Path, image: FixedImage) -> Report:
    """`check --target azure`'s rules on the fixed VHD a VHDX is streamed as (the VHDX's own
    structure was checked by open_vhdx, which refuses damage)."""
    from vhdtool.workflows.check import Report, Target
    from vhdtool.workflows.check.target_rules import check_azure

    report = Report(redact(str(path)), Target.AZURE)
    check_azure(report, Target.AZURE, parse_footer(image.footer_bytes), image.virtual_size)
    return report


def refuse_unfixable(path: Path, align: bool, report: Report | None = None) -> None:
    """Refuse, before anything is sent, a source `check --target azure` fails for a reason that
    on-the-fly conversion cannot fix (damage, size limits, a non-MiB size without --align).
    `report`: that check, if already made (default: check_image of `path`)."""
    from vhdtool.workflows.check import (
        REPAIRED_BY_ALIGNMENT,
        REPAIRED_BY_CONVERSION,
        check_image,
        unrepaired,
    )

    report = check_image(path, "azure") if report is None else report
    for finding in unrepaired(report, REPAIRED_BY_CONVERSION):
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


class Sender:
    """Put Page requests on `workers` threads. Memory stays bounded whatever `workers` is: at
    most workers + 1 pieces and IN_FLIGHT_BYTES are held at once. The first failure stops it
    and is raised to the caller."""

    def __init__(self, blob: PageBlob, lease_id: str | None, workers: int):
        self.blob, self.lease_id, self.workers = blob, lease_id, workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="vhdtool-put")
        self.room = Condition()
        self.held = self.held_bytes = 0
        self.failure: BaseException | None = None
        self.requests = self.sent = 0

    def put(self, offset: int, data: bytes) -> None:
        length = len(data)
        with self.room:
            while self.held and (self.held > self.workers or self.held_bytes + length > IN_FLIGHT_BYTES):
                self.room.wait()
            if self.failure is not None:
                raise self.failure
            self.held += 1
            self.held_bytes += length
        future = self.pool.submit(self.blob.put, offset, data, self.lease_id)
        future.add_done_callback(lambda done: self._done(done, length))

    def _done(self, future: Future[None], length: int) -> None:
        error = None if future.cancelled() else future.exception()
        with self.room:
            self.held -= 1
            self.held_bytes -= length
            if error is not None:
                self.failure = self.failure or error
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


def claim(blob: PageBlob, identity: SourceIdentity, options: UploadOptions) -> tuple[leases.Lease | None, list[Range]]:
    """Make the blob this upload's: (lease, page ranges already written), or (None, []) when
    this very source is already completely uploaded there."""
    props = blob.properties()
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
        if why is None and options.resume:
            blob.set_metadata(metadata, held.id)
            return held, blob.page_ranges(identity.blob_size, held.id)
        if why is not None and not options.overwrite:
            raise VhdError(f"the blob holds something else ({why}): use --overwrite to replace it", blob.location)
        blob.create(identity.blob_size, metadata, lease=held.id)
        return held, []
    except BaseException:
        held.release()
        raise


def source_changed(disk: Disk) -> bool:
    """Whether any file of the chain was modified since it was opened (the blob would then
    mix two versions of the disk)."""
    for d in disk.chain():
        now = os.fstat(d.fd)
        if (now.st_size, now.st_mtime_ns) != (d.stat.st_size, d.stat.st_mtime_ns):
            return True
    return False


def send(blob: PageBlob, lease_id: str | None, image: FixedImage, present: ranges.SortedRanges, options: UploadOptions,
         result: UploadResult, runs: list[Range] | None) -> bytes | None:
    """Send the non-zero runs that are not on the blob yet, the footer last; return the MD5
    of the whole image (None with --no-md5 unless verifying). `runs` collects every run."""
    md5 = ContentMd5() if options.md5 or options.verify else None
    body = Window(image, 0, image.data_size)  # everything but the footer

    def piece(offset: int, data: bytes | memoryview, sender: Sender) -> None:
        end = offset + len(data)
        result.nonzero_bytes += len(data)
        if runs is not None:
            runs.append((offset, end))
        if present.covers(offset, end):
            result.present_bytes += len(data)
        else:
            sender.put(offset, bytes(data))  # a copy: the engine reuses its buffer

    with progress_bar(body, "upload") as progress:
        with Sender(blob, lease_id, options.workers) as sender:
            for chunk in scan(body, progress=progress):
                if md5 is not None:
                    md5.add(chunk.offset, chunk.view)
                for offset, data in nonzero_data([chunk]):
                    piece(offset, data, sender)
        if source_changed(image.disk):  # checked before the footer makes the blob a VHD
            raise VhdError("changed while it was being uploaded: run the upload again", image.path)
        with Sender(blob, lease_id, 1) as last:  # every data page is acknowledged by now
            piece(image.data_size, image.footer_bytes, last)
    result.requests += sender.requests + last.requests
    result.sent_bytes += sender.sent + last.sent
    if md5 is None:
        return None
    md5.add(image.data_size, image.footer_bytes)
    return md5.digest(image.virtual_size)


def finish(blob: PageBlob, lease_id: str, identity: SourceIdentity, md5: bytes | None) -> None:
    """Mark the upload complete: Content-MD5 first, then the state (a crash in between only
    means the next run recomputes and sets the same MD5)."""
    metadata = identity.metadata(COMPLETE)
    if md5 is not None:
        blob.set_content_md5(md5, lease_id)
        metadata[MD5_KEY] = b64(md5)
    blob.set_metadata(metadata, lease_id)


def verify(blob: PageBlob, size: int, runs: list[Range], md5: bytes, workers: int) -> None:
    """The blob's page ranges are exactly the image's non-zero runs, and the MD5 of its
    content (page ranges read back, gaps as zeros) and its Content-MD5 equal ours."""
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


def transfer(blob: PageBlob, image: FixedImage, identity: SourceIdentity, options: UploadOptions,
             result: UploadResult) -> None:
    """Claim the blob, send what it lacks, mark it complete, verify if asked."""
    runs: list[Range] | None = [] if options.verify else None
    held, written = claim(blob, identity, options)
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
            finish(blob, held.id, identity, md5 if options.md5 else None)
        finally:
            held.release()
        if md5 is not None and options.md5:
            result.content_md5 = b64(md5)
    if runs is not None and md5 is not None:
        verify(blob, image.virtual_size, runs, md5, min(options.workers, VERIFY_READERS))
        result.verified = True


def upload(src: str | Path, location: BlobLocation, options: UploadOptions = UploadOptions()) -> UploadResult:
    """Upload SRC to the page blob at `location` (see the module docstring)."""
    started = time.monotonic()
    src = Path(src)
    if options.workers < 1:
        raise VhdError("--workers must be at least 1")
    vhdx = readable_format(src) == "vhdx"  # qcow2, VMDK, VDI: one line saying how to convert
    if not vhdx:
        refuse_unfixable(src, options.align)
    with open_disk(src) as disk:
        image = fixed_image(disk, options.align)
        if vhdx:
            refuse_unfixable(src, options.align, represented_report(src, image))
        identity = SourceIdentity.of(disk, image.virtual_size)
        result = UploadResult(str(location), image.virtual_size)
        with PageBlob(location, connections=options.workers + 2, timeout=options.timeout, retry=options.retry) as blob:
            try:
                transfer(blob, image, identity, options, result)
            except TransferError as exc:
                raise TransferError(f"upload interrupted: {exc.detail}; run the same command again to "
                                    "resume, only the missing pages will be sent", exc.path) from None
            result.retries = blob.retries
    result.seconds = time.monotonic() - started
    return result
