"""`vhdtool resize`: in place, footer and BAT only, oracles read the new size."""

import shutil

import pytest

from conftest import FIXTURES
from oracles import qemu_info, qemu_raw, vhdi_info, vhdtool
from helpers import content
from vhdtool.disk.image import open_disk

MiB = 1024 * 1024


def copy(tmp_path, name):
    shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path / name


def test_align_grows_a_qemu_fixed_image_to_the_next_mib(tmp_path):
    path = copy(tmp_path, "qemu-fixed-2m.vhd")  # 2,123,776 bytes: qemu's CHS rounding of 2M
    before, blocks = content(path), path.stat().st_blocks
    proc = vhdtool("resize", str(path), "--align")
    assert proc.returncode == 0, proc.stderr
    assert "2,123,776 -> 3,145,728 bytes" in proc.stdout  # exact: rounding would hide the change
    assert path.stat().st_size == 3 * MiB + 512
    assert (path.stat().st_blocks - blocks) * 512 <= 8192  # no data written: the growth is a hole
    assert qemu_info(path)["virtual-size"] == vhdi_info(path)["virtual_size"] == 3 * MiB
    after = qemu_raw(path, tmp_path / "out.raw")
    assert after[: len(before)] == before and not any(after[len(before) :])


def test_grow_dynamic_within_bat_room(tmp_path):
    path = copy(tmp_path, "windows-dynamic-10m.vhd")  # 5 entries; the BAT sector holds 128
    before = content(path)
    assert vhdtool("resize", str(path), "--size", "100MiB").returncode == 0
    with open_disk(path) as disk:
        assert disk.virtual_size == 100 * MiB and disk.header.max_table_entries == 50
        assert disk.read(0, len(before)) == before and not any(disk.read(len(before), 90 * MiB))
    assert qemu_info(path)["virtual-size"] == vhdi_info(path)["virtual_size"] == 100 * MiB


def test_grow_dynamic_beyond_bat_room_says_so(tmp_path):
    path = copy(tmp_path, "windows-dynamic-10m.vhd")
    original = path.read_bytes()
    proc = vhdtool("resize", str(path), "--size", "1GiB")
    assert proc.returncode == 2
    assert "the BAT has room for 128 blocks (256 MiB)" in proc.stderr
    assert path.read_bytes() == original


def test_shrink_needs_allow_shrink_and_discard_data_over_data(tmp_path):
    path = copy(tmp_path, "windows-fixed-10m.vhd")  # data up to 3 MiB + 7 KiB
    original = path.read_bytes()
    proc = vhdtool("resize", str(path), "--size", "2MiB")
    assert proc.returncode == 2 and "pass --allow-shrink" in proc.stderr
    proc = vhdtool("resize", str(path), "--size", "2MiB", "--allow-shrink")
    assert proc.returncode == 2 and "cuts off non-zero data (first at byte 3,144,704)" in proc.stderr
    assert path.read_bytes() == original
    assert vhdtool("resize", str(path), "--size", "4MiB", "--allow-shrink").returncode == 0
    assert path.stat().st_size == 4 * MiB + 512 and path.read_bytes()[: 4 * MiB] == original[: 4 * MiB]
    proc = vhdtool("resize", str(path), "--size", "2MiB", "--allow-shrink", "--force")
    assert proc.returncode == 2 and "pass --discard-data" in proc.stderr  # --force only replaces outputs
    assert vhdtool("resize", str(path), "--size", "2MiB", "--discard-data").returncode == 0
    assert qemu_info(path)["virtual-size"] == 2 * MiB


def test_differencing_is_refused(tmp_path):
    proc = vhdtool("resize", str(FIXTURES / "chain-child1.vhd"), "--align")
    assert proc.returncode == 0  # already aligned: nothing to do, nothing written
    proc = vhdtool("resize", str(FIXTURES / "chain-child1.vhd"), "--size", "8MiB")
    assert proc.returncode == 2 and "merge it first" in proc.stderr


@pytest.mark.parametrize("args", [[], ["--size", "1MiB", "--align"], ["--align", "1MiB"]])
def test_usage_errors(tmp_path, args):
    path = copy(tmp_path, "windows-fixed-10m.vhd")
    proc = vhdtool("resize", str(path), *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_output_copy_leaves_the_source_alone(tmp_path):
    src = FIXTURES / "qemu-fixed-2m.vhd"
    original = src.read_bytes()
    out = tmp_path / "aligned.vhd"
    proc = vhdtool("resize", str(src), "--align", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert src.read_bytes() == original
    assert qemu_info(out)["virtual-size"] == 3 * MiB
    assert content(out)[: len(original) - 512] == original[:-512]
    proc = vhdtool("resize", str(src), "--size", "1MiB", "--allow-shrink", "-o", str(tmp_path / "s.vhd"))
    assert proc.returncode == 2 and "cuts off non-zero data" in proc.stderr
    assert not (tmp_path / "s.vhd").exists()


def test_grow_fixed_with_extra_bytes_before_its_footer(tmp_path):
    """A producer's extra bytes between the data and the footer (check: fixed.extra-data) are
    zeroed inside the grown disk or cut off after its new footer, never left as the footer."""
    src = copy(tmp_path, "windows-fixed-10m.vhd")
    data = src.read_bytes()
    for new, name in ((11 * MiB, "small-growth.vhd"), (20 * MiB, "large-growth.vhd")):
        path = tmp_path / name
        path.write_bytes(data[:-512] + b"\xab" * (2 * MiB) + data[-512:])  # 2 MiB extra
        assert vhdtool("resize", str(path), "--size", str(new)).returncode == 0
        assert path.stat().st_size == new + 512
        assert qemu_info(path)["virtual-size"] == vhdi_info(path)["virtual_size"] == new
        after = content(path)
        assert after[: 10 * MiB] == data[: 10 * MiB] and not any(after[10 * MiB :])


def test_grow_fixed_with_a_511_byte_footer(tmp_path):
    path = copy(tmp_path, "virtualpc-short-footer.vhd")  # Virtual PC: footer in the last 511 bytes
    before = content(path)
    assert vhdtool("resize", str(path), "--align").returncode == 0
    assert path.stat().st_size == 2 * MiB + 512 and qemu_info(path)["virtual-size"] == 2 * MiB
    after = content(path)
    assert after[: len(before)] == before and not any(after[len(before) :])


def test_output_copy_refused_for_bat_room_leaves_nothing(tmp_path):
    out = tmp_path / "big.vhd"
    proc = vhdtool("resize", str(FIXTURES / "windows-dynamic-10m.vhd"), "--size", "1GiB", "-o", str(out))
    assert proc.returncode == 2 and "the BAT has room for 128 blocks" in proc.stderr
    assert list(tmp_path.iterdir()) == []
