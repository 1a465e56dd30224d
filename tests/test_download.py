"""`vhdtool download` against Azurite: the bytes come back exactly, only page ranges are
fetched, the file is sparse and atomic, Content-MD5 is checked, an interrupted download
resumes where its file is durable."""

from __future__ import annotations

import base64
import json
import os
import threading

import pytest

from faultproxy import FaultProxy, Faults, Request
from helpers import allocated, allocation_bound, conn_env, image_bytes, KINDS, leftovers, location, page_runs, scattered_vhd
from vhdtool.azure.location import BlobLocation
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.workflows.download import DownloadOptions, Partial, download
from vhdtool.errors import VhdError
from vhdtool.ranges import merge
from vhdtool.workflows.upload import UploadOptions, upload

MiB = 1024 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_download_gives_back_the_uploaded_image(kind, azurite, container, cli, tmp_path) -> None:
    src = KINDS[kind]
    expected = image_bytes(src)
    upload(src, location(azurite, container, "d.vhd"), UploadOptions(md5=True))
    dest = tmp_path / "back.vhd"
    done = cli("download", "--container", container.container_name, "--name", "d.vhd", str(dest), env=conn_env(azurite))
    assert done.code == 0, done.err
    assert dest.read_bytes() == expected
    assert allocated(dest) <= allocation_bound(expected, tmp_path)
    assert "Content-MD5 checked, sparse digest checked" in done.out and leftovers(tmp_path) == []


def test_fetches_only_page_ranges_and_writes_no_zero_pages(azurite, container, tmp_path) -> None:
    """A blob written with whole zero pages inside its ranges (as other tools do): the GETs
    cover exactly the page ranges, the zero pages are not written to the file."""
    blob = container.get_blob_client("z.vhd")
    blob.create_page_blob(8 * MiB)
    blob.upload_page(bytes(2 * MiB), offset=MiB, length=2 * MiB)  # a written range of zeros
    blob.upload_page(b"\x07" * 4096, offset=5 * MiB, length=4096)
    gets: list[Request] = []
    listings: list[Request] = []

    def record(request: Request) -> bool:
        if request.method == "GET":
            (listings if "comp=pagelist" in request.target else gets).append(request)
        return False

    with FaultProxy(azurite.port, Faults(only=record)) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        result = download(BlobLocation.from_connection_string(conn, container.container_name, "z.vhd"),
                          tmp_path / "z.vhd")
    fetched = sorted(tuple(map(int, r.headers["x-ms-range"].removeprefix("bytes=").split("-"))) for r in gets)
    assert fetched == [(MiB, 3 * MiB - 1), (5 * MiB, 5 * MiB + 4095)]
    assert len(listings) == 1  # one Get Page Ranges, not one per read (as the SDK's downloader does)
    assert result.fetched_bytes == 2 * MiB + 4096 and result.written_bytes == 4096
    content = (tmp_path / "z.vhd").read_bytes()
    assert content == bytes(5 * MiB) + b"\x07" * 4096 + bytes(3 * MiB - 4096)
    assert allocated(tmp_path / "z.vhd") <= allocation_bound(content, tmp_path)
    assert not result.md5_checked  # this blob has no Content-MD5


def test_existing_destination_needs_force(azurite, container, cli, tmp_path) -> None:
    upload(KINDS["fixed"], location(azurite, container, "f.vhd"))
    dest = tmp_path / "out.vhd"
    dest.write_bytes(b"keep me")
    args = ["download", "--container", container.container_name, "--name", "f.vhd", str(dest)]
    refused = cli(*args, env=conn_env(azurite))
    assert refused.code == 2 and "--force" in refused.err and dest.read_bytes() == b"keep me"
    assert cli(*args, "--force", env=conn_env(azurite)).code == 0
    assert dest.read_bytes() == image_bytes(KINDS["fixed"]) and leftovers(tmp_path) == []


def test_content_md5_mismatch_keeps_nothing(azurite, container, cli, tmp_path) -> None:
    from azure.storage.blob import ContentSettings

    upload(KINDS["dynamic"], location(azurite, container, "m.vhd"))
    blob = container.get_blob_client("m.vhd")
    blob.set_http_headers(ContentSettings(content_md5=bytearray(16)))
    dest = tmp_path / "m.vhd"
    failed = cli("download", "--container", container.container_name, "--name", "m.vhd", str(dest), env=conn_env(azurite))
    assert failed.code == 2 and "Content-MD5" in failed.err and len(failed.err.strip().splitlines()) == 1
    assert not dest.exists() and leftovers(tmp_path) == []


