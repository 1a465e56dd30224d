"""The Azure store: one container. VHDs are page blobs at its root; records are JSON block
blobs under images/ and vms/, with metadata that tells other tools what they are.

How a name is taken without ever overwriting a blob (two captures never share a name):
- from a blob: a server-side Copy Blob whose destination condition is If-None-Match: *
  (the service refuses it with 409 if the name exists), then its copy state is polled;
- from a local file: an empty page blob created with If-None-Match: * claims the name, and
  `upload` then writes the disk into that blob (its own lease, resume and Content-MD5).
Each claim carries a random token in the blob's metadata, so that a retried request whose
first answer was lost recognises its own blob instead of moving on to the next name.

A source blob URL without a SAS in the store's own account is reached with the store's
credential (an account key authorises same-account copy sources; a container SAS covers the
blobs of its container); a source in another account needs a SAS in its URL.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vhdtool.azure.location import BlobLocation, ContainerLocation, container_client
from vhdtool.azure.pageblob import PageBlob, copy_source_url
from vhdtool.azure.retry import Retrier, TransferError, describe, is_transient
from vhdtool.errors import VhdError
from vhdtool.workflows.store.base import IMAGE, VM, CopyTrail, DiskEntry, Log, Store, StoredDisk, candidate_names
from vhdtool.engine.digest import b64, content_md5
from vhdtool.workflows.store.local import utc_now

if TYPE_CHECKING:
    from azure.storage.blob import BlobProperties

T = TypeVar("T")
CLAIM_KEY = "vhdtool_claim"  # the token of the capture or deploy that took this name
POLL_SECONDS = 1.0  # between reads of a pending copy's state
PAGE_BLOB = "PageBlob"
LEASED = frozenset({"leased", "breaking"})  # a breaking lease still blocks writes and deletes


def names_taken(location: BlobLocation, numbered: bool) -> VhdError:
    if numbered:
        return VhdError(f"every name up to {location.name} is taken", location)
    return VhdError("already exists", location)


def blob_md5(blob: PageBlob, size: int) -> str:
    """Content-MD5 of a page blob, from its page ranges (the gaps are zeros)."""
    from vhdtool.azure.remote import BlobSource

    return content_md5(BlobSource(blob, size, blob.page_ranges(size)), blob.location.name)


def lease_reason(state: str | None, duration: str | None) -> str | None:
    """Why a blob with this lease state must be left alone, or None when it is not leased."""
    if str(state or "available") not in LEASED:
        return None
    if duration == "infinite":
        return "under an infinite lease (a disk attached to a VM?)"
    return "under a lease"


def trail_from_copy(props: BlobProperties, source: str) -> CopyTrail:
    """The copy trail as the service reports it on the destination blob."""
    copy = props.copy
    copied, _, total = (copy.progress or "").partition("/")
    done = copy.completion_time
    return CopyTrail(copy.id or "", source, "copy-blob", copy.status or "",
                     int(copied or props.size), int(total or props.size),
                     done.isoformat().replace("+00:00", "Z") if done else utc_now())


class AzureStore(Store):
    kind = "azure"
    md5_by_default = True

    def __init__(self, container: ContainerLocation):
        self.container = container

    def describe(self) -> str:
        return self.container.url

    def has_vhd(self, name: str) -> bool:
        with PageBlob(self.container.blob(name), connections=1) as blob:
            return blob.properties() is not None

    def resolve(self, source: Path | BlobLocation) -> Path | BlobLocation:
        """A blob `source` with the store's credential when it has none and lives in the
        store's account (see the module docstring)."""
        here = self.container
        if isinstance(source, Path) or source.credential_kind is not None or source.account_url != here.account_url:
            return source
        sas = here.sas_token if source.container == here.container else None
        if sas is None and here.account_key is None:
            return source
        return ContainerLocation(here.account_url, source.container, here.account_name, sas,
                                 None if sas else here.account_key).blob(source.name)

    def copy_in(self, source: Path | BlobLocation, name: str, *, metadata: dict[str, str], md5: bool,
                log: Log, numbered: bool = True) -> StoredDisk:
        source = self.resolve(source)
        if isinstance(source, Path):
            return self._upload(source, name, numbered, metadata, md5, log)
        return self._copy(source, name, numbered, metadata, md5)

    def copy_within(self, name: str, new_name: str, *, metadata: dict[str, str], log: Log) -> StoredDisk:
        return self._copy(self.resolve(self.container.blob(name)), new_name, False, metadata, True)

    def _copy(self, source: BlobLocation, wanted: str, numbered: bool, metadata: dict[str, str],
              md5: bool) -> StoredDisk:
        """Server-side Copy Blob into the first free name; the copy state is polled to the end."""
        token = str(uuid.uuid4())
        for name in candidate_names(wanted, numbered):
            with PageBlob(self.container.blob(name)) as blob:
                if not start_copy(blob, copy_source_url(source), metadata | {CLAIM_KEY: token}, token):
                    continue
                try:
                    props = wait_for_copy(blob)
                    digest = b64(props.content_settings.content_md5)
                    if digest is None and md5:
                        digest = blob_md5(blob, props.size)
                        blob.set_content_md5(base64.b64decode(digest), None)
                except BaseException:
                    discard(blob)
                    raise
                return StoredDisk(name, blob.location.url, props.size, digest, trail_from_copy(props, str(source)))
        raise names_taken(self.container.blob(name), numbered)

    def _upload(self, source: Path, wanted: str, numbered: bool, metadata: dict[str, str], md5: bool,
                log: Log) -> StoredDisk:
        """Claim the first free name with an empty page blob, then `upload` into it."""
        from vhdtool.workflows.upload import UploadOptions, upload

        token = str(uuid.uuid4())
        for name in candidate_names(wanted, numbered):
            with PageBlob(self.container.blob(name), connections=1) as blob:
                if claim_name(blob, token):
                    break
        else:
            raise names_taken(self.container.blob(name), numbered)
        location = self.container.blob(name)
        try:
            done = upload(source, location, UploadOptions(overwrite=True, md5=md5, log=log))
            with PageBlob(location, connections=1) as blob:
                props = blob.properties()
                blob.set_metadata(dict(props.metadata or {}) | metadata | {CLAIM_KEY: token}, None)
        except BaseException:
            with PageBlob(location, connections=1) as blob:
                discard(blob)
            raise
        trail = CopyTrail(token, str(source), "upload", "success", done.blob_size, done.blob_size, utc_now())
        return StoredDisk(name, location.url, done.blob_size, done.content_md5, trail)

    def vhds(self) -> list[DiskEntry]:
        found = []
        for props in self._list(None):
            if str(getattr(props.blob_type, "value", props.blob_type)) != PAGE_BLOB:
                continue
            if props.name.startswith((f"{IMAGE}/", f"{VM}/")):
                continue
            found.append(DiskEntry(props.name, self.container.blob(props.name).url, props.size, None,
                                   lease_reason(props.lease.state, props.lease.duration),
                                   props.name if unfinished(props) else None))
        return found

    def delete_vhd(self, name: str) -> None:
        """Delete the blob; a copy still pending is aborted first, and the lease of an upload
        whose process has exited (on this machine) is used rather than waited out."""
        from vhdtool.azure.lease import dead_holder_lease

        with PageBlob(self.container.blob(name), connections=1) as blob:
            props = blob.properties()
            if props is None:
                raise VhdError("no such blob", blob.location)
            if props.copy.status == "pending":
                blob.call("aborting the copy", blob.client.abort_copy, props.copy.id)
            lease = dead_holder_lease(props.metadata or {}) if lease_reason(props.lease.state, None) else None
            blob.call("deleting the blob", blob.client.delete_blob, lease=lease)

    def record_blob(self, kind: str, name: str) -> BlobLocation:
        return self.container.blob(f"{kind}/{name}.json")

    def read_record(self, kind: str, name: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        location = self.record_blob(kind, name)

        def get() -> bytes | None:
            try:
                return blob.client.download_blob().readall()
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise
                return None

        with PageBlob(location, connections=1) as blob:
            data = blob.call("reading the record", get)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise VhdError(f"unreadable record: {exc}", location) from None

    def records(self, kind: str) -> dict[str, dict[str, Any]]:
        names = sorted(p.name[len(kind) + 1: -len(".json")] for p in self._list(f"{kind}/")
                       if p.name.endswith(".json"))
        found = {n: self.read_record(kind, n) for n in names}
        return {n: r for n, r in found.items() if r is not None}

    def create_record(self, kind: str, name: str, record: dict[str, Any], metadata: dict[str, str]) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        token = str(uuid.uuid4())
        data = (json.dumps(record, indent=2) + "\n").encode()
        settings = ContentSettings(content_type="application/json")

        def put() -> bool:
            try:  # overwrite=False: If-None-Match: *, an exclusive create
                blob.client.upload_blob(data, overwrite=False, metadata=metadata | {CLAIM_KEY: token},
                                        content_settings=settings)
            except ResourceExistsError:
                return False
            return True

        with PageBlob(self.record_blob(kind, name), connections=1) as blob:
            if not blob.call("writing the record", put) and not claimed(blob, token):
                raise VhdError("a record of that name already exists", blob.location)

    def delete_record(self, kind: str, name: str) -> None:
        with PageBlob(self.record_blob(kind, name), connections=1) as blob:
            blob.call("deleting the record", blob.client.delete_blob)

    def _list(self, prefix: str | None) -> list[BlobProperties]:
        """Every blob (under `prefix`), with metadata; retried, one-line redacted errors."""
        from azure.core.exceptions import AzureError

        client = container_client(self.container, retry_total=0)
        try:
            return Retrier().call(lambda: list(client.list_blobs(name_starts_with=prefix, include=["metadata"])))
        except AzureError as exc:
            kind = TransferError if is_transient(exc) else VhdError
            raise kind(f"listing the container failed: {describe(exc)}", self.describe()) from None
        finally:
            client.close()


def unfinished(props: BlobProperties) -> bool:
    """A blob a capture or deploy never completed: its copy did not succeed, its upload is
    partial, or it is still the empty blob that claimed the name for an upload."""
    from vhdtool.workflows.upload import PARTIAL, STATE_KEY

    metadata = props.metadata or {}
    if props.copy.status in ("pending", "failed", "aborted"):
        return True
    return metadata.get(STATE_KEY) == PARTIAL or (props.size == 0 and CLAIM_KEY in metadata)


def claimed(blob: PageBlob, token: str) -> bool:
    """Whether the existing blob is the one this token's own (retried) request created."""
    props = blob.properties()
    return props is not None and (props.metadata or {}).get(CLAIM_KEY) == token


def claim_name(blob: PageBlob, token: str) -> bool:
    """Take the blob's name with an empty page blob, unless the name exists."""
    return blob.create(0, {CLAIM_KEY: token}, if_absent=True) or claimed(blob, token)


def start_copy(blob: PageBlob, source_url: str, metadata: dict[str, str], token: str) -> bool:
    """Start a Copy Blob into this blob only if it does not exist (If-None-Match: *)."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError

    def start() -> bool:
        try:
            blob.client.start_copy_from_url(source_url, metadata=metadata, match_condition=MatchConditions.IfMissing)
        except ResourceExistsError:
            return False
        return True

    return blob.call("starting the copy", start) or claimed(blob, token)


def wait_for_copy(blob: PageBlob) -> BlobProperties:
    """Poll the destination's copy state until it is no longer pending; only success returns."""
    props = blob.properties()
    with CopyProgress(blob.location.name) as update:
        while props is not None and props.copy.status == "pending":
            update(props.copy.progress)
            time.sleep(POLL_SECONDS)
            props = blob.properties()
    if props is None:
        raise VhdError("the blob disappeared while being copied", blob.location)
    if props.copy.status != "success":
        why = f": {props.copy.status_description}" if props.copy.status_description else ""
        raise VhdError(f"the copy ended {props.copy.status}{why}", blob.location)
    return props


class CopyProgress:
    """A tqdm bar fed with x-ms-copy-progress ("copied/total") on a terminal; silent otherwise."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __enter__(self) -> Callable[[str | None], None]:
        return self.update

    def update(self, progress: str | None) -> None:
        copied, _, total = (progress or "").partition("/")
        if not (copied.isdigit() and total.isdigit()) or not sys.stderr.isatty():
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=int(total), desc=f"copy {self.label}", unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False)
        self.bar.update(int(copied) - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def discard(blob: PageBlob) -> None:
    """Abort (if pending) and delete a copy that did not complete; best effort: a failure
    here must not hide the one being handled."""
    try:
        props = blob.properties()
        if props is not None and props.copy.status == "pending":
            blob.call("aborting the copy", blob.client.abort_copy, props.copy.id)
        blob.call("deleting the incomplete copy", blob.client.delete_blob)
    except VhdError:
        pass
