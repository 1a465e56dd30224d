"""Azure page-blob support. Importing this package must stay cheap: it holds only the test
every command makes of its arguments; the Azure SDK is loaded only when a client is actually
built (see ``location.blob_client``)."""


def is_blob_url(text: str) -> bool:
    """Whether a command argument names a blob rather than a local file."""
    return text.lower().startswith(("https://", "http://"))
