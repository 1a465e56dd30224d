"""`vhdtool bench`: the JSON it reports with and without the peers on PATH, the images it
measures, the measuring shared with benchmarks/ (peak memory of the command alone, interleaving,
one-line failures), cleanup on success, error and Ctrl-C, and the upload case against Azurite."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vhdtool.workflows.bench import measure
from vhdtool.workflows.bench.cases import flushed
from vhdtool.workflows.bench import floor
from vhdtool.workflows.bench.images import pieces, qemu_dynamic, write_fixed, write_images
from vhdtool.workflows.bench.measure import Samples
from vhdtool.workflows.bench.render import table
from vhdtool.workflows.bench.run import BenchOptions, BenchReport, Row
from vhdtool.errors import VhdError

MiB = 1024 * 1024
IMAGES = ["sparse fixed", "dense fixed", "dynamic"]
OPERATIONS = ["scan", "map", "snapshot", "convert --to fixed"]
CP_TOOLS = ["cp + sync", "cp --sparse=always + sync"]
QEMU_TOOLS = ["qemu-img map", "qemu-img convert raw", "qemu-img convert fixed"]


def bench(*args: str, folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`vhdtool bench` on tiny images in a fresh process, temporary folder under `folder`."""
    folder.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "vhdtool.cli", "bench", "--size", "64MiB", "--runs", "1",
                           "--dir", str(folder), *args], capture_output=True, text=True, env=env)


