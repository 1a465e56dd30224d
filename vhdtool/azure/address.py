"""Which blob a command means: a blob URL (with a SAS token, signed in with Azure AD, or
public), or a container and a blob name with a connection string (given, or from
$AZURE_STORAGE_CONNECTION_STRING)."""

from __future__ import annotations

from vhdtool.azure import is_blob_url
from vhdtool.azure.location import Access, BlobLocation, redact, resolve_connection_string
from vhdtool.errors import VhdError


def blob_from_args(
    url: str | None,
    container: str | None,
    name: str | None,
    connection_string: str | None,
    access: Access = Access(),
) -> BlobLocation:
    """The blob named either by `url` or by `container` and `name` (never both ways)."""
    if url is not None:
        if container or name or connection_string:
            raise VhdError("give either a blob URL or --container/--name (with a connection string), not both")
        if not is_blob_url(url):
            raise VhdError(f"not a blob URL (expected https://<account>.blob.core.windows.net/...): {redact(url)}")
        return BlobLocation.from_url(url, access)
    if not (container and name):
        raise VhdError("no destination blob: give a blob URL (with a SAS token, or --auth login), "
                       "or --container and --name")
    return BlobLocation.from_connection_string(resolve_connection_string(connection_string), container, name, access)
