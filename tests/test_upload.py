"""`vhdtool upload` against Azurite (real HTTP on loopback): exact page ranges, exact bytes on
the wire, exact MD5, refusals, leases, faults, and resuming after failures and SIGKILL."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import ContentSettings

from conftest import FIXTURES
from faultproxy import FaultProxy, Faults, Request
from helpers import conn_env, found, image_bytes, KINDS, location, MiB, page_runs, scattered_vhd
from vhdtool.azure.location import BlobLocation
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.format.vhd.footer import DiskType, parse_footer
from vhdtool.disk.image import SparseDisk, open_disk
from vhdtool.ranges import merge
from vhdtool.workflows.upload import IN_FLIGHT_BYTES, Sender, UploadOptions, upload

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def blob_ranges(blob) -> list[tuple[int, int]]:
    """The blob's written ranges, merged, half-open (straight from the SDK, not our code)."""
    return list(merge((r.start, r.end + 1) for r in blob.list_page_ranges()))


def blob_content(blob) -> bytes:
    return blob.download_blob().readall()


def sent_bytes(out: str) -> int:
    return int(found(r"sent:\s+([\d,]+) bytes", out).group(1).replace(",", ""))


def sparse_sha256(content: bytes) -> str:
    """The sparse digest of `content`, from its bytes: SHA-256 of (size, SHA-256 of the
    non-zero runs as little-endian (start, end) pairs, SHA-256 of their data)."""
    runs = page_runs(content)
    pairs = b"".join(struct.pack("<QQ", s, e) for s, e in runs)
    data = b"".join(content[s:e] for s, e in runs)
    return hashlib.sha256(struct.pack("<Q", len(content)) + hashlib.sha256(pairs).digest()
                          + hashlib.sha256(data).digest()).hexdigest()


def check_blob_is(blob, expected: bytes, md5: bool = False) -> None:
    """Exact content, exact page ranges (the non-zero pages), the sparse digest of the content
    in the metadata, and with `md5` its Content-MD5 (without, none)."""
    props = blob.get_blob_properties()
    assert props.blob_type == "PageBlob" and props.size == len(expected)
    assert blob_ranges(blob) == page_runs(expected)
    assert props.metadata["vhdtool_sparse_sha256"] == sparse_sha256(expected)
    if md5:
        assert bytes(props.content_settings.content_md5) == hashlib.md5(expected).digest()
        assert props.metadata["vhdtool_md5"] == base64.b64encode(hashlib.md5(expected).digest()).decode()
    else:
        assert props.content_settings.content_md5 is None and "vhdtool_md5" not in props.metadata
    assert blob_content(blob) == expected


# --- the three kinds of source -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_upload_sends_exactly_the_non_zero_pages(kind, azurite, container, cli) -> None:
    src = KINDS[kind]
    expected = image_bytes(src)
    done = cli("upload", str(src), "--container", container.container_name, "--name", "d.vhd",
               env=conn_env(azurite))
    assert done.code == 0, done.err
    blob = container.get_blob_client("d.vhd")
    check_blob_is(blob, expected)
    # `vhdtool map` of the source, plus the footer, is what the blob holds
    mapped = cli("map", "--json", str(src))
    runs = [(r["start"], r["start"] + r["length"]) for r in json.loads(mapped.out)["runs"]]
    size = len(expected) - 512
    assert blob_ranges(blob) == list(merge(runs + [(size, size + 512)]))
    nonzero = sum(e - s for s, e in page_runs(expected))
    assert sent_bytes(done.out) == nonzero
    assert parse_footer(expected[-512:]).disk_type == DiskType.FIXED
    metadata = blob.get_blob_properties().metadata
    with open_disk(src) as disk:
        assert metadata["vhdtool_source_uuid"] == disk.footer.unique_id.hex()
        assert metadata["vhdtool_source_size"] == str(disk.stat.st_size)
    assert metadata["vhdtool_state"] == "complete"
    assert (metadata["vhdtool_parents"] == "none") == (kind != "differencing")


def test_bytes_on_the_wire_are_the_non_zero_pages(azurite, container, tmp_path) -> None:
    """Counted by the proxy, not by the tool: Put Page bodies add up to the non-zero pages,
    each request is 512-aligned and at most 4 MiB, and the footer is the very last one."""
    src = scattered_vhd(tmp_path / "s.vhd", 24 * MiB, pieces=30, seed=3)
    expected = image_bytes(src)
    puts: list[Request] = []

    def record(request: Request) -> bool:
        if request.is_put_page:
            puts.append(request)
        return False

    with FaultProxy(azurite.port, Faults(only=record)) as proxy:
        loc = BlobLocation.from_connection_string(
            azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name)),
            container.container_name, "w.vhd")
        result = upload(src, loc, UploadOptions(workers=4))
    nonzero = sum(e - s for s, e in page_runs(expected))
    assert proxy.stats.put_page_bytes == result.sent_bytes == nonzero
    assert result.requests == len(puts)
    for request in puts:
        first, last = map(int, request.headers["x-ms-range"].removeprefix("bytes=").split("-"))
        assert first % 512 == 0 and (last + 1) % 512 == 0 and 0 < last + 1 - first <= 4 * MiB
    assert puts[-1].headers["x-ms-range"] == f"bytes={len(expected) - 512}-{len(expected) - 1}"
    check_blob_is(container.get_blob_client("w.vhd"), expected)


