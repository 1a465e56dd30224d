"""Formats told apart by their bytes, and the one-line way out for those vhdtool does not read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import make_vhdx_fixtures as mk
from vhdtool.disk.sniff import readable_format, sniff, unsupported
from vhdtool.errors import VhdError


def qemu_create(path: Path, fmt: str, *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *options, str(path), "4M"], check=True)
    return path


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("qemu-fixed-2m.vhd", "vhd"),  # footer at the end only
        ("qemu-dynamic-20m.vhd", "vhd"),
        ("virtualpc-short-footer.vhd", "vhd"),  # 511-byte footer
        ("raw-3m.img", "raw"),
    ],
)
def test_vhd_and_raw_fixtures(fixtures_dir, fixture, expected):
    assert sniff(fixtures_dir / fixture) == expected


def test_vhd_with_only_the_copy_at_offset_zero(fixtures_dir, tmp_path):
    data = (fixtures_dir / "qemu-dynamic-20m.vhd").read_bytes()
    cut = tmp_path / "cut.vhd"
    cut.write_bytes(data[:-512])  # the tail footer lost: the dynamic copy at 0 remains
    assert sniff(cut) == "vhd"


@pytest.mark.parametrize(
    ("fmt", "options", "expected"),
    [
        ("vhdx", [], "vhdx"),
        ("qcow2", [], "qcow2"),
        ("vmdk", [], "vmdk"),  # sparse extent: "KDMV"
        ("vmdk", ["-o", "subformat=monolithicFlat"], "vmdk"),  # text descriptor
        ("vdi", [], "vdi"),
        ("vpc", ["-o", "subformat=fixed"], "vhd"),
        ("raw", [], "raw"),
    ],
)
def test_images_made_by_qemu(tmp_path, fmt, options, expected):
    assert sniff(qemu_create(tmp_path / f"disk.{fmt}", fmt, *options)) == expected


def test_own_vhdx(tmp_path):
    path = mk.write_vhdx(tmp_path / "x.vhdx", mk.VhdxSpec(size=4 * mk.MiB))
    assert sniff(path) == "vhdx"


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi"])
def test_unsupported_formats_say_how_to_convert(tmp_path, fmt):
    path = qemu_create(tmp_path / f"disk.{fmt}", fmt)
    err = unsupported(path, sniff(path))
    assert isinstance(err, VhdError) and "\n" not in str(err)
    assert str(err).startswith(f"{path}: is a {fmt} image")
    assert (
        f"qemu-img convert -f {fmt} -O vpc -o subformat=fixed,force_size=on {path} OUT.vhd"
        in str(err)
    )
    with pytest.raises(VhdError) as raised:
        readable_format(path)
    assert str(raised.value) == str(err)


@pytest.mark.parametrize("fixture", ["qemu-fixed-2m.vhd", "raw-3m.img"])
def test_readable_formats_pass(fixtures_dir, fixture):
    assert readable_format(fixtures_dir / fixture) in ("vhd", "raw")


def test_missing_file_and_directory_are_one_line_errors(tmp_path):
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(VhdError) as err:
            sniff(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
