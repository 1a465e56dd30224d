"""Partition tables in `info` (VHD fixed and dynamic, VHDX, raw) and in `check --target azure*`
(the --hyper-v-generation to create the disk with, or a warning), read through the disk the
command opened; a fixed VHD still needs neither numpy nor the Azure SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import make_partition_fixtures
import make_vhdx_fixtures as mk
import pytest

from vhdtool.disk.partitions import read_layout, render_lines, to_dict
from vhdtool.workflows.check import Target, check_image

MiB = 1024 * 1024

# name: scheme, generation, os_hint, partition count (sfdisk/sgdisk/fdisk made them: test_partitions.py)
EXPECTED = {
    "mbr-linux": ("mbr", "V1", "linux", 4),
    "mbr-windows": ("mbr", "V1", "windows", 3),
    "gpt-esp-linux": ("gpt", "V2", "linux", 3),
    "gpt-esp-windows": ("gpt", "V2", "windows", 4),
    "gpt-no-esp": ("gpt", None, "linux", 2),
    "no-table": (None, None, None, 0),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return make_partition_fixtures.make(tmp_path_factory.mktemp("partitions"))


class RawDisk:
    """The raw image as read_layout's disk: the layout info must agree with."""

    def __init__(self, path: Path):
        self.data = path.read_bytes()
        self.virtual_size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def expected_layout(images, name) -> dict:
    return to_dict(read_layout(RawDisk(images[name].with_suffix(".img"))))


@pytest.mark.parametrize("name", EXPECTED)
def test_info_of_a_fixed_vhd_shows_layout_generation_and_os(images, name, cli):
    outcome = cli("info", str(images[name]), "--json")
    assert outcome.code == 0
    data = json.loads(outcome.out)["partitions"]
    scheme, generation, os_hint, count = EXPECTED[name]
    assert (data["scheme"], data["generation"], data["os_hint"], len(data["partitions"])) == (
        scheme, generation, os_hint, count)
    assert data == expected_layout(images, name)
    text = cli("info", str(images[name])).out.splitlines()
    start = text.index("Partitions")
    want = render_lines(read_layout(RawDisk(images[name].with_suffix(".img"))))
    assert text[start + 1 : start + 1 + len(want)] == [f"  {line}" for line in want]


@pytest.mark.parametrize("name", ["gpt-esp-windows", "mbr-linux"])
def test_raw_dynamic_and_vhdx_forms_show_the_same_table(images, name, tmp_path, cli):
    want = expected_layout(images, name)
    raw = images[name].with_suffix(".img")
    assert json.loads(cli("info", str(raw), "--json").out)["partitions"] == want  # raw by its name
    assert json.loads(cli("info", "--raw", str(raw), "--json").out)["partitions"] == want
    dynamic = tmp_path / f"{name}-dynamic.vhd"
    assert cli("convert", str(images[name]), str(dynamic), "--to", "dynamic").code == 0
    assert json.loads(cli("info", str(dynamic), "--json").out)["partitions"] == want
    data = raw.read_bytes()
    blocks = {b: (mk.State.FULLY_PRESENT, data[b * MiB : (b + 1) * MiB])
              for b in range(len(data) // MiB) if any(data[b * MiB : (b + 1) * MiB])}
    vhdx = mk.write_vhdx(tmp_path / f"{name}.vhdx", mk.VhdxSpec(size=len(data), blocks=blocks))
    assert json.loads(cli("info", str(vhdx), "--json").out)["partitions"] == want


def test_a_damaged_image_shows_no_partition_table(images, tmp_path, cli):
    """The table is read through the disk only when the disk reads as the file describes."""
    src = images["gpt-esp-linux"]
    dynamic = tmp_path / "d.vhd"
    assert cli("convert", str(src), str(dynamic), "--to", "dynamic").code == 0
    data = bytearray(dynamic.read_bytes())
    data[512 + 8] ^= 0xFF  # dynamic header: header.checksum, content-changing
    dynamic.write_bytes(data)
    info = json.loads(cli("info", str(dynamic), "--json").out)
    assert info["exit_code"] == 1 and "partitions" not in info
    report = check_image(dynamic, Target.AZURE)
    assert report.partitions is None and not any(c.startswith("partitions.") for c in report.codes)


@pytest.mark.parametrize("name, code, says", [
    ("gpt-esp-windows", "partitions.generation", "create the disk or image with --hyper-v-generation V2:"),
    ("mbr-linux", "partitions.generation", "create the disk or image with --hyper-v-generation V1:"),
    ("gpt-no-esp", "partitions.generation-unknown", "the Hyper-V generation cannot be told"),
    ("no-table", "partitions.generation-unknown", "no partition table"),
])
def test_check_for_azure_says_the_generation_or_warns(images, name, code, says):
    report = check_image(images[name], Target.AZURE)
    (finding,) = [f for f in report.findings if f.code.startswith("partitions.")]
    assert finding.code == code and says in finding.message
    assert finding.severity.value == ("info" if code == "partitions.generation" else "warning")
    assert report.partitions == expected_layout(images, name)
    generic = check_image(images[name], Target.GENERIC)
    assert generic.partitions is None and not any(c.startswith("partitions.") for c in generic.codes)


@pytest.mark.parametrize("command", [["info"], ["check"], ["check", "--json"]])
def test_partitioned_fixed_vhd_needs_neither_numpy_nor_the_azure_sdk(images, command):
    """Start-up (#17): reading the GPT of a fixed VHD goes through the file, not the engine."""
    code = (
        "import sys\n"
        "from vhdtool.cli import main\n"
        f"sys.argv = ['vhdtool', *{command!r}, {str(images['gpt-esp-linux'])!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print('heavy:', sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'azure'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "V2" in proc.stdout  # the table was read
    assert proc.stdout.splitlines()[-1] == "heavy: []"