def path_with(tmp_path: Path, *programs: str) -> dict[str, str]:
    """Our environment with PATH holding only `programs` (linked from the real PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in programs:
        (bin_dir / program).symlink_to(shutil.which(program))
    return os.environ | {"PATH": str(bin_dir)}


def rows(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["image"], r["operation"], r["tool"]): r for r in report["results"]}


def check_measured(report: dict, peers: list[str]) -> None:
    """vhdtool measured on every case, each peer in `peers` too, with its ratio."""
    found = rows(report)
    for image in IMAGES:
        for operation in OPERATIONS:
            ours = found[(image, operation, "vhdtool")]
            assert ours["status"] == "measured" and ours["ratio"] is None
            assert 0 < ours["min_s"] <= ours["median_s"] <= ours["max_s"] and len(ours["walls_s"]) == 1
            assert ours["peak_rss_bytes"] > 10 * MiB  # a Python process with numpy
        for (img, operation, tool), row in found.items():
            if img == image and tool in peers:
                assert row["status"] == "measured"
                ours = found[(image, operation, "vhdtool")]
                assert row["ratio"] == pytest.approx(ours["median_s"] / row["median_s"])
                assert 0 < row["peak_rss_bytes"] < 100 * MiB


def test_qemu_img_missing_is_reported_and_ours_still_measured(tmp_path) -> None:
    done = bench("--json", folder=tmp_path / "work", env=path_with(tmp_path, "cp"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["peers"] == {"cp": str(tmp_path / "bin" / "cp"), "qemu-img": None}
    assert report["machine"]["tools"]["qemu-img"] is None
    check_measured(report, CP_TOOLS)
    missing = [r for r in report["results"] if r["status"] == "missing"]
    assert {(r["image"], r["tool"]) for r in missing} == {(i, t) for i in IMAGES for t in QEMU_TOOLS}
    assert all(r["missing_program"] == "qemu-img" and "median_s" not in r for r in missing)
    assert not any((tmp_path / "work").iterdir())  # everything it created is gone


def test_with_cp_and_qemu_img_every_peer_is_measured(tmp_path) -> None:
    done = bench("--json", "--data", "20", folder=tmp_path / "work")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["size"] == 64 * MiB and report["data_percent"] == 20 and report["runs"] == 1
    assert all(report["peers"].values())
    check_measured(report, CP_TOOLS + QEMU_TOOLS)
    assert all(r["status"] == "measured" for r in report["results"])
    assert {(r["operation"], r["tool"]) for r in report["results"]} == {
        ("scan", "vhdtool"), ("map", "vhdtool"), ("map", "qemu-img map"),
        ("snapshot", "vhdtool"), ("snapshot", "cp + sync"), ("snapshot", "cp --sparse=always + sync"),
        ("snapshot", "qemu-img convert raw"),
        ("convert --to fixed", "vhdtool"), ("convert --to fixed", "qemu-img convert fixed")}
    sizes = {i["kind"]: i for i in report["images"]}
    assert sizes["dense fixed"]["allocated"] >= 64 * MiB > 2 * sizes["sparse fixed"]["allocated"]
    assert not any((tmp_path / "work").iterdir())


def test_table_shows_times_memory_ratios_and_the_missing_peer() -> None:
    options = BenchOptions(size=64 * MiB, data_percent=10, runs=2, folder=Path("/tmp"))
    machine = {"cpu": "Test CPU", "usable_cpus": 2, "memory_bytes": 8 * 1024 * MiB, "filesystem": "ext4 (/tmp)"}
    report = BenchReport(options, {"cp": "/bin/cp", "qemu-img": None}, machine, "GNU time",
                         images=[{"kind": "dense fixed", "file_size": 64 * MiB + 512, "allocated": 64 * MiB + 4096}])
    report.rows = [Row("dense fixed", "snapshot", "vhdtool", Samples([0.5, 0.3], [60 * MiB, 64 * MiB])),
                   Row("dense fixed", "snapshot", "cp", Samples([0.2, 0.2], [2 * MiB, 2 * MiB]), ratio=2.0),
                   Row("dense fixed", "snapshot", "qemu-img convert raw", None, missing="qemu-img")]
    lines = table(report)
    assert lines[0] == "vhdtool bench: 64 MiB images, 10% random data, median of 2 runs after a warm-up"
    assert "Test CPU, 2 CPUs, 8.0 GiB RAM, images on ext4 (/tmp), peak memory by GNU time" in lines[1]
    assert lines[2] == "images: dense fixed 64.0 MiB on disk"
    assert lines[5].split() == ["dense", "fixed", "snapshot", "vhdtool", "0.400", "64.0"]
    assert lines[6].split() == ["dense", "fixed", "snapshot", "cp", "0.200", "2.0", "2.00x"]
    assert lines[7].split()[3:] == ["qemu-img", "convert", "raw", "missing:", "qemu-img", "is", "not", "on", "PATH"]
    assert lines[-1] == "not found on PATH: qemu-img (measured without them)"


@pytest.mark.parametrize("args, message", [
    (["--size", "1.5MiB"], "is not a whole number of MiB"),
    (["--size", "3TiB"], "is not a whole number of MiB from 1 MiB to"),
    (["--data", "101"], "is not a percentage between 0 and 100"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--dir", "/nonexistent/vhdtool"], "is not a folder"),
    (["--size", "2000GiB"], "free, has"),
    (["--blob", "file.vhd"], "not a blob URL"),
])
def test_unusable_options_are_one_line_errors(tmp_path, args, message) -> None:
    done = bench(*args, folder=tmp_path / "work")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not any((tmp_path / "work").iterdir())


def test_plot_without_matplotlib_says_how_to_install(tmp_path) -> None:
    done = bench("--plot", str(tmp_path / "r.png"), folder=tmp_path / "work", env=fake_matplotlib(tmp_path))
    assert done.returncode == 2
    assert done.stderr == ("vhdtool: error: --plot needs matplotlib, which is not installed: "
                           "pip install 'vhdtool[plot]'\n")
    assert not any((tmp_path / "work").iterdir()) and not (tmp_path / "r.png").exists()


def test_ratio_chart_is_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from vhdtool.workflows.bench.plot import Bar, ratio_chart

    ratio_chart([Bar("a", 0.5, 0.8, True), Bar("b", 2.0, 1.1, False), Bar("c", 1.3)], "t", tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment where importing matplotlib fails, as if it were not installed."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    return os.environ | {"PYTHONPATH": str(fake.parent)}


def processes_using(folder: str) -> list[str]:
    """Command lines of running processes that name `folder`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmdline:
            found.append(cmdline)
    return found


