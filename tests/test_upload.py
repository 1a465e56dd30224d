"""`vhdtool upload` against Azurite (real HTTP on loopback): exact page ranges, exact bytes on
the wire, exact MD5, refusals, leases, faults, and resuming after failures and SIGKILL."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import FIXTURES
from faultproxy import FaultProxy, Faults, Request
from helpers import conn_env, found, image_bytes, KINDS, location, MiB, page_runs, scattered_vhd
from vhdtool.azure.location import BlobLocation
from vhdtool.azure.retry import RetryPolicy, TransferError
from vhdtool.format.vhd.footer import DiskType, parse_footer
from vhdtool.disk.image import open_disk
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


def check_blob_is(blob, expected: bytes) -> None:
    """Exact content, exact page ranges (the non-zero pages), Content-MD5 of the content."""
    props = blob.get_blob_properties()
    assert props.blob_type == "PageBlob" and props.size == len(expected)
    assert blob_ranges(blob) == page_runs(expected)
    assert bytes(props.content_settings.content_md5) == hashlib.md5(expected).digest()
    assert props.metadata["vhdtool_md5"] == base64.b64encode(hashlib.md5(expected).digest()).decode()
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


def test_no_md5(azurite, container) -> None:
    result = upload(KINDS["fixed"], location(azurite, container, "n.vhd"), UploadOptions(md5=False))
    props = container.get_blob_client("n.vhd").get_blob_properties()
    assert result.content_md5 is None and props.content_settings.content_md5 is None
    assert "vhdtool_md5" not in props.metadata and props.metadata["vhdtool_state"] == "complete"
    assert blob_content(container.get_blob_client("n.vhd")) == image_bytes(KINDS["fixed"])


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