# --- refusals ----------------------------------------------------------------------------------


def test_non_mib_size_needs_align(azurite, container, cli) -> None:
    src = FIXTURES / "qemu-fixed-2m.vhd"  # 2,123,776 bytes: qemu-img's CHS rounding
    args = ["upload", str(src), "--container", container.container_name, "--name", "a.vhd"]
    refused = cli(*args, env=conn_env(azurite))
    assert refused.code == 2 and "--align" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert not container.get_blob_client("a.vhd").exists()

    done = cli(*args, "--align", env=conn_env(azurite))
    assert done.code == 0, done.err
    expected = image_bytes(src, align=True)
    assert len(expected) == 3 * MiB + 512 and parse_footer(expected[-512:]).current_size == 3 * MiB
    check_blob_is(container.get_blob_client("a.vhd"), expected)


def test_damaged_source_refused_before_anything_is_sent(azurite, container, cli, tmp_path) -> None:
    src = tmp_path / "damaged.vhd"
    data = bytearray((FIXTURES / "windows-dynamic-10m.vhd").read_bytes())
    data[512 + 40] ^= 0xFF  # the dynamic header's parent UUID: its checksum no longer matches
    src.write_bytes(data)
    done = cli("upload", str(src), "--container", container.container_name, "--name", "x.vhd",
               env=conn_env(azurite))
    assert done.code == 2
    assert done.err.startswith(f"vhdtool: error: {src}: refused, the image is damaged (header.checksum)")
    assert len(done.err.strip().splitlines()) == 1
    assert not container.get_blob_client("x.vhd").exists()


def test_blob_of_another_source_needs_overwrite(azurite, container, cli) -> None:
    a, b = KINDS["fixed"], KINDS["dynamic"]
    env = conn_env(azurite)
    target = ["--container", container.container_name, "--name", "o.vhd"]
    assert cli("upload", str(a), *target, env=env).code == 0
    refused = cli("upload", str(b), *target, env=env)
    assert refused.code == 2 and "another source" in refused.err and "--overwrite" in refused.err
    blob = container.get_blob_client("o.vhd")
    check_blob_is(blob, image_bytes(a))
    assert blob.get_blob_properties().lease.state == "available"
    assert cli("upload", str(b), *target, "--overwrite", env=env).code == 0
    check_blob_is(blob, image_bytes(b))


def test_block_blob_is_not_replaced_without_overwrite(azurite, container, cli) -> None:
    blob = container.get_blob_client("k.vhd")
    blob.upload_blob(b"not a disk")
    refused = cli("upload", str(KINDS["fixed"]), "--container", container.container_name, "--name", "k.vhd",
                  env=conn_env(azurite))
    assert refused.code == 2 and "BlockBlob" in refused.err
    assert blob_content(blob) == b"not a disk"


def test_attached_disk_is_never_touched(azurite, container, cli) -> None:
    """An infinite lease (a disk attached to a VM) is refused even with --overwrite."""
    env = conn_env(azurite)
    target = ["--container", container.container_name, "--name", "vm.vhd"]
    assert cli("upload", str(KINDS["fixed"]), *target, env=env).code == 0
    blob = container.get_blob_client("vm.vhd")
    lease = blob.acquire_lease(-1)
    for args in (["--overwrite"], ["--no-resume"]):
        src = KINDS["dynamic"] if args == ["--overwrite"] else KINDS["fixed"]
        refused = cli("upload", str(src), *target, *args, env=env)
        assert refused.code == 2 and "infinite lease" in refused.err, refused.err
    props = blob.get_blob_properties()
    assert (props.lease.state, props.lease.duration) == ("leased", "infinite")
    assert blob.download_blob(lease=lease).readall() == image_bytes(KINDS["fixed"])
    lease.release()


def test_waits_for_a_lapsing_lease(azurite, container) -> None:
    """Another writer's finite lease is waited for, never broken; once it is gone the upload
    proceeds."""
    blob = container.get_blob_client("busy.vhd")
    blob.create_page_blob(512)
    lease = blob.acquire_lease(15)
    notes: list[str] = []
    results = []
    options = UploadOptions(overwrite=True, log=notes.append)
    worker = threading.Thread(target=lambda: results.append(upload(KINDS["fixed"], location(azurite, container, "busy.vhd"), options)))
    worker.start()
    deadline = time.monotonic() + 10
    while not notes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notes and "waiting" in notes[0]
    assert blob.get_blob_properties().size == 512  # nothing written under someone else's lease
    lease.release()
    worker.join(20)
    assert results and results[0].sent_bytes > 0
    check_blob_is(blob, image_bytes(KINDS["fixed"]))


# --- re-runs, options --------------------------------------------------------------------------


def test_rerun_sends_nothing_and_no_resume_sends_everything(azurite, container) -> None:
    loc = location(azurite, container, "r.vhd")
    first = upload(KINDS["dynamic"], loc)
    again = upload(KINDS["dynamic"], loc)
    assert first.sent_bytes > 0 and (again.already_complete, again.sent_bytes, again.requests) == (True, 0, 0)
    fresh = upload(KINDS["dynamic"], loc, UploadOptions(resume=False))
    assert (fresh.already_complete, fresh.sent_bytes) == (False, first.sent_bytes)
    check_blob_is(container.get_blob_client("r.vhd"), image_bytes(KINDS["dynamic"]))