def test_ctrl_c_removes_everything_and_stops_the_commands(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "vhdtool.cli", "bench", "--size", "256MiB", "--runs", "3",
                             "--dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scratch = f"{work}/vhdtool-bench-"
    deadline = time.monotonic() + 60
    while not processes_using(scratch):  # a measured command is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    assert proc.returncode == 130 and err.rstrip().endswith("vhdtool: interrupted")
    assert not any(work.iterdir())
    assert processes_using(scratch) == []


def test_flushed_peer_syncs_its_output_only_after_it_succeeded(tmp_path) -> None:
    """A peer's copy is measured with its flush (issue #17): sync runs on the output, after
    the copy, and not when the copy failed (the failure is the command's exit code)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.write_bytes(b"x" * 5000)
    argv = flushed(["cp", str(src), str(out)], str(out))
    assert argv[-3:] == ["cp", str(src), str(out)] and argv[argv.index(str(out)) + 1].endswith("/sync")
    assert subprocess.run(argv).returncode == 0 and out.read_bytes() == src.read_bytes()
    traced = subprocess.run(["strace", "-f", "-e", "trace=syncfs,fsync,fdatasync", *argv], capture_output=True,
                            text=True) if shutil.which("strace") else None
    if traced is not None:
        assert re.search(r"(syncfs|fsync|fdatasync)\(", traced.stderr)
    assert subprocess.run(flushed(["cp", str(tmp_path / "absent"), str(out)], str(out))).returncode != 0


def test_images_hold_the_same_data_and_only_what_they_must(tmp_path) -> None:
    size, percent = 16 * MiB, 25
    expected = bytearray(size)
    for offset, data in pieces(size, percent):
        expected[offset : offset + len(data)] = data
    assert sum(1 for b in range(0, size, MiB) if any(expected[b : b + MiB])) == 4
    progress: list[int] = []
    sparse, dense, dynamic = write_images(tmp_path, size, percent, progress.append)
    assert sum(progress) == size
    assert sparse.path.read_bytes()[:size] == expected == dense.path.read_bytes()[:size]
    raw = tmp_path / "dynamic.raw"  # read by qemu-img, not by our reader
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(dynamic.path), str(raw)], check=True)
    assert raw.read_bytes() == expected
    block = os.statvfs(tmp_path).f_bsize
    assert sparse.allocated <= 4 * MiB + 2 * block  # the pieces and the footer's block
    assert dense.allocated >= size
    assert dynamic.path.stat().st_size < 4 * (2 * MiB + 512) + 64 * 1024  # only the blocks with pieces
    assert [i.kind for i in (sparse, dense, dynamic)] == ["sparse fixed", "dense fixed", "dynamic"]


# --- the measuring shared with benchmarks/ -------------------------------------------------------


@pytest.fixture(params=["GNU time", "python launcher"])
def meter(request, monkeypatch) -> str:
    if request.param == "GNU time" and not os.access(measure.GNU_TIME, os.X_OK):
        pytest.skip("GNU time is not installed")  # the launcher case still runs
    if request.param == "python launcher":
        monkeypatch.setattr(measure, "GNU_TIME", "/nonexistent/time")
    assert measure.rss_meter() == request.param
    return request.param


def test_peak_memory_is_the_commands_not_ours(meter) -> None:
    ballast = bytearray(300 * MiB)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # resident in this process
    _, small = measure.run_measured(["true"])
    _, big = measure.run_measured([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * 51200"])
    assert small < 16 * MiB
    assert 200 * MiB < big < 260 * MiB
    del ballast


@pytest.mark.parametrize("n", range(2, 9))
def test_every_command_follows_every_other_equally_often(n: int) -> None:
    rounds = n if n % 2 == 0 else 2 * n
    orders = [measure.williams_order(n, r) for r in range(rounds)]
    assert all(sorted(order) == list(range(n)) for order in orders)
    pairs = Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(pairs.values()) == {rounds // n}
    assert measure.williams_order(n, rounds) == orders[0]  # then it starts again


def test_interleaving_changes_the_order_and_keeps_the_measured_runs(tmp_path) -> None:
    log = tmp_path / "log"
    commands = {name: ["sh", "-c", f"printf {name} >> {log}"] for name in "abc"}
    ticks = []
    results = measure.interleaved(commands, 2, warmup=1, done=lambda: ticks.append(1))
    assert log.read_text() == "bac" + "abc" + "cba"  # warm-up, then the design's cycle: a row, its mirror
    assert len(ticks) == 9
    assert all(len(s.walls) == 2 == len(s.rss) for s in results.values())
    assert measure.ratio(results, "a", "b") == results["a"].wall / results["b"].wall


def test_failed_command_is_one_line_with_the_signature_redacted() -> None:
    url = "https://acct.blob.core.windows.net/c/d.vhd?sv=2022&sig=SECRET123"
    with pytest.raises(VhdError) as caught:
        measure.run_measured(["sh", "-c", "echo first >&2; echo last words >&2; exit 3", url])
    message = str(caught.value)
    assert "exit 3" in message and message.endswith(": last words") and "\n" not in message
    assert "SECRET123" not in message and "sig=REDACTED" in message


# --- upload, against Azurite ---------------------------------------------------------------------


def sas_url(azurite, container: str, name: str) -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    token = generate_blob_sas(azurite.account_name, container, name, account_key=azurite.account_key,
                              permission=BlobSasPermissions(read=True, write=True, create=True, delete=True),
                              expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{azurite.blob_endpoint}/{container}/{name}?{token}"


def test_blob_upload_is_measured_and_the_blob_deleted_an_existing_one_refused(azurite, tmp_path) -> None:
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(azurite.connection_string, f"b{uuid.uuid4().hex[:20]}")
    container.create_container()
    url = sas_url(azurite, container.container_name, "bench.vhd")
    done = bench("--json", "--size", "8MiB", "--blob", url, folder=tmp_path / "work", env=path_with(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    uploads = [r for r in report["results"] if r["operation"] == "upload"]
    assert [(r["image"], r["tool"], r["status"]) for r in uploads] == [(i, "vhdtool", "measured") for i in IMAGES]
    assert "sig=REDACTED" in report["blob"] and url.split("sig=")[1].split("&")[0] not in done.stdout
    assert list(container.list_blobs()) == []  # the blob it uploaded to is gone

    container.upload_blob("taken.vhd", b"somebody's data")
    refused = bench("--blob", sas_url(azurite, container.container_name, "taken.vhd"), folder=tmp_path / "work")
    assert refused.returncode == 2 and "already exists" in refused.stderr, refused.stderr
    assert container.download_blob("taken.vhd").readall() == b"somebody's data"
    assert not any((tmp_path / "work").iterdir())


# --- benchmarks/run_all.py and the README --------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
FAKE_BENCH = f"""\"\"\"true against sleep, a stand-in benchmark.\"\"\"
import argparse, sys
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from common import add_json_option, check, interleaved, print_table, ratio, write_json
parser = argparse.ArgumentParser()
add_json_option(parser)
args = parser.parse_args()
results = interleaved({{"true": ["true"], "sleep": ["sleep", "0.2"]}}, 1)
print_table("true vs sleep", results)
check("true / sleep", ratio(results, "true", "sleep"), 0.5)
check("sleep / true", ratio(results, "sleep", "true"), 0.5)
write_json(args.json)
"""


def runner_in(folder: Path) -> Path:
    """run_all.py copied into `folder` with a passing and a failing benchmark script beside it."""
    shutil.copy(ROOT / "benchmarks" / "run_all.py", folder)
    (folder / "bench_fake.py").write_text(FAKE_BENCH)
    (folder / "bench_broken.py").write_text('"""Fails."""\nraise SystemExit("no results: boom")\n')
    return folder / "run_all.py"


def test_runner_writes_results_and_chart_from_the_scripts_json(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    done = subprocess.run([sys.executable, str(runner_in(tmp_path))], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # one script failed
    results = (tmp_path / "RESULTS.md").read_text()
    lines = results.splitlines()
    assert "## Machine" in lines and any(line.startswith("- load: 1-minute load average") for line in lines)
    assert any(line.startswith("| fake | true / sleep | 0.0") and line.endswith("| <= 0.5x | met |") for line in lines)
    assert any(line.startswith("| fake | sleep / true | ") and line.endswith("| <= 0.5x | missed |") for line in lines)
    assert any(line.startswith("| sleep | 0.2") for line in lines)  # the table of medians
    broken = results.split("## bench_broken.py: Fails.", 1)[1].split("## bench_fake.py", 1)[0]
    assert "**Failed: wrote no results.**" in broken and "no results: boom" in broken
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_only_runs_the_scripts_named_and_says_so(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    runner = runner_in(tmp_path)
    done = subprocess.run([sys.executable, str(runner), "--only", "fake"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # the broken script was not run
    results = (tmp_path / "RESULTS.md").read_text()
    assert "Scripts run: bench_fake.py." in results and "bench_broken" not in results
    unknown = subprocess.run([sys.executable, str(runner), "--only", "fake,nope"], capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stderr.strip() == "run_all.py: error: no benchmark named nope"


def test_runner_without_matplotlib_says_how_to_install(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(runner_in(tmp_path))], capture_output=True, text=True,
                          env=fake_matplotlib(tmp_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("run_all.py: error: run_all.py needs matplotlib, which is not installed: "
                           "pip install 'vhdtool[plot]'\n")
    assert not (tmp_path / "RESULTS.md").exists()


def test_readme_quotes_the_latest_results() -> None:
    """Every row of the README's Performance table is a row of RESULTS.md's summary."""
    section = (ROOT / "README.md").read_text().split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    quoted = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    summary = (ROOT / "benchmarks" / "RESULTS.md").read_text().split("\n## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert quoted and all(line in summary.splitlines() for line in quoted)


def test_floor_reads_only_data_extents_direct_and_writes_exact_synced_bytes(tmp_path) -> None:
    """The machine's floor: an O_DIRECT read of the data extents (holes are not read) and a
    write + fsync of the bytes a copy writes (whole 4 KiB, direct where the filesystem takes it)."""
    sparse = write_fixed(tmp_path / "sparse.vhd", 16 * MiB, 25, dense=False)
    dense = write_fixed(tmp_path / "dense.vhd", 16 * MiB, 25, dense=True)
    assert sparse.path.read_bytes()[: 16 * MiB] == dense.path.read_bytes()[: 16 * MiB]  # footers: own UUIDs
    block = os.statvfs(tmp_path).f_bsize
    assert floor.read_direct(str(sparse.path)) <= 4 * MiB + 2 * block < floor.read_direct(str(dense.path))
    assert floor.read_direct(str(sparse.path), direct=False) == floor.read_direct(str(sparse.path))  # warming
    out = tmp_path / "floor.bin"
    floor.write_synced(str(out), 5 * MiB + 512)
    assert out.read_bytes() == b"\xa5" * (5 * MiB + 4096)
    with pytest.raises(FileExistsError):  # never over an existing file
        floor.write_synced(str(out), 1)
    no_direct = tmp_path / "floor-cached.bin"  # a filesystem without O_DIRECT: written through the cache
    with pytest.MonkeyPatch.context() as m:
        m.setattr(floor.direct, "reopen", lambda fd, flags: None)
        floor.write_synced(str(no_direct), 3 * MiB)
    assert no_direct.read_bytes() == b"\xa5" * (3 * MiB)
    dynamic = qemu_dynamic(sparse.path, tmp_path / "dynamic.vhd")
    raw = tmp_path / "dynamic.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(dynamic.path), str(raw)], check=True)
    assert raw.read_bytes() == sparse.path.read_bytes()[: 16 * MiB]
