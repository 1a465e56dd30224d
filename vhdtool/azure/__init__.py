"""Azure page-blob support. Importing this package must stay cheap: the Azure SDK is loaded
only when a client is actually built (see ``location.blob_client``)."""

from vhdtool.azure.location import (
    CONNECTION_STRING_ENV,
    Access,
    BlobLocation,
    ContainerLocation,
    blob_client,
    container_client,
    redact,
    resolve_connection_string,
)

__all__ = [
    "CONNECTION_STRING_ENV",
    "Access",
    "BlobLocation",
    "ContainerLocation",
    "blob_client",
    "container_client",
    "redact",
    "resolve_connection_string",
]