def test_whole_blob_md5_is_opt_in(azurite, container, cli) -> None:
    """Without --md5 no Content-MD5 (hashing every zero of the disk); with it, the exact one."""
    args = ["--container", container.container_name, "--name", "n.vhd"]
    done = cli("upload", str(KINDS["fixed"]), *args, env=conn_env(azurite))
    assert done.code == 0 and "md5:" not in done.out, done.err
    blob = container.get_blob_client("n.vhd")
    check_blob_is(blob, image_bytes(KINDS["fixed"]), md5=False)
    assert f"digest:   {sparse_sha256(image_bytes(KINDS['fixed']))}" in done.out
    done = cli("upload", str(KINDS["dynamic"]), *args, "--md5", "--overwrite", env=conn_env(azurite))
    assert done.code == 0, done.err
    check_blob_is(blob, image_bytes(KINDS["dynamic"]), md5=True)


@pytest.mark.parametrize("offset, symptom", [
    (MiB, "content has MD5"),  # a data page changed: same page ranges, other bytes
    (3 * MiB, "512 bytes are in only one of them"),  # a page written where the image is zero
])
def test_verify_passes_and_catches_a_tampered_blob(offset, symptom, azurite, container, cli) -> None:
    env = conn_env(azurite)
    args = ["upload", str(KINDS["differencing"]), "--container", container.container_name, "--name", "v.vhd", "--verify"]
    done = cli(*args, env=env)
    assert done.code == 0 and "verified: page ranges and MD5 match" in done.out
    blob = container.get_blob_client("v.vhd")
    blob.upload_page(b"\x5a" * 512, offset=offset, length=512)  # one page changed behind our back
    caught = cli(*args, env=env)
    assert caught.code == 2 and "verify failed" in caught.err and symptom in caught.err, caught.err


def test_secrets_never_shown_or_stored(azurite, container, cli) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    def sas(permission: BlobSasPermissions) -> str:
        return generate_blob_sas(azurite.account_name, container.container_name, "s.vhd",
                                 account_key=azurite.account_key, permission=permission,
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))

    url = f"{azurite.blob_endpoint}/{container.container_name}/s.vhd"
    token = sas(BlobSasPermissions(read=True, write=True, create=True))
    signature = found(r"sig=([^&]+)", token).group(1)
    done = cli("upload", str(KINDS["fixed"]), f"{url}?{token}")
    assert done.code == 0, done.err
    read_only = sas(BlobSasPermissions(read=True))
    refused = cli("upload", str(KINDS["dynamic"]), f"{url}?{read_only}", "--overwrite")
    assert refused.code == 2 and "sig=REDACTED" in refused.err and len(refused.err.strip().splitlines()) == 1
    keyed = cli("upload", str(KINDS["fixed"]), "--container", container.container_name, "--name", "s.vhd",
                "--connection-string", azurite.connection_string)
    assert keyed.code == 0
    shown = done.out + done.err + refused.out + refused.err + keyed.out + keyed.err
    metadata = json.dumps(container.get_blob_client("s.vhd").get_blob_properties().metadata)
    for secret in (signature, found(r"sig=([^&]+)", read_only).group(1), azurite.account_key):
        for text in (shown, metadata):
            assert secret not in text and secret.replace("%2B", "+").replace("%2F", "/") not in text


# --- faults, interruption, resume --------------------------------------------------------------


def via_proxy(azurite, proxy: FaultProxy, container, name: str) -> BlobLocation:
    conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
    return BlobLocation.from_connection_string(conn, container.container_name, name)


def test_transient_faults_are_retried(azurite, container, tmp_path) -> None:
    """503s, dropped answers and reset connections on a third of all requests (creation,
    lease, metadata and page writes alike): the upload still ends exact."""
    src = scattered_vhd(tmp_path / "f.vhd", 16 * MiB, pieces=24, seed=7)
    with FaultProxy(azurite.port, Faults(rate=0.35, seed=11)) as proxy:
        result = upload(src, via_proxy(azurite, proxy, container, "f.vhd"), UploadOptions(workers=4, retry=FAST_RETRY))
    assert set(proxy.stats.faults) == {"503", "drop", "reset"}
    assert result.retries == sum(proxy.stats.faults.values())
    check_blob_is(container.get_blob_client("f.vhd"), image_bytes(src))


def test_timeouts_are_retried(azurite, container) -> None:
    """Requests the service never answers: the client's timeout fires and the request is
    retried; the upload ends exact."""
    stalls = Faults(rate=0.3, kinds=("stall",), stall=1.5, seed=5)
    with FaultProxy(azurite.port, stalls) as proxy:
        result = upload(KINDS["differencing"], via_proxy(azurite, proxy, container, "t.vhd"),
                        UploadOptions(workers=4, timeout=0.3, retry=FAST_RETRY))
    assert proxy.stats.faults["stall"] > 0 and result.retries == proxy.stats.faults["stall"]
    check_blob_is(container.get_blob_client("t.vhd"), image_bytes(KINDS["differencing"]))


