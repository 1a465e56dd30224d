"""One page blob, as upload, download and the remote checks use it.

Every call goes through a `Retrier` (the SDK's own retries are off) and every failure becomes
a one-line `VhdError` naming the blob with its SAS signature redacted: a `TransferError` (exit
3, resumable) when transient failures outlasted the retries, a plain `VhdError` (exit 2) for
anything the service refused (authentication, conflicts, a missing container...).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from vhdtool import ranges
from vhdtool.azure.limits import PAGE, PUT_PAGE_MAX
from vhdtool.azure.location import BlobLocation, blob_client
from vhdtool.azure.retry import (
    ChecksumMismatch,
    Retrier,
    RetryPolicy,
    TransferError,
    describe,
    error_code,
    is_transient,
    status_of,
)
from vhdtool.errors import VhdError, WriterError
from vhdtool.ranges import Range

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobProperties

T = TypeVar("T")


class Forbidden(VhdError):
    """The service refused this call (403): `code` says why (a SAS without the permission for
    it, such as a managed disk's upload SAS, which allows page writes only:
    AuthorizationPermissionMismatch; a bad credential: AuthenticationFailed...)."""

    def __init__(self, message: str, path: object | None, code: str | None):
        super().__init__(message, path)
        self.code = code

# Get Page Ranges is asked per segment: on a large, fragmented blob one unbounded call can
# time out on the service side (Azure's guidance is to bound the range).
LIST_SEGMENT = 16 * 1024**3
CONNECT_TIMEOUT = 20.0


def open_client(location: BlobLocation, *, connections: int, timeout: float) -> BlobClient:
    """An SDK client with its retries off and a connection pool sized for our workers
    (requests' default pool of 10 would drop and reopen connections beyond that).

    The environment's proxy and CA bundle settings are read once here rather than on every
    request (requests scans all of os.environ per request: ~15% of our CPU per Put Page).
    """
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from urllib3.util.retry import Retry

    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(location.account_url)
    session.trust_env = False
    # Given to the transport, not the session: the transport passes its own `verify` (default
    # True) with every request, which would override session.verify.
    verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=1,
        pool_maxsize=connections,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=min(CONNECT_TIMEOUT, timeout),
        read_timeout=timeout,
        connection_verify=verify,
    )
    return blob_client(location, transport=transport, retry_total=0)


class Ranged(NamedTuple):
    """A ranged GET under way: the blob's properties, the body, the range's MD5 if sent."""

    props: BlobProperties
    chunks: Iterator[bytes]
    md5: bytes | None

    def check(self, data: bytes | memoryview) -> None:
        """Raise (a transient error: the read is retried) when the body read does not match
        the MD5 the service sent for the range: it was corrupted on the way."""
        if self.md5 and hashlib.md5(data).digest() != bytes(self.md5):
            raise ChecksumMismatch(f"{len(data):,} bytes read do not match the range's Content-MD5")


class PageBlob:
    """A page blob behind retried, redacted calls. Safe to share between threads."""

    def __init__(
        self,
        location: BlobLocation,
        *,
        connections: int = 8,
        timeout: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
    ):
        self.location = location
        self.client = open_client(location, connections=connections, timeout=timeout)
        self.retrier = Retrier(retry)

    @property
    def retries(self) -> int:
        return self.retrier.retries

    def call(self, doing: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """`fn(*args, **kwargs)` with retries; SDK failures become one-line errors."""
        from azure.core.exceptions import AzureError

        try:
            return self.retrier.call(fn, *args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise TransferError(
                    f"{doing} failed {self.retrier.policy.attempts} times ({describe(exc)})",
                    self.location,
                ) from None
            if isinstance(exc, AzureError) and status_of(exc) == 403:
                raise Forbidden(f"{doing} failed: {describe(exc)}", self.location, error_code(exc)) from None
            if isinstance(exc, AzureError):
                raise VhdError(f"{doing} failed: {describe(exc)}", self.location) from None
            raise

    def properties(self) -> BlobProperties | None:
        """The blob's properties and metadata, or None if there is no such blob."""
        from azure.core.exceptions import ResourceNotFoundError

        def get() -> BlobProperties | None:
            try:
                return self.client.get_blob_properties()
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise
                return None

        return self.call("reading the blob properties", get)

    def create(
        self, size: int, metadata: dict[str, str], *, lease: str | None = None, if_absent: bool = False
    ) -> bool:
        """(Re)create the page blob, empty, at `size`; with `if_absent`, False if it exists
        (which may be our own create whose answer was lost: the caller examines the blob)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError

        conditions: dict[str, object] = {"lease": lease}
        if if_absent:
            conditions["match_condition"] = MatchConditions.IfMissing

        def create() -> bool:
            try:
                self.client.create_page_blob(size, metadata=metadata, **conditions)
            except ResourceExistsError:
                if if_absent:
                    return False
                raise
            return True

        return self.call("creating the page blob", create)

    def page_ranges(self, size: int, lease: str | None = None) -> list[Range]:
        """The written ranges of the blob, merged, half-open (the service's ends are inclusive)."""

        def segment(offset: int, length: int) -> list[Range]:
            listed = self.client.list_page_ranges(offset=offset, length=length, lease=lease)
            return [(r.start, r.end + 1) for r in listed if not getattr(r, "cleared", False)]

        found: list[Range] = []
        for offset in range(0, size, LIST_SEGMENT):
            length = min(LIST_SEGMENT, size - offset)
            found.extend(self.call("listing the page ranges", segment, offset, length))
        return list(ranges.merge(found))

    def put(self, offset: int, data: bytes, lease: str | None) -> None:
        """One Put Page request: 512-aligned, at most 4 MiB (Azure's limit, which Azurite does not enforce).

        The body's MD5 goes with it (Content-MD5, a transactional checksum): the service refuses
        a body corrupted on the way (400 Md5Mismatch) and the retrier sends it again.
        """
        if offset % PAGE or len(data) % PAGE or not 0 < len(data) <= PUT_PAGE_MAX:
            raise WriterError(f"bad Put Page: {len(data)} bytes at {offset}")
        md5 = hashlib.md5(data).digest()
        self.call(f"writing pages at offset {offset:,}", self.client.upload_page, data, offset, len(data),
                  lease=lease, transactional_content_md5=md5)

    def clear(self, offset: int, length: int, lease: str | None) -> None:
        """One Clear Pages request: the range reads as zeros again and holds no page."""
        self.call(f"clearing pages at offset {offset:,}", self.client.clear_page, offset, length, lease=lease)

    def clear_within(self, offset: int) -> bool:
        """Clear Pages on the one page at `offset`: False when the blob ends before it (416).

        Sizes a blob whose properties cannot be read (a managed disk's write-only SAS)."""
        from azure.core.exceptions import HttpResponseError

        def clear() -> bool:
            try:
                self.client.clear_page(offset, PAGE)
            except HttpResponseError as exc:
                if status_of(exc) == 416:
                    return False
                raise
            return True

        return self.call(f"clearing the page at offset {offset:,}", clear)

    def _stream(self, offset: int, length: int, etag: str | None) -> Ranged:
        """Start one ranged GET, asking for the range's MD5; with `etag`, it fails (412) if the
        blob has changed since.

        Through the SDK's generated operation, not `download_blob`: for a page blob, the
        SDK's downloader follows every read with a Get Page Ranges of the whole blob, which
        would turn each 4 MiB read into a full listing.
        """
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob._deserialize import deserialize_blob_properties
        from azure.storage.blob._generated.models import ModifiedAccessConditions
        from azure.storage.blob._shared.response_handlers import process_storage_error

        def keep(response: object, chunks: Iterator[bytes], headers: dict) -> Ranged:
            return Ranged(deserialize_blob_properties(response, chunks, headers), chunks, headers.get("Content-MD5"))

        try:
            return self.client._client.blob.download(
                range=f"bytes={offset}-{offset + length - 1}",
                range_get_content_md5=length <= PUT_PAGE_MAX or None,  # the service's limit: 4 MiB
                modified_access_conditions=ModifiedAccessConditions(if_match=etag) if etag else None,
                cls=keep,
            )
        except HttpResponseError as error:
            process_storage_error(error)  # raises the SDK's specific error, with its code
            raise

    def get(self, offset: int, length: int) -> tuple[bytes, BlobProperties | None]:
        """Bytes [offset, offset + length) and the blob's properties (a GET answers with all of
        them, metadata included); (b"", None) when the blob has no byte at `offset` (416)."""
        from azure.core.exceptions import HttpResponseError

        def get() -> tuple[bytes, BlobProperties | None]:
            try:
                ranged = self._stream(offset, length, None)
            except HttpResponseError as error:
                if error.status_code == 416:
                    return b"", None
                raise
            data = b"".join(ranged.chunks)
            ranged.check(data)
            return data, ranged.props

        return self.call(f"reading {length:,} bytes at offset {offset:,}", get)

    def readinto(self, offset: int, buf: memoryview, etag: str | None = None) -> None:
        """Fill `buf` from the blob at `offset` (the engine's `Source.readinto`), no copy kept."""

        from azure.core.exceptions import ResourceModifiedError

        def read() -> None:
            try:
                ranged = self._stream(offset, len(buf), etag)
            except ResourceModifiedError:  # 412: the ETag no longer matches
                raise VhdError("the blob changed while it was being read: run the command again",
                               self.location) from None
            done = 0
            for chunk in ranged.chunks:
                buf[done : done + len(chunk)] = chunk
                done += len(chunk)
            if done != len(buf):
                raise ConnectionError(f"short read: {done:,} of {len(buf):,} bytes")
            ranged.check(buf)

        self.call(f"reading {len(buf):,} bytes at offset {offset:,}", read)

    def start_copy(self, source: BlobLocation) -> None:
        """Start a server-side copy of the blob at `source` onto this one (see copy_source_url);
        the store's wait_for_copy follows it to its end."""
        self.call("starting the server-side copy", self.client.start_copy_from_url, copy_source_url(source))

    def set_content_md5(self, md5: bytes | None, lease: str | None) -> None:
        """Set the blob's Content-MD5, or with None remove it."""
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_type="application/octet-stream",
                                   content_md5=bytearray(md5) if md5 is not None else None)
        self.call("setting Content-MD5", self.client.set_http_headers, settings, lease=lease)

    def set_metadata(self, metadata: dict[str, str], lease: str | None) -> None:
        self.call("setting the blob metadata", self.client.set_blob_metadata, metadata, lease=lease)

    def acquire_lease(self, lease_id: str, seconds: int) -> bool:
        """Acquire the lease with our ID (proposing the current holder's ID takes it over);
        False when someone else holds it (409)."""
        from azure.core.exceptions import ResourceExistsError

        def acquire() -> bool:
            try:
                self.client.acquire_lease(seconds, lease_id=lease_id)
            except ResourceExistsError:
                return False
            return True

        return self.call("acquiring the lease", acquire)

    def renew_lease(self, lease_id: str) -> None:
        from azure.storage.blob import BlobLeaseClient

        self.call("renewing the lease", BlobLeaseClient(self.client, lease_id).renew)

    def release_lease(self, lease_id: str) -> None:
        from azure.storage.blob import BlobLeaseClient

        self.call("releasing the lease", BlobLeaseClient(self.client, lease_id).release)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PageBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_source_url(source: BlobLocation) -> str:
    """The source URL a server-side copy reads. The copy keeps it as x-ms-copy-source, which
    anyone who may read the new blob's properties sees, so it carries the least credential
    there is: none when we hold the account key (Copy Blob authorizes a source in the
    destination's account by the request's Shared Key), the source's own SAS when one was
    given. A store given only a container SAS has nothing narrower to offer: a blob SAS
    needs the account key or a user delegation key (Entra ID), so its copies carry that
    container SAS (Put Page From URL would keep no copy source, at one request per 4 MiB)."""
    return f"{source.url}?{source.sas_token}" if source.sas_token else source.url
