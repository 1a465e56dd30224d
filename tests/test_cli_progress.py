"""Long work off a terminal: a progress line at a steady interval on stderr, none with --quiet."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES
from helpers import scattered_vhd
from vhdtool.engine.progress import LineReporter

LINE = re.compile(r"^vhdtool: upload: [\d.]+ (bytes|KiB|MiB) of [\d.]+ (KiB|MiB) \(\d+%\), [\d.]+ \S+/s, ETA \d+:\d\d:\d\d$")


def upload(azurite, container, tmp_path, *extra: str) -> list[str]:
    """Run an upload in a fresh process with stderr to a file (not a terminal); its lines."""
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "VHDTOOL_PROGRESS_INTERVAL": "0"}  # a line per chunk: the fixture uploads in well under 10 s
    with open(err, "w") as stderr:
        proc = subprocess.run(
            [sys.executable, "-m", "vhdtool.cli", "upload", str(FIXTURES / "windows-dynamic-10m.vhd"),
             "--container", container.container_name, "--name", f"p{len(extra)}.vhd", *extra],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
        )
    assert proc.returncode == 0, err.read_text()
    return err.read_text().splitlines()


def test_upload_with_stderr_to_a_file_writes_progress_lines(azurite, container, tmp_path):
    lines = upload(azurite, container, tmp_path)
    assert lines and all(LINE.match(line) for line in lines), lines
    done, total = re.match(r"vhdtool: upload: (.+) of (.+) \((\d+)%\)", lines[-1]).group(1, 2)
    assert done == total == "128.0 KiB"  # the allocated blocks are all that is read


def test_quiet_upload_writes_none(azurite, container, tmp_path):
    assert upload(azurite, container, tmp_path, "--quiet") == []


def test_lines_come_at_the_interval_with_rate_and_eta(monkeypatch, capsys):
    now = [0.0]
    counted = []
    reporter = LineReporter("convert", lambda: counted.append(1) or 100 * 1024 * 1024, 10.0, clock=lambda: now[0])
    now[0] = 5.0
    reporter(10 * 1024 * 1024)
    assert capsys.readouterr().err == "" and not counted  # before the interval: no line, no count
    now[0] = 10.0
    reporter(15 * 1024 * 1024)
    now[0] = 15.0
    reporter(1024)  # within the interval of the last line
    assert capsys.readouterr().err == (
        "vhdtool: convert: 25.0 MiB of 100.0 MiB (25%), 2.5 MiB/s, ETA 0:00:30\n"
    )
    assert counted == [1]


def test_failure_before_anything_was_sent_does_not_promise_a_resume(azurite, container):
    from faultproxy import FaultProxy, Faults

    from vhdtool.azure.location import BlobLocation
    from vhdtool.azure.retry import RetryPolicy, TransferError
    from vhdtool.workflows.upload import UploadOptions
    from vhdtool.workflows.upload import upload as do_upload

    down = Faults(rate=1.0, max_faults=1000, kinds=("503",))
    with FaultProxy(azurite.port, down) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        where = BlobLocation.from_connection_string(conn, container.container_name, "n.vhd")
        with pytest.raises(TransferError) as failed:
            do_upload(FIXTURES / "windows-fixed-10m.vhd", where,
                      UploadOptions(workers=2, retry=RetryPolicy(attempts=2, base_delay=0.01)))
    message = str(failed.value)
    assert failed.value.exit_code == 3 and "before any page was sent" in message
    assert "missing pages" not in message and message.endswith("run the same command again")


def test_ctrl_c_exits_130_and_says_to_rerun(azurite, container, tmp_path):
    from faultproxy import FaultProxy, Faults

    src = scattered_vhd(tmp_path / "i.vhd", 16 * 1024 * 1024, pieces=24, seed=3)
    slow = Faults(delay=0.2, only=lambda r: r.is_put_page)  # long enough to be interrupted
    err = tmp_path / "stderr.txt"
    with FaultProxy(azurite.port, slow) as proxy:
        conn = azurite.connection_string.replace(azurite.blob_endpoint, proxy.endpoint(azurite.account_name))
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn, "VHDTOOL_PROGRESS_INTERVAL": "0"}
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "vhdtool.cli", "upload", str(src), "--container",
                                     container.container_name, "--name", "i.vhd", "--workers", "2"],
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            deadline = time.monotonic() + 60
            while "vhdtool: upload:" not in err.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)  # the first progress line: pages are on their way
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
    assert code == 130
    assert err.read_text().splitlines()[-1] == "vhdtool: upload interrupted: run the same command again to resume"


def test_eta_past_a_day(capsys):
    now = [0.0]
    reporter = LineReporter("upload", lambda: 2 * 1024**4, 10.0, clock=lambda: now[0])
    now[0] = 10.0
    reporter(10 * 1024 * 1024)  # 1 MiB/s: 2 TiB take 24 days
    assert capsys.readouterr().err.endswith(", 1.0 MiB/s, ETA 582:32:22\n")