def test_gives_up_then_resumes_with_only_the_missing_pages(azurite, container, tmp_path, cli) -> None:
    src = scattered_vhd(tmp_path / "g.vhd", 16 * MiB, pieces=24, seed=8)
    expected = image_bytes(src)
    flaky = Faults(rate=0.5, max_faults=1000, only=lambda r: r.is_put_page, seed=2)
    with FaultProxy(azurite.port, flaky) as proxy:
        with pytest.raises(TransferError) as failed:
            upload(src, via_proxy(azurite, proxy, container, "g.vhd"),
                   UploadOptions(workers=2, retry=RetryPolicy(attempts=2, base_delay=0.01)))
    assert failed.value.exit_code == 3 and "run the same command again to resume" in str(failed.value)
    blob = container.get_blob_client("g.vhd")
    present = blob_ranges(blob)
    assert present and blob.download_blob(offset=len(expected) - 512).readall() == bytes(512)  # no footer
    assert blob.get_blob_properties().lease.state == "available"  # released on the way out
    already = sum(e - s for s, e in present)
    resumed = cli("upload", str(src), "--container", container.container_name, "--name", "g.vhd",
                  env=conn_env(azurite))
    assert resumed.code == 0, resumed.err
    nonzero = sum(e - s for s, e in page_runs(expected))
    assert sent_bytes(resumed.out) == nonzero - already and "resumed" in resumed.out
    check_blob_is(blob, expected)


def test_sigkill_mid_upload_then_resume(azurite, container, tmp_path) -> None:
    """A real process killed with SIGKILL while pages are in flight; the re-run takes over its
    lease at once and sends exactly the pages the blob lacks."""
    src = scattered_vhd(tmp_path / "k.vhd", 16 * MiB, pieces=40, seed=9)
    expected = image_bytes(src)
    blob = container.get_blob_client("k.vhd")
    args = [sys.executable, "-m", "vhdtool.cli", "upload", str(src), "--container", container.container_name,
            "--name", "k.vhd", "--workers", "2"]
    slow = Faults(delay=0.05, only=lambda r: r.is_put_page)
    with FaultProxy(azurite.port, slow) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        child = subprocess.Popen(args, env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not blob.exists() or len(blob_ranges(blob)) < 5):
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        proxy.wait_idle()  # requests the child sent before dying have reached the server
    assert child.returncode == -signal.SIGKILL
    props = blob.get_blob_properties()
    assert (props.lease.state, props.lease.duration) == ("leased", "fixed")  # the dead run's lease
    present = blob_ranges(blob)
    nonzero_runs = page_runs(expected)
    assert 0 < len(present) < len(nonzero_runs)
    assert blob.download_blob(offset=len(expected) - 512).readall() == bytes(512)  # footer not sent
    already = sum(e - s for s, e in present)

    rerun = subprocess.run(args, env={**os.environ, **conn_env(azurite)}, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert "took over the lease" in rerun.stderr
    assert sent_bytes(rerun.stdout) == sum(e - s for s, e in nonzero_runs) - already
    check_blob_is(blob, expected)
    assert blob.get_blob_properties().lease.state == "available"


def test_source_modified_during_upload_is_not_marked_complete(azurite, container, tmp_path) -> None:
    src = scattered_vhd(tmp_path / "m.vhd", 8 * MiB, pieces=12, seed=10)
    blob = container.get_blob_client("m.vhd")
    slow = Faults(delay=0.05, only=lambda r: r.is_put_page)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            upload(src, via_proxy(azurite, proxy, container, "m.vhd"), UploadOptions(workers=1))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failures.append(exc)

    with FaultProxy(azurite.port, slow) as proxy:
        worker = threading.Thread(target=run)
        worker.start()
        while not (blob.exists() and blob_ranges(blob)):
            time.sleep(0.01)
        os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))  # someone writes to it
        worker.join(30)
    assert len(failures) == 1 and "changed while it was being uploaded" in str(failures[0])
    props = blob.get_blob_properties()
    assert props.metadata["vhdtool_state"] == "partial" and props.content_settings.content_md5 is None
    assert props.lease.state == "available"
    assert blob.download_blob(offset=props.size - 512).readall() == bytes(512)  # not a VHD: no footer


