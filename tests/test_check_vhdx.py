"""`vhdtool check X.vhdx`: the reader's findings and refusals under stable codes, azure.not-vhd
with the prepare fix, 4096-byte sectors; formats vhdtool does not read; and for
azure-managed-disk the `az disk create` line, its size as prepare makes the disk."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import make_partition_fixtures
import make_vhdx_fixtures as mk
import pytest
from conftest import FIXTURES

from vhdtool.disk.findings import CHANGES_CONTENT, CODES, UNUSABLE_CODES, Severity
from vhdtool.workflows.check import Target, check_image

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory) -> dict[str, Path]:
    """The partition fixtures (fixed VHDs, raw images beside them), and GPT+ESP and MBR ones
    as VHDX, written block by block from the raw image."""
    out = tmp_path_factory.mktemp("partitioned")
    made = make_partition_fixtures.make(out)
    for name in ("gpt-esp-linux", "mbr-windows"):
        raw = made[name].with_suffix(".img").read_bytes()
        blocks = {b: (mk.State.FULLY_PRESENT, raw[b * MiB : (b + 1) * MiB])
                  for b in range(len(raw) // MiB) if any(raw[b * MiB : (b + 1) * MiB])}
        made[f"{name}-vhdx"] = mk.write_vhdx(out / f"{name}.vhdx", mk.VhdxSpec(size=len(raw), blocks=blocks))
    return made


def test_every_reader_code_is_registered_with_its_severity():
    """The reader (disk/vhdx*.py) and check share one truth: each code it raises or notes is in
    CODES; a note's severity is the registered one; every refusal changes what the disk reads."""
    source = "".join(p.read_text() for p in (ROOT / "vhdtool/disk").glob("vhdx*.py"))
    codes = set(re.findall(r'"(vhdx\.[a-z0-9-]+)"', source))
    notes = dict(re.findall(r'note\(\s*"(vhdx\.[a-z0-9-]+)",\s*"(\w+)"', source))
    assert len(codes) > 30 and len(notes) >= 5
    assert codes <= set(CODES)
    assert {code: CODES[code].value for code in notes} == notes
    for code in codes - set(notes):
        assert CODES[code] == Severity.ERROR and code in CHANGES_CONTENT, code
    assert not any(code in CHANGES_CONTENT for code in notes)


def test_a_sound_vhdx_passes_generic_and_needs_prepare_for_azure(vhdx, cli):
    path = vhdx["qemu-1m"]
    generic = check_image(path, Target.GENERIC)
    assert (generic.codes, generic.exit_code, generic.format) == ([], 0, "vhdx")
    assert (generic.disk_type, generic.virtual_size, generic.file_size) == ("dynamic", 20 * MiB, path.stat().st_size)
    assert generic.partitions is None  # a generic check reads no partition table
    outcome = cli("check", str(path), "--json")
    data = json.loads(outcome.out)
    assert outcome.code == 1
    assert [(f["code"], f["severity"], f["fix"]) for f in data["findings"]] == [
        ("azure.not-vhd", "error", f"vhdtool prepare {path}"),
        ("partitions.generation-unknown", "warning", None),
    ]
    assert data["format"] == "vhdx" and data["partitions"]["scheme"] is None
    text = cli("check", str(path)).out.splitlines()
    assert text[0] == f"{path} (target azure): dynamic VHDX, virtual size 20 MiB, file {path.stat().st_size:,} bytes"


def test_4096_byte_sectors_are_reported_with_the_prepare_fix(vhdx):
    report = check_image(vhdx["own-4k"], Target.AZURE)
    (sector,) = [f for f in report.findings if f.code == "vhdx.logical-sector-4k"]
    assert sector.severity == Severity.WARNING and sector.numbers == {"logical_sector_size": 4096}
    assert "Azure takes 512-byte sectors only" in sector.message
    assert sector.fix == f"vhdtool prepare {vhdx['own-4k']}"
    assert check_image(vhdx["own-4k"], Target.GENERIC).codes == ["vhdx.logical-sector-4k"]


def test_differencing_and_pending_log(vhdx, tmp_path):
    child = check_image(vhdx["diff-child"], Target.GENERIC)
    assert (child.codes, child.disk_type) == ([], "differencing")
    assert check_image(vhdx["pending-log"], Target.GENERIC).codes == ["vhdx.log-replayed"]
    alone = tmp_path / "diff-child.vhdx"
    shutil.copy(vhdx["diff-child"], alone)  # its parent is not next to it
    report = check_image(alone, Target.AZURE)
    assert report.codes == ["vhdx.parent-not-found"] and report.exit_code == 1
    assert report.findings[0].fix is None


def damaged(src: Path, tmp_path: Path, at: int, value: bytes) -> Path:
    data = bytearray(src.read_bytes())
    data[at : at + len(value)] = value
    out = tmp_path / "damaged.vhdx"
    out.write_bytes(data)
    return out


def test_refusals_are_error_findings_with_no_fix(vhdx, tmp_path, cli):
    entry = mk.batfmt.build_entry(6, 64 * MiB).to_bytes(8, "little")
    path = damaged(vhdx["diff-base"], tmp_path, mk.BAT_OFFSET + 16, entry)
    outcome = cli("check", str(path), "--json")
    data = json.loads(outcome.out)
    assert outcome.code == 1 and outcome.err == ""
    (finding,) = data["findings"]
    assert (finding["code"], finding["severity"], finding["fix"]) == ("vhdx.bat-past-eof", "error", None)
    assert data["disk_type"] == "dynamic" and data["partitions"] is None
    text = cli("check", str(path))
    assert text.code == 1 and "vhdx.bat-past-eof" in text.out and "Traceback" not in text.out + text.err


