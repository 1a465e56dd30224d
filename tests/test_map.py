"""`vhdtool map` agrees with `qemu-img map` on where data is, and is finer: zero pages inside
allocated blocks are not data."""

from __future__ import annotations

import json
import subprocess

import pytest

import make_fixtures
from conftest import FIXTURES
from oracles import qemu_info, qemu_map, qemu_raw, vhdtool
from helpers import page_runs
from vhdtool.ranges import intersect, merge

MiB = 1024 * 1024


def qemu_data_areas(path) -> list[tuple[int, int]]:
    return [(e["start"], e["start"] + e["length"]) for e in qemu_map(path) if e["data"]]


def expected_runs(path, tmp_path, granularity: int = 512) -> list[tuple[int, int]]:
    """The non-zero pages of the disk as qemu-img reads it, inside the areas qemu maps as data."""
    content = qemu_raw(path, tmp_path / "qemu.raw")
    return list(merge(intersect(page_runs(content, granularity), qemu_data_areas(path))))


def map_json(path, *args: str) -> dict:
    result = vhdtool("map", "--json", str(path), *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def qemu_image(tmp_path):
    """A dynamic image written by qemu-io, with one block that holds only zeros."""
    path = tmp_path / "qemu.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(path), "32M"], check=True)
    for cmd in ("write -P 0x11 0 4k", "write -P 0 4M 2M", "write -P 0x22 7M 512",
                "write -P 0 9M 1M", "write -P 0x33 9M 512", "write -P 0x44 30M 1M"):
        subprocess.run(["qemu-io", "-f", "vpc", "-c", cmd, str(path)], check=True, capture_output=True)
    return path


def test_agrees_with_qemu_img_map_and_is_finer(qemu_image, tmp_path):
    got = map_json(qemu_image)
    runs = [(r["start"], r["start"] + r["length"]) for r in got["runs"]]
    assert runs == expected_runs(qemu_image, tmp_path)
    assert runs == [(0, 4096), (7 * MiB, 7 * MiB + 512), (9 * MiB, 9 * MiB + 512), (30 * MiB, 31 * MiB)]
    # qemu maps the zero-filled block 4M-6M as data; we do not
    assert (4 * MiB, 6 * MiB) in qemu_data_areas(qemu_image)
    assert got["virtual_size"] == qemu_info(qemu_image)["virtual-size"]
    assert got["data_bytes"] == sum(r["length"] for r in got["runs"]) == 4096 + 512 + 512 + MiB
    assert got["run_count"] == 4
    assert got["data_percent"] == round(100 * got["data_bytes"] / got["virtual_size"], 4)


@pytest.mark.parametrize("name", ["qemu-dynamic-20m.vhd", "windows-dynamic-10m.vhd", "windows-fixed-10m.vhd"])
@pytest.mark.parametrize("granularity", [512, 4096, 65536])
def test_fixtures_agree_with_qemu_at_every_granularity(name, granularity, tmp_path):
    got = map_json(FIXTURES / name, "--granularity", str(granularity))
    assert got["granularity"] == granularity
    runs = [(r["start"], r["start"] + r["length"]) for r in got["runs"]]
    assert runs == expected_runs(FIXTURES / name, tmp_path, granularity)
    assert all(s % granularity == 0 for s, _ in runs)


def test_differencing_chain_map(tmp_path):
    """qemu-img cannot read differencing images: the oracle is the chain's known content."""
    got = map_json(FIXTURES / "chain-child2.vhd")
    runs = [(r["start"], r["start"] + r["length"]) for r in got["runs"]]
    assert runs == page_runs(make_fixtures.chain_expected()["chain-child2.vhd"])


def test_table_output(qemu_image):
    result = vhdtool("map", str(qemu_image))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["start", "length"]
    assert lines[1].split() == ["0", "4,096"] and lines[4].split() == ["31,457,280", "1,048,576"]
    assert lines[5] == "4 runs, 1,053,696 bytes (1.00 MiB) of data: 3.14% of the 33,562,624 bytes (32.01 MiB) virtual disk"


@pytest.mark.parametrize("args,message", [
    (["--granularity", "1000"], "granularity 1,000 is not a positive multiple of 512 bytes"),
    (["--granularity", "lots"], "'lots' is not a size"),
])
def test_bad_granularity_is_a_usage_error(args, message):
    result = vhdtool("map", str(FIXTURES / "qemu-dynamic-20m.vhd"), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("vhdtool: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_not_a_vhd_exits_2():
    result = vhdtool("map", str(FIXTURES / "raw-3m.img"))
    assert result.returncode == 2 and "not a VHD" in result.stderr and result.stderr.count("\n") == 1


def test_damaged_image_is_refused_before_any_output(tmp_path):
    """map read a block cut off by truncation as zeros and reported it as a hole (issue 13)."""
    data = (FIXTURES / "qemu-dynamic-20m.vhd").read_bytes()
    src = tmp_path / "cut.vhd"
    src.write_bytes(data[: len(data) - 512 - 4096])
    result = vhdtool("map", str(src))
    assert result.returncode == 2 and result.stdout == ""
    assert "bat.block-truncated" in result.stderr and result.stderr.count("\n") == 1
