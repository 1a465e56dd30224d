"""`vhdtool info` on a blob URL: properties and footer from Azurite, over real HTTP."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from conftest import FIXTURES
from oracles import vhdtool


@pytest.fixture
def blob_url(azurite):
    from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("infotest")
    if not container.exists():
        container.create_container()

    def make(name: str, data: bytes, page: bool = True) -> str:
        blob = container.get_blob_client(name)
        if page:
            blob.create_page_blob(len(data))
            for off in range(0, len(data), 4 * 1024 * 1024):
                chunk = data[off : off + 4 * 1024 * 1024]
                if any(chunk):
                    blob.upload_page(chunk, offset=off, length=len(chunk))
        else:
            blob.upload_blob(data, overwrite=True)
        sas = generate_blob_sas(azurite.account_name, "infotest", name, account_key=azurite.account_key,
                                permission=BlobSasPermissions(read=True),
                                expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        return f"{blob.url}?{sas}"

    return make


def test_info_of_a_page_blob_matches_the_local_file(blob_url):
    src = FIXTURES / "windows-fixed-10m.vhd"
    url = blob_url("w.vhd", src.read_bytes())
    proc = vhdtool("info", url, "--json")
    assert proc.returncode == 0, proc.stderr
    remote = json.loads(proc.stdout)
    local = json.loads(vhdtool("info", str(src), "--json", check=True).stdout)
    assert remote["footer"] == local["footer"]
    assert (remote["type"], remote["virtual_size"], remote["blob_size"]) == ("fixed", 10 * 1024**2, 10 * 1024**2 + 512)
    assert remote["blob_type"] == "PageBlob" and remote["head_is_footer_copy"] is False
    sig = url.split("sig=")[1].split("&")[0]
    assert sig not in proc.stdout and "sig=REDACTED" in remote["path"]


def test_blob_without_a_footer_is_one_line_exit_2(blob_url):
    url = blob_url("junk.bin", b"\x07" * 2048, page=False)
    proc = vhdtool("info", url)
    assert proc.returncode == 2 and "not a VHD: no 'conectix' footer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and url.split("sig=")[1][:10] not in proc.stderr