def test_damaged_header_is_a_warning_and_the_check_goes_on(vhdx, tmp_path):
    at = mk.HEADER_OFFSETS[0] + 40
    path = damaged(vhdx["qemu-8m"], tmp_path, at, bytes([vhdx["qemu-8m"].read_bytes()[at] ^ 1]))
    report = check_image(path, Target.GENERIC)
    assert report.codes == ["vhdx.header-checksum"] and report.exit_code == 0


@pytest.mark.parametrize("fmt, head, at", [("qcow2", b"QFI\xfb", 0), ("vmdk", b"KDMV", 0),
                                           ("vdi", (0xBEDA107F).to_bytes(4, "little"), 64)])
def test_other_formats_are_named_with_the_convert_command(tmp_path, cli, fmt, head, at):
    path = tmp_path / f"disk.{fmt}"
    data = bytearray(8192)
    data[at : at + 4] = head
    path.write_bytes(data)
    outcome = cli("check", str(path), "--json")
    report = json.loads(outcome.out)
    assert outcome.code == 2 and report["exit_code"] == 2
    (finding,) = report["findings"]
    assert finding["code"] == "file.format" and finding["code"] in UNUSABLE_CODES
    assert finding["message"] == (f"is a {fmt} image, which vhdtool does not read: convert it first with "
                                  f"`qemu-img convert -f {fmt} -O vpc -o subformat=fixed,force_size=on {path} OUT.vhd`")


# --- az disk create for azure-managed-disk ---------------------------------------------------


@pytest.mark.parametrize("name, generation", [("gpt-esp-linux", "V2"), ("mbr-windows", "V1"),
                                              ("gpt-esp-linux-vhdx", "V2"), ("mbr-windows-vhdx", "V1")])
def test_disk_create_line_names_the_generation(partitioned, name, generation, cli):
    outcome = cli("check", "--target", "azure-managed-disk", str(partitioned[name]), "--json")
    data = json.loads(outcome.out)
    n = 20 * MiB + 512  # 16 MiB rounds up to the managed-disk minimum, 20 MiB, + the footer
    command = f"az disk create -g RG -n NAME --for-upload --upload-size-bytes {n} --hyper-v-generation {generation}"
    assert data["az_disk_create"] == {"command": command, "upload_size_bytes": n, "hyper_v_generation": generation}
    (line,) = [f for f in data["findings"] if f["code"] == "azure.disk-create"]
    assert line["severity"] == "info" and line["fix"] == command and line["upload_size_bytes"] == n
    (gen,) = [f for f in data["findings"] if f["code"] == "partitions.generation"]
    assert f"--hyper-v-generation {generation}" in gen["message"]
    text = cli("check", "--target", "azure-managed-disk", str(partitioned[name])).out
    assert f"fix: {command}" in text


def test_disk_create_without_a_partition_table_omits_the_generation_with_a_note(tmp_path):
    path = tmp_path / "X.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(path), "1G"], check=True)
    report = check_image(path, Target.AZURE_MANAGED_DISK)
    n = 1025 * MiB + 512  # qemu's 1,073,995,776 bytes rounded up to whole MiB, + the footer
    assert report.az_disk_create == {
        "command": f"az disk create -g RG -n NAME --for-upload --upload-size-bytes {n}",
        "upload_size_bytes": n, "hyper_v_generation": None}
    assert report.codes == ["azure.size-not-mib", "partitions.generation-unknown", "azure.disk-create"]
    assert "no --hyper-v-generation" in report.findings[-1].message


def test_upload_size_is_the_size_of_what_prepare_writes(tmp_path, cli):
    """N is what the managed disk must be created with: prepare's output, byte for byte."""
    src = tmp_path / "odd.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic", str(src), "30000K"], check=True)
    n = check_image(src, Target.AZURE_MANAGED_DISK).az_disk_create["upload_size_bytes"]
    out = tmp_path / "ready.vhd"
    done = cli("prepare", str(src), "--target", "azure-managed-disk", "-o", str(out))
    assert done.code == 0, done.err
    assert out.stat().st_size == n
    assert check_image(out, Target.AZURE_MANAGED_DISK).az_disk_create["upload_size_bytes"] == n


def test_no_line_while_damage_prepare_cannot_repair_stands(vhdx, tmp_path):
    entry = mk.batfmt.build_entry(6, 64 * MiB).to_bytes(8, "little")
    path = damaged(vhdx["diff-base"], tmp_path, mk.BAT_OFFSET + 16, entry)
    assert check_image(path, Target.AZURE_MANAGED_DISK).az_disk_create is None
    damaged_vhd = tmp_path / "bad.vhd"
    data = bytearray((FIXTURES / "windows-dynamic-10m.vhd").read_bytes())
    data[512 + 8] ^= 0xFF  # the dynamic header's data offset: header.checksum
    damaged_vhd.write_bytes(data)
    report = check_image(damaged_vhd, Target.AZURE_MANAGED_DISK)
    assert "header.checksum" in report.codes and report.az_disk_create is None