@pytest.mark.parametrize("workers, piece, held", [(3, 512, 4), (40, 4 * MiB, IN_FLIGHT_BYTES // (4 * MiB))])
def test_sender_holds_a_bounded_amount_of_data(workers, piece, held) -> None:
    """While the service does not answer, the producer is held back after workers + 1 pieces
    or IN_FLIGHT_BYTES, whichever comes first: memory does not grow with the image."""
    answer = threading.Event()

    class StalledBlob:
        def put(self, offset: int, data: bytes, lease: str | None) -> None:
            answer.wait(10)

    accepted: list[int] = []

    def produce() -> None:
        with Sender(StalledBlob(), None, workers) as sender:
            for i in range(held + 5):
                sender.put(i * piece, bytes(piece))
                accepted.append(i)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert len(accepted) == held
    answer.set()
    producer.join(10)
    assert len(accepted) == held + 5


# --- managed disks: an existing blob, a write-only SAS, a local journal -------------------------


def managed_disk(azurite, container, name: str, size: int, proxy: FaultProxy) -> str:
    """Pre-create the page blob (as `az disk create --for-upload` does) and return its URL
    through `proxy` with a write-only SAS (sp=w): any read or Get Page Ranges is refused."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    container.get_blob_client(name).create_page_blob(size)
    sas = generate_blob_sas(azurite.account_name, container.container_name, name, account_key=azurite.account_key,
                            permission=BlobSasPermissions(write=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{proxy.endpoint(azurite.account_name)}/{container.container_name}/{name}?{sas}"


class Recorder:
    """Every request the proxy sees (as `Faults.only`: the Put Pages are eligible for its faults
    and delay when `puts_eligible`)."""

    def __init__(self, puts_eligible: bool = False) -> None:
        self.requests: list[Request] = []
        self.puts_eligible = puts_eligible

    def __call__(self, request: Request) -> bool:
        self.requests.append(request)
        return self.puts_eligible and request.is_put_page

    def puts(self) -> list[Request]:
        return [r for r in self.requests if r.is_put_page]

    def others(self) -> list[str]:
        """Requests other than page writes and Clear Pages (create, metadata, lease, reads),
        but for the one Get Blob Properties that finds a SAS unable to read."""
        found = [f"{r.method} {r.target.split('?')[0]}" for r in self.requests
                 if not (r.method == "PUT" and "comp=page" in r.target)]
        return found[1:] if found and found[0].startswith("HEAD ") else found


def p_start(put: Request) -> int:
    return int(put.headers["x-ms-range"].removeprefix("bytes=").split("-")[0])


def signature(url: str) -> str:
    return re.search(r"sig=([^&]+)", url).group(1)


@pytest.fixture
def state_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_managed_disk_with_a_write_only_sas(kind, azurite, container, cli, state_home) -> None:
    """Only Put Page requests (each with its body's Content-MD5), only the non-zero pages, the
    footer last; the disk downloads identical; the journal is gone once complete."""
    src = KINDS[kind]
    expected = image_bytes(src)
    recorder = Recorder()
    with FaultProxy(azurite.port, Faults(only=recorder)) as proxy:
        url = managed_disk(azurite, container, "abcd", len(expected), proxy)
        done = cli("upload", str(src), url)
    assert done.code == 0, done.err
    assert "managed disk" in done.out and signature(url) not in done.out + done.err
    assert recorder.others() == []
    puts = recorder.puts()
    assert sum(p.body_length for p in puts) == sum(e - s for s, e in page_runs(expected)) == sent_bytes(done.out)
    for put in puts:
        assert base64.b64decode(put.headers["content-md5"]) == hashlib.md5(put.body).digest()
    assert puts[-1].headers["x-ms-range"] == f"bytes={len(expected) - 512}-{len(expected) - 1}"
    blob = container.get_blob_client("abcd")
    assert blob_content(blob) == expected and blob_ranges(blob) == page_runs(expected)
    assert not blob.get_blob_properties().metadata  # nothing but pages was written
    assert list((state_home / "vhdtool").iterdir()) == []


def test_managed_disk_option_reads_nothing(azurite, container, state_home) -> None:
    """--managed-disk with an account key that could read: still page writes only."""
    expected = image_bytes(KINDS["dynamic"])
    container.get_blob_client("m").create_page_blob(len(expected))
    recorder = Recorder()
    with FaultProxy(azurite.port, Faults(only=recorder)) as proxy:
        result = upload(KINDS["dynamic"], via_proxy(azurite, proxy, container, "m"),
                        UploadOptions(managed_disk=True, workers=4))
    assert result.managed_disk and recorder.others() == []
    assert blob_content(container.get_blob_client("m")) == expected


@pytest.mark.parametrize("delta", [-MiB, MiB, -512])
def test_managed_disk_of_the_wrong_size_is_refused_before_anything_is_sent(delta, azurite, container, cli,
                                                                          state_home) -> None:
    expected = image_bytes(KINDS["fixed"])
    recorder = Recorder()
    with FaultProxy(azurite.port, Faults(only=recorder)) as proxy:
        url = managed_disk(azurite, container, "w", len(expected) + delta, proxy)
        refused = cli("upload", str(KINDS["fixed"]), url)
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert ("smaller" if delta < 0 else "larger") in refused.err
    assert f"{len(expected):,} bytes" in refused.err and f"--upload-size-bytes {len(expected)}" in refused.err
    assert f"{len(expected) - 512:,}" in refused.err and signature(url) not in refused.err
    assert recorder.puts() == [] and recorder.others() == []
    assert blob_ranges(container.get_blob_client("w")) == []


def test_managed_disk_sigkill_then_resume_from_the_journal(azurite, container, tmp_path, state_home) -> None:
    """A real process SIGKILLed mid-way; the re-run sends the pages its journal does not hold:
    at most the unacknowledged ones plus one request per worker (counted at the proxy)."""
    workers = 2
    src = scattered_vhd(tmp_path / "k.vhd", 16 * MiB, pieces=40, seed=11)
    expected = image_bytes(src)
    nonzero = sum(e - s for s, e in page_runs(expected))
    blob = container.get_blob_client("abcd")
    recorder = Recorder(puts_eligible=True)
    env = {**os.environ, "XDG_STATE_HOME": str(state_home)}
    with FaultProxy(azurite.port, Faults(delay=0.05, only=recorder)) as proxy:
        url = managed_disk(azurite, container, "abcd", len(expected), proxy)
        args = [sys.executable, "-m", "vhdtool.cli", "upload", str(src), url, "--workers", str(workers)]
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(blob_ranges(blob)) < 8:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        proxy.wait_idle()
        first = proxy.stats.put_page_bytes
        assert child.returncode == -signal.SIGKILL
        (journal,) = (state_home / "vhdtool").iterdir()
        text = journal.read_text()
        assert signature(url) not in text and "?" not in text
        assert os.stat(journal).st_mode & 0o777 == 0o600
        acknowledged = [tuple(map(int, line.split())) for line in text.splitlines()[1:]]
        assert 0 < sum(n for _, n in acknowledged) <= first < nonzero
        assert blob_content(blob)[-512:] == bytes(512)  # no footer yet
        on_blob = blob_ranges(blob)

        recorder.requests.clear()
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        again = proxy.stats.put_page_bytes - first
    assert "resumed" in rerun.stdout and recorder.others() == []
    assert again == sent_bytes(rerun.stdout) == nonzero - sum(n for _, n in acknowledged)
    # sent again although already on the blob: the requests in flight when it was killed
    twice = [p for p in recorder.puts() if any(s <= p_start(p) < e for s, e in on_blob)]
    assert len(twice) <= workers
    assert blob_content(blob) == expected
    assert list((state_home / "vhdtool").iterdir()) == []


def test_journal_is_keyed_by_the_source_and_never_follows_a_link(tmp_path, state_home) -> None:
    from vhdtool.errors import VhdError
    from vhdtool.workflows.journal import Journal

    src = tmp_path / "s.vhd"
    src.write_bytes(b"x")
    url = "https://md-impexp-x.blob.core.windows.net/c/abcd"
    journal = Journal.open(url, [os.stat(src)], 4096)
    journal.record(0, 512)
    journal.record(1024, 512)
    with pytest.raises(VhdError, match="another upload"):  # locked while in use
        Journal.open(url, [os.stat(src)], 4096)
    journal.close()
    again = Journal.open(url, [os.stat(src)], 4096)
    assert again.acknowledged == [(0, 512), (1024, 1536)]
    os.write(again.fd, b"2048 51")  # torn last line (a power cut): ignored
    again.close()
    assert Journal.open(url, [os.stat(src)], 4096).acknowledged == [(0, 512), (1024, 1536)]
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns))  # ctime moves: another source
    fresh = Journal.open(url, [os.stat(src)], 4096)
    assert fresh.acknowledged == []
    fresh.close()
    fresh.path.unlink()
    target = tmp_path / "elsewhere"
    fresh.path.symlink_to(target)
    with pytest.raises(VhdError, match="symbolic link"):
        Journal.open(url, [os.stat(src)], 4096)
    assert not target.exists()


# --- integrity ---------------------------------------------------------------------------------


def test_corrupted_put_page_is_refused_by_the_service_and_sent_again(azurite, container, tmp_path) -> None:
    """The proxy flips a byte in some Put Page bodies: Azurite refuses them by their Content-MD5
    (none of them is acknowledged: the proxy counts only 201s), each is sent again, the blob is exact."""
    src = scattered_vhd(tmp_path / "c.vhd", 16 * MiB, pieces=24, seed=12)
    expected = image_bytes(src)
    corrupt = Faults(rate=0.4, kinds=("corrupt",), max_faults=1, only=lambda r: r.is_put_page, seed=4)
    with FaultProxy(azurite.port, corrupt) as proxy:
        result = upload(src, via_proxy(azurite, proxy, container, "c.vhd"), UploadOptions(workers=4, retry=FAST_RETRY))
    assert proxy.stats.faults["corrupt"] >= 3 and result.retries == proxy.stats.faults["corrupt"]
    assert proxy.stats.put_page_bytes == result.sent_bytes == sum(e - s for s, e in page_runs(expected))
    check_blob_is(container.get_blob_client("c.vhd"), expected)


def test_corrupted_read_is_noticed_by_the_range_md5_and_read_again(azurite, container, tmp_path) -> None:
    """Ranged GET answers with a flipped byte: noticed by each range's MD5 (the blob has no
    Content-MD5 and no sparse digest here to catch it at the end), read again, file exact."""
    from vhdtool.workflows.download import DownloadOptions, download

    src = scattered_vhd(tmp_path / "r.vhd", 16 * MiB, pieces=24, seed=13)
    expected = image_bytes(src)
    upload(src, location(azurite, container, "r.vhd"))
    container.get_blob_client("r.vhd").set_blob_metadata({})
    reads = Faults(rate=0.4, kinds=("corrupt",), max_faults=1, seed=5,
                   only=lambda r: r.method == "GET" and "x-ms-range" in r.headers and "comp=" not in r.target)
    with FaultProxy(azurite.port, reads) as proxy:
        done = download(via_proxy(azurite, proxy, container, "r.vhd"), tmp_path / "back.vhd",
                        DownloadOptions(workers=2, retry=FAST_RETRY))
    assert proxy.stats.faults["corrupt"] >= 2 and done.retries == proxy.stats.faults["corrupt"]
    assert not done.md5_checked and not done.digest_checked
    assert (tmp_path / "back.vhd").read_bytes() == expected


def test_download_checks_the_sparse_digest(azurite, container, tmp_path, cli) -> None:
    """A page changed behind the recorded digest's back is noticed; nothing is kept."""
    upload(KINDS["dynamic"], location(azurite, container, "s.vhd"))
    blob = container.get_blob_client("s.vhd")
    blob.upload_page(b"\x01" * 512, offset=5 * MiB, length=512)
    args = ["download", "--container", container.container_name, "--name", "s.vhd", str(tmp_path / "s.vhd")]
    refused = cli(*args, env=conn_env(azurite))
    assert refused.code == 2 and "sparse digest" in refused.err and not (tmp_path / "s.vhd").exists()


def test_no_check_md5_skips_the_whole_blob_hash(azurite, container, tmp_path, cli) -> None:
    upload(KINDS["fixed"], location(azurite, container, "m.vhd"), UploadOptions(md5=True))
    container.get_blob_client("m.vhd").set_http_headers(ContentSettings(content_md5=bytearray(16)))
    args = ["download", "--container", container.container_name, "--name", "m.vhd"]
    assert cli(*args, str(tmp_path / "a.vhd"), env=conn_env(azurite)).code == 2  # the wrong MD5 is seen
    done = cli(*args, str(tmp_path / "b.vhd"), "--no-check-md5", env=conn_env(azurite))
    assert done.code == 0 and "Content-MD5 not checked, sparse digest checked" in done.out, done.err
    assert (tmp_path / "b.vhd").read_bytes() == image_bytes(KINDS["fixed"])


# --- a source changing under the upload (#13) -------------------------------------------------


def test_writer_that_restores_the_mtime_is_still_detected(azurite, container, tmp_path, state_home) -> None:
    """Data written during the upload, the mtime set back: the ctime gives it away; no footer."""
    src = scattered_vhd(tmp_path / "m.vhd", 8 * MiB, pieces=12, seed=14)
    before = os.stat(src)
    failures: list[BaseException] = []
    blob = container.get_blob_client("m")
    blob.create_page_blob(before.st_size)

    def run() -> None:
        try:
            upload(src, via_proxy(azurite, proxy, container, "m"), UploadOptions(workers=1, managed_disk=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failures.append(exc)

    with FaultProxy(azurite.port, Faults(delay=0.05, only=lambda r: r.is_put_page)) as proxy:
        worker = threading.Thread(target=run)
        worker.start()
        while not blob_ranges(blob):
            time.sleep(0.01)
        with open(src, "r+b") as f:
            f.seek(7 * MiB)
            f.write(b"\xee" * 4096)
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(src).st_mtime_ns == before.st_mtime_ns and os.stat(src).st_size == before.st_size
        worker.join(30)
    assert len(failures) == 1 and "changed while it was being uploaded" in str(failures[0])
    assert blob_content(blob)[-512:] == bytes(512)  # not a VHD: no footer


# --- --dry-run and --cap-mbps ------------------------------------------------------------------


def test_dry_run_counts_and_contacts_nothing(tmp_path, cli) -> None:
    src = scattered_vhd(tmp_path / "d.vhd", 16 * MiB, pieces=30, seed=15)
    expected = image_bytes(src)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there: any request would fail
    done = cli("upload", str(src), f"http://127.0.0.1:{port}/devstoreaccount1/cont/d.vhd?sv=1&sig=SECRET", "--dry-run")
    assert done.code == 0, done.err
    nonzero = sum(e - s for s, e in page_runs(expected))
    assert f"would send: {nonzero:,} bytes" in done.out and f"({len(expected):,} byte page blob)" in done.out
    pieces = sum(-(-(e - s) // (4 * MiB)) for s, e in page_runs(expected[:-512])) + 1
    assert f"in {pieces:,} Put Page requests" in done.out and "SECRET" not in done.out


def test_cap_mbps_holds_the_rate(azurite, container, tmp_path) -> None:
    src = scattered_vhd(tmp_path / "b.vhd", 32 * MiB, pieces=40, seed=16)  # 2.5 MiB of data
    capped = upload(src, location(azurite, container, "capped.vhd"), UploadOptions(workers=4, cap_mbps=8))
    fast = upload(src, location(azurite, container, "fast.vhd"), UploadOptions(workers=4))
    rate = 8e6 / 8
    assert fast.seconds < 0.5 * capped.sent_bytes / rate
    assert capped.seconds >= (capped.sent_bytes - 128 * 1024) / rate
    assert blob_content(container.get_blob_client("capped.vhd")) == image_bytes(src)


# --- --since OLD: only what changed ------------------------------------------------------------


def test_since_sends_only_what_changed(azurite, container, tmp_path, cli) -> None:
    """NEW is OLD rebuilt: ~1% of its data rewritten, some pieces zeroed, one added. Only the
    changed non-zero pages are sent (counted at the proxy), the zeroed ones cleared; the blob is
    NEW exactly, with NEW's digest and identity, and a re-upload of NEW sends nothing."""
    old = scattered_vhd(tmp_path / "old.vhd", 64 * MiB, pieces=200, seed=18)
    new = tmp_path / "new.vhd"
    new.write_bytes(old.read_bytes())
    rng = random.Random(19)
    old_bytes = image_bytes(old)
    runs = page_runs(old_bytes[:-512])
    with open(new, "r+b") as f:
        for start, _ in rng.sample(runs, 4):  # rewritten pieces: 2 KiB each
            f.seek(start + 4096)
            f.write(rng.randbytes(2048))
        for start, end in rng.sample(runs, 3):  # pieces that became zero
            f.seek(start)
            f.write(bytes(end - start))
        f.seek(60 * MiB)
        f.write(rng.randbytes(4096))
    expected = image_bytes(new)
    upload(old, location(azurite, container, "s.vhd"))
    changed = sum(1 for i in range(0, len(expected) - 512, 512)
                  if expected[i:i + 512] != old_bytes[i:i + 512] and any(expected[i:i + 512]))
    became_zero = [(s, e) for s, e in page_runs(old_bytes) if not any(expected[s:e])]
    with FaultProxy(azurite.port) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        done = cli("upload", str(new), "--container", container.container_name, "--name", "s.vhd",
                   "--since", str(old), env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert done.code == 0, done.err
        assert proxy.stats.put_page_bytes == sent_bytes(done.out) <= 1.05 * changed * 512 + 512
    assert changed * 512 >= 4 * 2048 + 4096 and f"cleared:  {len(became_zero)} " in done.out
    check_blob_is(container.get_blob_client("s.vhd"), expected)
    again = upload(new, location(azurite, container, "s.vhd"))
    assert again.already_complete and again.sent_bytes == 0


def test_since_refuses_a_blob_that_does_not_hold_old(azurite, container, tmp_path, cli) -> None:
    upload(KINDS["fixed"], location(azurite, container, "o.vhd"))
    blob = container.get_blob_client("o.vhd")
    before = blob_content(blob)
    with FaultProxy(azurite.port) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        refused = cli("upload", str(KINDS["fixed"]), "--container", container.container_name, "--name", "o.vhd",
                      "--since", str(KINDS["dynamic"]), env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert proxy.stats.put_page_bytes == 0
    assert refused.code == 2 and "does not hold" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert blob_content(blob) == before and blob.get_blob_properties().metadata["vhdtool_state"] == "complete"


# --- --base PARENT_URL: a differencing child onto its parent's blob -------------------------------


def test_base_sends_only_the_childs_own_sectors(azurite, container, cli, tmp_path) -> None:
    """The parent uploaded first; the child with --base: the parent's blob copied server-side,
    then only the child's own sectors (counted at the proxy) and Clear Pages where it wrote
    zeros; the blob is the child's fixed form exactly."""
    child = FIXTURES / "chain-child1.vhd"
    upload(FIXTURES / "chain-base.vhd", location(azurite, container, "base.vhd"), UploadOptions(md5=True))
    expected = image_bytes(child)
    with open_disk(child) as disk:
        assert isinstance(disk, SparseDisk)
        own = list(merge(disk.own_allocated()))
    own_data = sum(1 for s, e in own for i in range(s, e, 512) if any(expected[i:i + 512]))
    with FaultProxy(azurite.port) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        base_url = f"{proxy.endpoint(azurite.account_name)}/{container.container_name}/base.vhd"  # no SAS: the key
        done = cli("upload", str(child), "--container", container.container_name, "--name", "c.vhd",
                   "--base", base_url, env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert done.code == 0, done.err
        assert proxy.stats.put_page_bytes == sent_bytes(done.out) <= 1.01 * own_data * 512 + 512
    blob = container.get_blob_client("c.vhd")
    assert blob_content(blob) == expected
    assert blob.get_blob_properties().metadata["vhdtool_state"] == "complete"
    # the parent's Content-MD5 came with the copy: the child's blob must not keep it
    assert blob.get_blob_properties().content_settings.content_md5 is None


def test_base_refuses_a_blob_that_is_not_the_parent(azurite, container, cli) -> None:
    upload(KINDS["fixed"], location(azurite, container, "other.vhd"))
    done = cli("upload", str(FIXTURES / "chain-child1.vhd"), "--container", container.container_name,
               "--name", "c.vhd", "--base", location(azurite, container, "other.vhd").url, env=conn_env(azurite))
    assert done.code == 2 and "not this child's parent" in done.err
    assert not container.get_blob_client("c.vhd").exists()


def test_a_bad_signature_is_not_taken_for_a_managed_disk(azurite, container, cli, state_home) -> None:
    """A refused credential (AuthenticationFailed) ends the upload; only a SAS lacking the read
    permission (AuthorizationPermissionMismatch) means a write-only managed disk."""
    expected = image_bytes(KINDS["fixed"])
    with FaultProxy(azurite.port) as proxy:
        url = managed_disk(azurite, container, "bad", len(expected), proxy)
        forged = re.sub(r"sig=[^&]+", "sig=AAAA", url)
        refused = cli("upload", str(KINDS["fixed"]), forged)
        assert proxy.stats.methods["PUT"] == 0
    assert refused.code == 2 and "reading the blob properties failed: 403" in refused.err
    assert len(refused.err.strip().splitlines()) == 1 and "AAAA" not in refused.err


def test_verify_compares_the_recorded_sparse_digest(azurite, container, cli) -> None:
    env = conn_env(azurite)
    args = ["upload", str(KINDS["dynamic"]), "--container", container.container_name, "--name", "g.vhd", "--verify"]
    assert cli(*args, env=env).code == 0
    blob = container.get_blob_client("g.vhd")
    blob.set_blob_metadata(blob.get_blob_properties().metadata | {"vhdtool_sparse_sha256": "0" * 64})
    caught = cli(*args, env=env)
    assert caught.code == 2 and "recorded sparse digest" in caught.err, caught.err
