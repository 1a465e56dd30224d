"""The blob `vhdtool bench --blob URL` uploads to: it must not exist (a benchmark never
overwrites someone's data), and whatever the uploads left there is deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vhdtool.azure.address import blob_from_args
from vhdtool.azure.pageblob import PageBlob
from vhdtool.errors import VhdError


@contextmanager
def scratch_blob(url: str) -> Iterator[str]:
    """Yield `url` once it is known not to exist; delete the blob on the way out."""
    location = blob_from_args(url, None, None, None)
    with PageBlob(location, connections=2, timeout=60.0) as blob:
        if blob.properties() is not None:
            raise VhdError("already exists: bench uploads to a new blob and deletes it afterwards, "
                           "give the URL of one that does not exist", location)
        try:
            yield url
        finally:
            delete(blob)


def delete(blob: PageBlob) -> None:
    """Delete the blob if it is there, breaking the lease an interrupted upload may have left."""
    props = blob.properties()
    if props is None:
        return
    if props.lease.state == "leased":
        from azure.storage.blob import BlobLeaseClient

        blob.call("breaking the lease of an interrupted upload", BlobLeaseClient(blob.client).break_lease, 0)
    blob.call("deleting the benchmark's blob", blob.client.delete_blob)
