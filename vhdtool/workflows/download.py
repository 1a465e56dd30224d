"""`vhdtool download`: a page blob into a sparse local file, fetching only its page ranges.

The engine scans the blob as a source (its page ranges are what is allocated, reads are
ranged GETs on N threads); zero pages inside ranges are not written either, so the file
allocates only the data. Each ranged GET is checked against the MD5 the service sends for
the range (a corrupted read is retried). The blob's sparse digest, when `upload` recorded one,
is checked at the cost of the data; the MD5 of the whole content (gaps hashed as zeros) is
checked against the blob's Content-MD5 when it has one, unless --no-check-md5.

Atomic and resumable: the data goes to ".NAME.vhdtool-partial" beside DEST and its progress
to ".NAME.vhdtool-partial.json" (account, container and blob names, the blob's ETag and length, and
the offset below which everything is written and fsynced). DEST appears only once complete
and checked. A re-run continues from that offset if the blob is unchanged (same ETag), and
starts again otherwise; every read is conditional on that ETag.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vhdtool.azure.location import BlobLocation
from vhdtool.azure.pageblob import PageBlob
from vhdtool.azure.remote import BlobInfo, BlobSource
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.engine.digest import ContentMd5, b64
from vhdtool.engine.pipeline import Window, nonzero_data, progress_bar, scan
from vhdtool.errors import VhdError
from vhdtool.disk.image import open_disk
from vhdtool.engine.output import (
    TEMP_SUFFIX,
    PendingOutput,
    check_destination,
    publish,
    sync_folder,
)
from vhdtool.engine.sink import SparseFile
from vhdtool.workflows.sparse_digest import METADATA_KEY as SPARSE_KEY
from vhdtool.workflows.sparse_digest import SparseDigest

MAX_READERS = 8  # the engine holds 2n + 1 read buffers of 4 MiB: memory stays under ~150 MiB


@dataclass(frozen=True)
class DownloadOptions:
    workers: int = 4  # parallel ranged GETs, at most MAX_READERS
    force: bool = False  # replace an existing DEST
    checkpoint: int = 64 * 1024 * 1024  # fsync and record progress every this many bytes
    check_md5: bool = True  # hash the whole content (every zero too) against the Content-MD5
    timeout: float = 120.0
    retry: RetryPolicy = RetryPolicy()
    log: Callable[[str], None] = field(default=lambda message: None)


@dataclass
class DownloadResult:
    path: Path
    blob: str  # redacted URL
    size: int
    fetched_bytes: int = 0  # page-range bytes read from the blob by this run
    written_bytes: int = 0  # non-zero bytes written to the file by this run
    resumed_from: int = 0  # offset this run started from
    md5_checked: bool = False
    digest_checked: bool = False  # the sparse digest upload recorded
    retries: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Partial:
    """Where an unfinished download lives, and which blob version it is a copy of."""

    data: Path
    state: Path
    identity: dict[str, object]

    @classmethod
    def beside(cls, dest: Path, location: BlobLocation, info: BlobInfo) -> Partial:
        stem = dest.with_name(f".{dest.name}{TEMP_SUFFIX}")
        # The blob by name, not by URL: a re-run may reach it another way (SAS URL, connection
        # string); the ETag changes with every write to it.
        identity = {"account": location.account_name, "container": location.container, "blob": location.name,
                    "etag": info.etag, "size": info.size}
        return cls(stem, stem.with_name(stem.name + ".json"), identity)

    def resumable_offset(self) -> int:
        """How much of the partial file is done, if it is a copy of this very blob version
        (and a regular file of ours: anything else at that name is never resumed into)."""
        try:
            with os.fdopen(open_own(self.state, os.O_RDONLY)) as state:
                saved = json.loads(state.read())
            done = int(saved.pop("done"))
            st = os.lstat(self.data)
        except (OSError, VhdError, ValueError, KeyError, TypeError, AttributeError):
            return 0
        own_file = stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
        return done if own_file and saved == self.identity and st.st_size == self.identity["size"] else 0

    def open_data(self, resume: bool) -> int:
        """The partial file: the one to resume, or a new one. A new one is created exclusively,
        and neither follows a link: a symlink planted at this name would otherwise make the
        download overwrite whatever it points to."""
        if resume:
            return open_own(self.data, os.O_RDWR)
        self.data.unlink(missing_ok=True)  # removes a link itself, never its target
        return os.open(self.data, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def record(self, done: int) -> None:
        """Remember that [0, done) is durable (the caller fsynced the data first). The state is
        written to one temporary name, created exclusively, and removed if writing fails (a
        full disk), so that no run leaves a second state file."""
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(self.identity | {"done": done}))
            os.replace(tmp, self.state)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        self.data.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)


def open_own(path: Path, flags: int) -> int:
    """Open an existing file without following a link; refused unless it is a regular file
    owned by the caller (a file someone else put there is not our partial download)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise VhdError("is not a regular file of yours: remove it and run the command again", path)
    return fd


def blob_info(blob: PageBlob) -> BlobInfo:
    props = blob.properties()
    if props is None:
        raise VhdError("no such blob", blob.location)
    info = BlobInfo.from_properties(props, props.size)
    if not info.is_page_blob:
        raise VhdError(f"is a {info.blob_type}, not a page blob (a VHD disk is a page blob)", blob.location)
    return info