def test_not_a_page_blob_or_missing(azurite, container, cli, tmp_path) -> None:
    container.get_blob_client("b.txt").upload_blob(b"block")
    env = conn_env(azurite)
    for name, words in (("b.txt", "not a page blob"), ("none.vhd", "no such blob")):
        done = cli("download", "--container", container.container_name, "--name", name, str(tmp_path / "x"), env=env)
        assert done.code == 2 and words in done.err, done.err
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_interrupted_download_resumes_from_its_checkpoint(azurite, container, tmp_path) -> None:
    src = scattered_vhd(tmp_path / "src.vhd", 16 * MiB, pieces=40, seed=4)
    expected = image_bytes(src)
    upload(src, location(azurite, container, "r.vhd"), UploadOptions(md5=True))
    dest = tmp_path / "out" / "r.vhd"
    dest.parent.mkdir()

    def past_8_mib(request: Request) -> bool:  # every read beyond 8 MiB fails
        rng = request.headers.get("x-ms-range", "")
        return request.method == "GET" and rng.startswith("bytes=") and int(rng[6:].split("-")[0]) >= 8 * MiB

    options = DownloadOptions(workers=2, checkpoint=MiB, retry=RetryPolicy(attempts=2, base_delay=0.01))
    with FaultProxy(azurite.port, Faults(rate=1.0, max_faults=10**6, kinds=("503",), only=past_8_mib)) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        with pytest.raises(TransferError) as failed:
            download(BlobLocation.from_connection_string(conn, container.container_name, "r.vhd"), dest, options)
    assert failed.value.exit_code == 3 and "run the same command again to resume" in str(failed.value)
    assert not dest.exists()
    partial = Partial.beside(dest, location(azurite, container, "r.vhd"), _info(container, "r.vhd"))
    done_at = json.loads(partial.state.read_text())["done"]
    assert 0 < done_at <= 8 * MiB
    assert partial.data.read_bytes()[:done_at] == expected[:done_at]  # durable part is right

    result = download(location(azurite, container, "r.vhd"), dest, DownloadOptions(workers=2))
    assert result.resumed_from == done_at and result.md5_checked and result.digest_checked
    remaining = sum(e - max(s, done_at) for s, e in _ranges(container, "r.vhd") if e > done_at)
    assert result.fetched_bytes == remaining
    assert dest.read_bytes() == expected and leftovers(dest.parent) == []


def test_changed_blob_restarts_the_download(azurite, container, tmp_path) -> None:
    upload(KINDS["fixed"], location(azurite, container, "c.vhd"))
    dest = tmp_path / "c.vhd"
    loc = location(azurite, container, "c.vhd")
    partial = Partial.beside(dest, loc, _info(container, "c.vhd"))
    partial.data.write_bytes(bytes(len(image_bytes(KINDS["fixed"]))))
    partial.record(4 * MiB)  # an earlier run got this far...
    blob = container.get_blob_client("c.vhd")
    blob.upload_page(b"\x01" * 512, offset=0, length=512)  # ...then the blob changed (new ETag)
    blob.set_http_headers()  # and lost its Content-MD5
    blob.set_blob_metadata({})  # and its sparse digest
    result = download(loc, dest)
    assert result.resumed_from == 0
    assert dest.read_bytes() == b"\x01" * 512 + image_bytes(KINDS["fixed"])[512:]


def test_secrets_not_in_partial_state_or_errors(azurite, container, cli, tmp_path) -> None:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    upload(KINDS["fixed"], location(azurite, container, "s.vhd"))
    token = generate_blob_sas(azurite.account_name, container.container_name, "s.vhd",
                              account_key=azurite.account_key, permission=BlobSasPermissions(read=True),
                              expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    url = f"{azurite.blob_endpoint}/{container.container_name}/s.vhd?{token}"
    done = cli("download", url, str(tmp_path / "s.vhd"))
    assert done.code == 0 and (tmp_path / "s.vhd").read_bytes() == image_bytes(KINDS["fixed"])
    missing = cli("download", url.replace("/s.vhd?", "/gone.vhd?"), str(tmp_path / "g.vhd"))
    assert missing.code == 2 and "sig=REDACTED" in missing.err
    signature = token.split("sig=")[1].split("&")[0]
    assert signature not in done.out + done.err + missing.out + missing.err
    partial = Partial.beside(tmp_path / "s.vhd", BlobLocation.from_url(url), _info(container, "s.vhd"))
    assert "sig" not in json.dumps(partial.identity) and token not in json.dumps(partial.identity)


def _info(container, name: str):
    from vhdtool.azure.remote import BlobInfo

    props = container.get_blob_client(name).get_blob_properties()
    return BlobInfo.from_properties(props, props.size)


def _ranges(container, name: str) -> list[tuple[int, int]]:
    return [(r.start, r.end + 1) for r in container.get_blob_client(name).list_page_ranges()]


def test_md5_of_uploaded_blob_matches_download(azurite, container, tmp_path) -> None:
    """The MD5 the upload computed from the local file equals the MD5 of the bytes read back."""
    import hashlib

    src = scattered_vhd(tmp_path / "h.vhd", 8 * MiB, pieces=12, seed=6)
    up = upload(src, location(azurite, container, "h.vhd"), UploadOptions(workers=3, md5=True))
    down = download(location(azurite, container, "h.vhd"), tmp_path / "h-back.vhd")
    assert down.md5_checked
    assert up.content_md5 == base64.b64encode(hashlib.md5((tmp_path / "h-back.vhd").read_bytes()).digest()).decode()
    assert list(merge(_ranges(container, "h.vhd"))) == page_runs((tmp_path / "h-back.vhd").read_bytes())
    assert os.path.getsize(tmp_path / "h-back.vhd") == 8 * MiB + 512


def test_blob_changing_mid_download_is_reported(azurite, container, tmp_path) -> None:
    """Every read is conditional on the ETag seen at the start: a write in between is caught."""
    src = scattered_vhd(tmp_path / "w.vhd", 8 * MiB, pieces=10, seed=12)
    upload(src, location(azurite, container, "w.vhd"))
    blob = container.get_blob_client("w.vhd")
    written = threading.Event()

    def write_once(request: Request) -> bool:  # the first ranged read is held until the blob changed
        if request.method == "GET" and "x-ms-range" in request.headers and not written.is_set():
            blob.upload_page(b"\x09" * 512, offset=0, length=512)
            written.set()
        return False

    with FaultProxy(azurite.port, Faults(only=write_once)) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        with pytest.raises(VhdError) as changed:
            download(BlobLocation.from_connection_string(conn, container.container_name, "w.vhd"),
                     tmp_path / "w-back.vhd", DownloadOptions(workers=1))
    assert "changed while it was being read" in str(changed.value)
    assert not (tmp_path / "w-back.vhd").exists()
