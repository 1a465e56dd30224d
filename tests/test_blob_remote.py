"""`read_blob_ends`: what `info` and `check` learn about a blob from two ranged GETs."""

from __future__ import annotations

import hashlib

import pytest

from faultproxy import FaultProxy
from helpers import image_bytes, KINDS, location
from vhdtool.azure.location import BlobLocation
from vhdtool.azure.remote import read_blob_ends
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import COOKIE, DiskType
from vhdtool.workflows.upload import UploadOptions, upload


def test_two_ranged_gets_and_nothing_else(azurite, container) -> None:
    upload(KINDS["dynamic"], location(azurite, container, "e.vhd"), UploadOptions(md5=True))
    expected = image_bytes(KINDS["dynamic"])
    with FaultProxy(azurite.port) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        ends = read_blob_ends(BlobLocation.from_connection_string(conn, container.container_name, "e.vhd"))
    assert (proxy.stats.requests, dict(proxy.stats.methods)) == (2, {"GET": 2})
    info = ends.info
    assert info.is_page_blob and info.size == len(expected)
    assert info.content_md5 == hashlib.md5(expected).digest()
    assert (info.lease_state, info.lease_status, info.lease_duration) == ("available", "unlocked", None)
    assert info.metadata["vhdtool_state"] == "complete"
    assert ends.head == expected[:512] and ends.tail == expected[-512:]
    footer = ends.footer
    assert footer is not None and footer.cookie == COOKIE and footer.disk_type == DiskType.FIXED
    assert footer.current_size == len(expected) - 512


def test_leased_blob(azurite, container) -> None:
    upload(KINDS["fixed"], location(azurite, container, "l.vhd"))
    lease = container.get_blob_client("l.vhd").acquire_lease(-1)
    info = read_blob_ends(location(azurite, container, "l.vhd")).info
    assert (info.lease_state, info.lease_status, info.lease_duration) == ("leased", "locked", "infinite")
    lease.release()


@pytest.mark.parametrize("size", [0, 100, 512, 700])
def test_short_and_block_blobs(azurite, container, size) -> None:
    data = bytes(range(256)) * 3
    blob = container.get_blob_client(f"b{size}")
    blob.upload_blob(data[:size])
    ends = read_blob_ends(location(azurite, container, f"b{size}"))
    assert (ends.info.blob_type, ends.info.is_page_blob, ends.info.size) == ("BlockBlob", False, size)
    assert ends.head == data[: min(size, 512)]
    assert ends.tail == data[:size][-512:] if size else ends.tail == b""
    assert (ends.footer is None) == (size < 512)
    if size >= 512:
        assert ends.footer is not None and ends.footer.cookie == data[size - 512 : size - 504]


def test_empty_page_blob(azurite, container) -> None:
    container.get_blob_client("empty").create_page_blob(0)
    ends = read_blob_ends(location(azurite, container, "empty"))
    assert (ends.info.is_page_blob, ends.info.size, ends.head, ends.tail, ends.footer) == (True, 0, b"", b"", None)


def test_missing_blob_is_one_redacted_line(azurite, container) -> None:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    token = generate_blob_sas(azurite.account_name, container.container_name, "nope.vhd",
                              account_key=azurite.account_key, permission=BlobSasPermissions(read=True),
                              expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    url = f"{azurite.blob_endpoint}/{container.container_name}/nope.vhd?{token}"
    with pytest.raises(VhdError) as missing:
        read_blob_ends(BlobLocation.from_url(url))
    text = str(missing.value)
    assert "BlobNotFound" in text and "sig=REDACTED" in text and "\n" not in text
    assert token.split("sig=")[1].split("&")[0] not in text