def rehash(md5: ContentMd5 | None, sparse: SparseDigest | None, path: Path, done: int) -> None:
    """Feed the digests with what an earlier run already wrote (holes are zeros, not read)."""
    with open_disk(path, raw=True) as written:
        source = Window(written, 0, done)
        with progress_bar(source, "digest of the part already downloaded") as progress:
            for chunk in scan(source, progress=progress):
                if md5 is not None:
                    md5.add(chunk.offset, chunk.view)
                if sparse is not None:
                    for offset, data in nonzero_data([chunk]):
                        sparse.add(offset, data)


def fetch(blob: PageBlob, info: BlobInfo, out: SparseFile, partial: Partial, start: int, md5: ContentMd5 | None,
          sparse: SparseDigest | None, options: DownloadOptions, result: DownloadResult) -> None:
    """Read the blob's page ranges from `start` on into `out`, checkpointing as it goes."""
    source = Window(BlobSource(blob, info.size, blob.page_ranges(info.size), info.etag), start, info.size)
    checkpoint = start
    with progress_bar(source, "download") as progress:
        for chunk in scan(source, workers=min(options.workers, MAX_READERS), progress=progress):
            if md5 is not None:
                md5.add(chunk.offset, chunk.view)
            result.fetched_bytes += len(chunk.view)
            for offset, data in nonzero_data([chunk]):
                out.put(offset, data)
                if sparse is not None:
                    sparse.add(offset, data)
            end = chunk.offset + len(chunk.view)
            if end - checkpoint >= options.checkpoint:
                os.fsync(out.out.fd)
                partial.record(end)
                checkpoint = end
    result.written_bytes = out.written


def check_sparse(digest: str, info: BlobInfo, partial: Partial, location: BlobLocation) -> None:
    """Compare with the sparse digest upload recorded; a mismatch keeps nothing."""
    if digest != info.metadata[SPARSE_KEY]:
        partial.discard()
        raise VhdError(f"downloaded content has sparse digest {digest} but the blob's metadata says "
                       f"{info.metadata[SPARSE_KEY]}: nothing kept", location)


def check_md5(digest: bytes, info: BlobInfo, partial: Partial, location: BlobLocation) -> None:
    """Compare with the blob's Content-MD5; a mismatch keeps nothing."""
    if digest != info.content_md5:
        partial.discard()
        raise VhdError(f"downloaded content has MD5 {b64(digest)} but the blob's "
                       f"Content-MD5 is {b64(info.content_md5)}: nothing kept", location)


def transfer(blob: PageBlob, dest: Path, options: DownloadOptions) -> DownloadResult:
    """Fetch into the partial file (resuming it if it is a copy of this blob version), check,
    then give it DEST's name."""
    info = blob_info(blob)
    partial = Partial.beside(dest, blob.location, info)
    start = partial.resumable_offset()
    if start:
        options.log(f"resuming the download from offset {start:,}")
    result = DownloadResult(dest, str(blob.location), info.size, resumed_from=start)
    try:
        fd = partial.open_data(resume=bool(start))
    except OSError as exc:
        raise VhdError(f"cannot create the partial download: {exc.strerror}", partial.data) from None
    out = None
    try:
        partial.record(start)
        out = SparseFile(PendingOutput(fd, dest, partial.data), info.size)
        # MD5 hashes every byte, holes too (0.8 GB/s): only worth it when there is one to match.
        md5 = ContentMd5() if info.content_md5 is not None and options.check_md5 else None
        sparse = SparseDigest() if SPARSE_KEY in info.metadata else None
        if start and (md5 is not None or sparse is not None):
            rehash(md5, sparse, partial.data, start)
        fetch(blob, info, out, partial, start, md5, sparse, options, result)
        if sparse is not None:
            check_sparse(sparse.hexdigest(info.size), info, partial, blob.location)
        if md5 is not None:
            check_md5(md5.digest(info.size), info, partial, blob.location)
        result.md5_checked = md5 is not None
        result.digest_checked = sparse is not None
        os.fsync(fd)
        result.path = publish(out.out, options.force, numbered=False)
        sync_folder(result.path)
        partial.state.unlink(missing_ok=True)
    except OSError as exc:  # a full disk above all: name the file, keep what is durable
        raise VhdError(f"writing failed: {exc.strerror or exc}; free the space or fix the cause and run the "
                       "same command again to resume", exc.filename or partial.data) from None
    finally:
        if out is not None:
            out.close()
        os.close(fd)
    return result


def download(
    location: BlobLocation, dest: str | os.PathLike, options: DownloadOptions = DownloadOptions()
) -> DownloadResult:
    """Download the page blob at `location` to DEST (see the module docstring)."""
    started = time.monotonic()
    dest = Path(dest)
    check_destination(dest, options.force)
    with PageBlob(location, connections=options.workers + 2, timeout=options.timeout, retry=options.retry) as blob:
        try:
            result = transfer(blob, dest, options)
        except TransferError as exc:
            raise TransferError(f"download interrupted: {exc.detail}; run the same command again to resume",
                                exc.path) from None
        result.retries = blob.retries
    result.seconds = time.monotonic() - started
    return result
