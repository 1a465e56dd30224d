"""`vhdtool check`: acceptance cases, unusable inputs, committed fixtures, bounded reads,
target limits, and that the suggested fix commands really fix what they are offered for."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import make_corpus
from conftest import FIXTURES
from oracles import vhdtool
from vhdtool.workflows.check import Report, Target, check_image
from vhdtool.workflows.check.render import render_text
from vhdtool.workflows.check.target_rules import check_blob_limits
from vhdtool.workflows.create import create
from vhdtool.format.vhd.bat import bat_bytes
from vhdtool.format.vhd.footer import DiskType
from vhdtool.format.vhd.timestamp import now
from vhdtool.disk.writer import SparseImageWriter

MiB, GiB, TiB = 1024**2, 1024**3, 1024**4


def run_fix(fix: str, cwd: Path) -> None:
    """Run a suggested `vhdtool ...` command as the user would."""
    words = shlex.split(fix)
    assert words[0] == "vhdtool"
    subprocess.run([sys.executable, "-m", "vhdtool.cli", *words[1:]], cwd=cwd, check=True, capture_output=True)


# --- acceptance ------------------------------------------------------------------------------


def test_windows_fixed_10m_passes_azure():
    proc = vhdtool("check", str(FIXTURES / "windows-fixed-10m.vhd"))
    assert proc.returncode == 0, proc.stdout
    # No partition table: the one thing it cannot say is the Hyper-V generation to boot it with.
    assert proc.stdout.splitlines()[1:] == [
        "  warning partitions.generation-unknown  the Hyper-V generation cannot be told from the partition table "
        "(no partition table: the boot firmware cannot be told): a disk created with the wrong --hyper-v-generation "
        "does not boot",
        "verdict: OK for target azure: 0 errors, 1 warning",
    ]


def test_windows_dynamic_fails_with_fixed_format_error_and_prepare_hint():
    path = str(FIXTURES / "windows-dynamic-10m.vhd")
    proc = vhdtool("check", path, "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert [(f["code"], f["severity"], f["fix"]) for f in data["findings"]] == [
        ("azure.not-fixed", "error", f"vhdtool prepare {path}"),
        ("partitions.generation-unknown", "warning", None),
    ]
    assert data["exit_code"] == 1 and data["counts"] == {"error": 1, "warning": 1, "info": 0}


def test_qemu_img_1g_fixed_fails_mib_alignment(tmp_path):
    path = tmp_path / "X.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(path), "1G"], check=True)
    proc = vhdtool("check", str(path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:2] == ["error", "azure.size-not-mib"]
    assert "the virtual size is 1,073,995,776 bytes (1024.24 MiB), not a whole number of MiB" in lines[1]
    assert lines[2].split("fix: ")[1] == f"vhdtool resize --align {path}"
    assert lines[3].split()[:2] == ["warning", "partitions.generation-unknown"]
    assert lines[4] == "verdict: FAIL for target azure: 1 error, 1 warning"


def test_text_rendering_of_a_dynamic_image():
    report = check_image(FIXTURES / "windows-dynamic-10m.vhd", Target.AZURE)
    path = FIXTURES / "windows-dynamic-10m.vhd"
    assert render_text(report) == [
        f"{path} (target azure): dynamic VHD, virtual size 10 MiB, file 4,197,888 bytes",
        "  error   azure.not-fixed                this is a dynamic VHD; Azure takes only fixed-format VHDs as "
        "disks (dynamic and differencing images are rejected, often only after the upload)",
        f"                                         fix: vhdtool prepare {path}",
        "  warning partitions.generation-unknown  the Hyper-V generation cannot be told from the partition table "
        "(no partition table: the boot firmware cannot be told): a disk created with the wrong --hyper-v-generation "
        "does not boot",
        "verdict: FAIL for target azure: 1 error, 1 warning",
    ]


# --- inputs that are not usable --------------------------------------------------------------


def unusable_inputs(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.vhd"
    empty.write_bytes(b"")
    return {"file.directory": tmp_path, "file.missing": tmp_path / "nope.vhd", "file.not-regular": fifo,
            "file.empty": empty}


def test_unusable_inputs_exit_2_without_traceback(tmp_path):
    for code, path in unusable_inputs(tmp_path).items():
        proc = vhdtool("check", str(path), "--target", "generic", "--json")
        assert (proc.returncode, proc.stderr) == (2, ""), (code, proc.stdout, proc.stderr)
        data = json.loads(proc.stdout)
        assert [f["code"] for f in data["findings"]] == [code]
        assert data["verdict"] == f"UNUSABLE: {path} cannot be checked as a VHD"


def test_unusable_text_names_the_file_and_the_problem(tmp_path):
    for code, path in unusable_inputs(tmp_path).items():
        lines = render_text(check_image(path))
        assert lines[0] == f"{path} (target azure)"
        assert lines[1].split()[:2] == ["error", code]


def test_unreadable_file_is_unusable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "secret.vhd"
    shutil.copy(FIXTURES / "windows-fixed-10m.vhd", path)
    path.chmod(0)
    assert check_image(path).codes == ["file.unreadable"]


def test_unknown_target_is_a_usage_error():
    proc = vhdtool("check", str(FIXTURES / "windows-fixed-10m.vhd"), "--target", "aws")
    assert proc.returncode == 2
    assert proc.stderr == "vhdtool: error: --target: 'aws' is not one of azure, azure-managed-disk, generic\n"


# --- committed fixtures: images other producers write must not produce false errors ------

FIXTURE_FINDINGS = {
    "azure-wa-fixed-4m.vhd": {"qemu.chs-size"},  # qemu 7.2 reads "wa" images by CHS
    "qemu-fixed-forcesize-3m.vhd": {"footer.geometry-max"},  # vhd-util refuses 65535/16/255
    "virtualpc-short-footer.vhd": {"footer.short"},
    "chain-child1.vhd": {"parent.chain"},
    "chain-child2.vhd": {"parent.chain"},
}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.vhd")), ids=lambda p: p.name)
def test_committed_fixtures_are_sound(path):
    report = check_image(path, Target.GENERIC)
    assert set(report.codes) == FIXTURE_FINDINGS.get(path.name, set()), [f.message for f in report.findings]
    assert report.exit_code == 0


def test_chain_is_named_in_order():
    report = check_image(FIXTURES / "chain-child2.vhd", Target.GENERIC)
    (chain,) = report.findings
    assert chain.message == (
        f"parent chain (UUIDs match): {FIXTURES / 'chain-child2.vhd'} <- {FIXTURES / 'chain-child1.vhd'}"
        f" <- {FIXTURES / 'chain-base.vhd'}"
    )


# --- time and memory do not depend on the disk size ------------------------------------------


@pytest.fixture
def reads(monkeypatch) -> list[tuple[int, int]]:
    """Every pread (offset, length) made while checking."""
    log: list[tuple[int, int]] = []
    real = os.pread

    def spy(fd: int, length: int, offset: int) -> bytes:
        log.append((offset, length))
        return real(fd, length, offset)

    monkeypatch.setattr(os, "pread", spy)
    return log


def test_fixed_1tib_reads_footer_and_first_sector_only(tmp_path, reads):
    path = tmp_path / "big.vhd"
    create(path, TiB)
    start = time.perf_counter()
    report = check_image(path, Target.AZURE)
    elapsed = time.perf_counter() - start
    assert report.codes == ["partitions.generation-unknown"] and report.exit_code == 0
    assert sorted(reads) == [(0, 512), (0, 512), (TiB, 512)]  # the head copy, the MBR, the footer
    assert elapsed < 0.25


def test_dynamic_2tib_reads_header_and_bat_only(tmp_path, reads):
    path = tmp_path / "big-dynamic.vhd"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    writer = SparseImageWriter(fd, 2 * TiB)
    for offset in range(0, 2 * TiB, 256 * GiB):  # 8 blocks spread over the disk
        writer.write(offset, b"\x5a" * 4096)
    writer.finish()
    os.close(fd)
    entries = 2 * TiB // (2 * MiB)
    start = time.perf_counter()
    report = check_image(path, Target.GENERIC)
    elapsed = time.perf_counter() - start
    assert report.codes == ["size.over-2040gib"]
    eof = path.stat().st_size
    assert sorted(reads) == [(0, 512), (512, 1024), (1536, entries * 4), (eof - 512, 512)]
    assert bat_bytes(entries) == 4 * MiB
    assert elapsed < 0.25


# --- rules that need numbers no test file can have --------------------------------------------


@pytest.mark.parametrize(
    "target, blob, code",
    [
        (Target.AZURE, MiB + 512, None),
        (Target.AZURE, 512 + 512, "azure.too-small"),
        (Target.AZURE, 8 * TiB, None),
        (Target.AZURE, 8 * TiB + MiB, "azure.too-large"),
        (Target.AZURE_MANAGED_DISK, 20 * MiB + 512, None),
        (Target.AZURE_MANAGED_DISK, 19 * MiB + 512, "azure.too-small"),
        (Target.AZURE_MANAGED_DISK, 32 * TiB + 512, None),
        (Target.AZURE_MANAGED_DISK, 32 * TiB + MiB + 512, "azure.too-large"),
    ],
)
def test_blob_limits(target, blob, code):
    report = Report("disk.vhd", target)
    check_blob_limits(report, target, blob)
    assert report.codes == ([code] if code else [])


@pytest.mark.parametrize("ahead, flagged", [(0, False), (1700, False), (1900, True), (86400 * 365, True)])
def test_timestamp_tolerates_vhd_util_slack(tmp_path, ahead, flagged):
    path = tmp_path / "t.vhd"
    make_corpus.fixed(path, timestamp=now() + ahead)
    assert check_image(path, Target.GENERIC).codes == (["footer.timestamp-future"] if flagged else [])


def test_check_agrees_with_qemu_size_rule(tmp_path):
    """A CHS-ruled creator whose geometry is short: the exact byte counts qemu 7.2 reads."""
    path = tmp_path / "vpc.vhd"
    make_corpus.fixed(path, 5 * GiB, creator_application=b"vpc ")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(path)],
                                     capture_output=True, text=True, check=True).stdout)
    (warning,) = check_image(path, Target.GENERIC).findings
    assert warning.code == "qemu.chs-size"
    assert info["virtual-size"] == 5_368_430_592
    assert "reads this disk as 5,368,430,592 bytes (geometry 10402/16/63 x 512) while the footer says 5,368,709,120" in warning.message


# --- the suggested fixes fix ----------------------------------------------------------------


def test_resize_fix_makes_qemu_image_pass(tmp_path):
    path = tmp_path / "X.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(path), "1G"], check=True)
    finding, _ = check_image(path).findings  # and partitions.generation-unknown: no table
    run_fix(finding.fix, tmp_path)
    after = check_image(path)
    assert after.codes == ["partitions.generation-unknown"] and after.virtual_size == 1025 * MiB


def test_convert_fix_removes_qemu_size_disagreement_of_dynamic_image(tmp_path):
    path = tmp_path / "vpc-dynamic.vhd"
    make_corpus.dynamic(path, creator_application=b"vpc ")
    (finding,) = check_image(path, Target.GENERIC).findings
    assert finding.code == "qemu.chs-size"
    run_fix(finding.fix, tmp_path)
    assert finding.fix.endswith(f"{tmp_path / 'vpc-dynamic-dynamic.vhd'} --to dynamic")
    assert check_image(tmp_path / "vpc-dynamic-dynamic.vhd", Target.GENERIC).codes == []


def test_managed_disk_size_fix_makes_image_pass(tmp_path):
    path = tmp_path / "small.vhd"
    create(path, 10 * MiB, DiskType.FIXED)
    finding = check_image(path, Target.AZURE_MANAGED_DISK).findings[0]
    assert finding.code == "azure.too-small"
    run_fix(finding.fix, tmp_path)
    assert check_image(path, Target.AZURE_MANAGED_DISK).codes == ["partitions.generation-unknown", "azure.disk-create"]
