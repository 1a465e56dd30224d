"""Failures an attack on the CLI found: each a one-line refusal (exit 2) before any work."""

import os

import pytest

from conftest import FIXTURES
from oracles import vhdtool


def refused(proc, message: str) -> bool:
    return (proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
            and len(proc.stderr.strip().splitlines()) == 1)


@pytest.mark.parametrize("granularity", ["8MiB", "4GiB", "1TiB"])
def test_map_refuses_a_granularity_larger_than_its_read_unit(fixtures_dir, granularity):
    proc = vhdtool("map", "-q", "--granularity", granularity, str(fixtures_dir / "windows-fixed-10m.vhd"))
    assert refused(proc, "is over 4 MiB"), proc.stderr


def test_map_at_the_largest_granularity_stays_small(fixtures_dir):
    proc = vhdtool("map", "--json", "--granularity", "4MiB", str(fixtures_dir / "windows-fixed-10m.vhd"))
    assert proc.returncode == 0, proc.stderr
    assert '"granularity": 4194304' in proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["create", "--size", "10MiB", "--type", "dynamic", "--block-size", "4GiB"],
        ["create", "--size", "10MiB", "--type", "dynamic", "--block-size", "1TiB"],
    ],
)
def test_block_sizes_past_the_32_bit_field_are_refused(tmp_path, args):
    proc = vhdtool(*args[:1], str(tmp_path / "x.vhd"), *args[1:])
    assert refused(proc, "not a power of two from 512 to 2 GiB"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_convert_refuses_a_4_gib_block(tmp_path, fixtures_dir):
    proc = vhdtool("convert", "--to", "dynamic", str(fixtures_dir / "windows-fixed-10m.vhd"),
                   str(tmp_path / "x.vhd"), "--block-size", "4GiB")
    assert refused(proc, "not a power of two from 512 to 2 GiB"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_2_gib_block_is_written_and_checks_clean(tmp_path):
    path = tmp_path / "x.vhd"
    assert vhdtool("create", str(path), "--size", "10MiB", "--type", "dynamic", "--block-size", "2GiB").returncode == 0
    proc = vhdtool("check", "--target", "generic", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_create_never_writes_a_bat_check_calls_too_large(tmp_path):
    # 64 GiB in 512-byte blocks: 134,217,728 entries, a 512 MiB BAT (check: bat.too-large).
    proc = vhdtool("create", str(tmp_path / "x.vhd"), "--size", "64GiB", "--type", "dynamic",
                   "--block-size", "512")
    assert refused(proc, "bat.too-large"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_convert_never_writes_a_bat_check_calls_too_large(tmp_path):
    source = tmp_path / "src" / "big.img"
    source.parent.mkdir()
    with open(source, "wb") as f:
        os.truncate(f.fileno(), 4 * 1024**3)  # sparse: 8,388,608 blocks of 512 bytes
    out = tmp_path / "out"
    out.mkdir()
    proc = vhdtool("convert", "--to", "dynamic", "--raw", str(source), str(out / "x.vhd"), "--block-size", "512")
    assert refused(proc, "bat.too-large"), proc.stderr
    assert not any(out.iterdir())


def test_validate_size_refuses_what_check_calls_bat_too_large():
    from vhdtool.disk.vhd_rules.bat_rules import MAX_BAT_ENTRIES
    from vhdtool.errors import VhdError
    from vhdtool.format.vhd.footer import DiskType
    from vhdtool.workflows.create import validate_size

    validate_size(MAX_BAT_ENTRIES * 512, DiskType.DYNAMIC, 512)  # the largest BAT check accepts
    with pytest.raises(VhdError, match="bat.too-large"):
        validate_size(MAX_BAT_ENTRIES * 512 + 512, DiskType.DYNAMIC, 512)


def test_fixed_create_refuses_a_block_size(tmp_path):
    proc = vhdtool("create", str(tmp_path / "x.vhd"), "--size", "10MiB", "--block-size", "2MiB")
    assert refused(proc, "--block-size is for a dynamic VHD"), proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["info", "map"])
def test_a_raw_file_gets_one_hint(tmp_path, command):
    path = tmp_path / "disk.bin"
    path.write_bytes(b"\x5a" * 4096)
    proc = vhdtool(command, str(path))
    assert refused(proc, "not a VHD"), proc.stderr
    assert proc.stderr.count("a raw disk image?") == 1, proc.stderr


@pytest.mark.parametrize("to", ["fixed", "raw"])
def test_convert_to_a_blockless_output_refuses_a_block_size(tmp_path, to):
    """--block-size given where there are no blocks is refused, not silently ignored."""
    proc = vhdtool("convert", str(FIXTURES / "qemu-fixed-2m.vhd"), str(tmp_path / "x.out"), "--to", to,
                   "--block-size", "1MiB")
    assert refused(proc, "--block-size is for a dynamic VHD"), proc.stderr
    assert not any(tmp_path.iterdir())
