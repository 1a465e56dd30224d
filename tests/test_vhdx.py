"""VHDX reading agrees with qemu-img and libvhdi, byte for byte, on images from both producers
(qemu-img/qemu-io, and the fixture script's own writer for what qemu cannot make)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from uuid import UUID

import make_vhdx_fixtures as mk
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import run, vhdi_info, vhdi_read, vhdi_sector_size

from vhdtool import ranges
from vhdtool.disk.vhdx import open_vhdx
from vhdtool.disk.vhdx_errors import VhdxError
from vhdtool.format.vhdx.bat import HOLDS_DATA, PayloadState

MiB = 1024 * 1024
QEMU_MADE = mk.QEMU_MADE


def read_all(path: Path) -> bytes:
    with open_vhdx(path) as disk:
        return disk.read(0, disk.virtual_size)


def qemu_vhdx_raw(path: Path, tmp: Path) -> bytes:
    out = tmp / (path.stem + ".raw")
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(path), str(out))
    return out.read_bytes()


@pytest.mark.parametrize("name", QEMU_MADE)
def test_qemu_images_read_as_qemu_and_libvhdi_read_them(vhdx, name, tmp_path):
    mine = read_all(vhdx[name])
    assert mine == qemu_vhdx_raw(vhdx[name], tmp_path)
    assert mine == vhdi_read([vhdx[name]])
    assert mine.strip(b"\0")  # the fixtures hold data: equal zeros would prove nothing


@pytest.mark.parametrize("name", QEMU_MADE)
def test_sizes_and_guids_agree_with_qemu_img_info_and_vhdiinfo(vhdx, name):
    qemu = json.loads(
        run("qemu-img", "info", "--output=json", "-f", "vhdx", str(vhdx[name])).stdout
    )
    libvhdi = vhdi_info(vhdx[name])
    with open_vhdx(vhdx[name]) as disk:
        assert disk.virtual_size == qemu["virtual-size"] == libvhdi["virtual_size"]
        assert disk.block_size == qemu["cluster-size"]
        assert disk.logical_sector_size == vhdi_sector_size(vhdx[name]) == 512
        # libvhdi's identifier is the header's data write GUID.
        assert disk.current_header.data_write_guid == UUID(libvhdi["unique_id"])
        assert (
            disk.subformat
            == libvhdi["type"].lower()
            == ("fixed" if name == "qemu-fixed" else "dynamic")
        )
        assert disk.findings == []


def test_block_sizes_of_the_qemu_fixtures(vhdx):
    sizes = {name: open_vhdx(vhdx[name]).block_size for name in ("qemu-1m", "qemu-8m", "qemu-32m")}
    assert sizes == {"qemu-1m": 1 * MiB, "qemu-8m": 8 * MiB, "qemu-32m": 32 * MiB}


@pytest.mark.parametrize("name", QEMU_MADE + ["own-4k", "own-4k-32m", "diff-base", "pending-log"])
def test_allocated_covers_only_present_blocks_and_everything_else_reads_zero(vhdx, name):
    with open_vhdx(vhdx[name]) as disk:
        image = np.frombuffer(disk.read(0, disk.virtual_size), dtype=np.uint8)
        alloc = list(disk.allocated())
        blocks = -(-disk.virtual_size // disk.block_size)
        state = [disk.block_state(b) for b in range(blocks)]
        for start, end in alloc:
            assert 0 <= start < end <= disk.virtual_size
            for block in range(start // disk.block_size, -(-end // disk.block_size)):
                assert state[block] in HOLDS_DATA, (name, block, state[block])
        covered = np.zeros(disk.virtual_size, dtype=bool)
        for start, end in alloc:
            covered[start:end] = True
        assert not image[~covered].any()
        assert covered.any()


def test_zero_unmapped_and_discarded_blocks_are_never_read(vhdx, monkeypatch):
    """qemu-1m has ZERO blocks (qemu's default for new blocks) and a discarded first block."""
    with open_vhdx(vhdx["qemu-1m"]) as disk:
        state = [disk.block_state(b) for b in range(20)]
        assert PayloadState.ZERO in state and PayloadState.FULLY_PRESENT in state
        reads = []
        real = disk.file_readinto
        monkeypatch.setattr(
            disk, "file_readinto", lambda buf, off: (reads.append((off, len(buf))), real(buf, off))
        )
        disk.read(0, disk.virtual_size)
        present = {
            disk.block_offset(b) for b in range(20) if state[b] == PayloadState.FULLY_PRESENT
        }
        assert {off for off, _ in reads} == present


@pytest.mark.parametrize(("name", "block_size"), [("own-4k", 1 * MiB), ("own-4k-32m", 32 * MiB)])
def test_4096_byte_logical_sectors(vhdx, name, block_size):
    path = vhdx[name]
    with open_vhdx(path) as disk:
        assert disk.logical_sector_size == 4096 == vhdi_sector_size(path)
        assert disk.block_size == block_size
        assert disk.chunk_ratio == (1 << 23) * 4096 // block_size
        assert [f.code for f in disk.findings] == ["vhdx.logical-sector-4k"]
        data = disk.read(0, disk.virtual_size)
    assert data == vhdi_read([path]) and data.strip(b"\0")
    # qemu 7.2 cannot open a 4096-byte-sector VHDX at all: libvhdi is the oracle here.
    info = subprocess.run(["qemu-img", "info", "-f", "vhdx", str(path)], capture_output=True)
    assert info.returncode != 0


def test_4096_byte_sector_contents(vhdx):
    data = read_all(vhdx["own-4k"])
    assert data[:5000] == mk.pattern(1, 5000) and data[3 * MiB : 4 * MiB] == mk.pattern(2, MiB)
    assert not data[5000 : 3 * MiB].strip(b"\0") and not data[4 * MiB :].strip(b"\0")


def test_differencing_reads_as_libvhdi_reads_the_chain(vhdx):
    child, base = vhdx["diff-child"], vhdx["diff-base"]
    with open_vhdx(child) as disk:
        assert disk.subformat == "differencing" and vhdi_info(child)["type"] == "differential"
        assert [d.path for d in disk.chain()] == [child, base]
        data = disk.read(0, disk.virtual_size)
        assert disk.block_state(2) == PayloadState.PARTIALLY_PRESENT
    assert data == vhdi_read([child, base])
    base_data = read_all(base)
    assert data[2 * MiB : 3 * MiB] != base_data[2 * MiB : 3 * MiB] != mk.pattern(21, MiB)


def test_differencing_allocated_is_own_sectors_and_the_parents(vhdx):
    flags = np.zeros(MiB // 512, dtype=bool)
    flags[::2] = True
    flags[100:300] = True
    expected = ranges.merge(
        [
            (1 * MiB, 2 * MiB),
            *ranges.true_runs(flags, 512, 2 * MiB),
            *ranges.true_runs(flags[::-1], 512, 5 * MiB),
        ]
    )
    with open_vhdx(vhdx["diff-child"]) as disk:
        own = list(ranges.merge(disk.own_allocated()))
        assert own == list(expected)
        assert list(disk.allocated()) == list(ranges.merge([(0, 4 * MiB), *own]))


def test_zero_and_unmapped_in_a_differencing_file_read_zeros_not_the_parent(vhdx, tmp_path):
    """MS-VHDX 2.5.1.1: ZERO blocks are "defined to be zero" for every file type; NOT_PRESENT
    and UNDEFINED in a differencing file mean the parent. (libvhdi 20210425 reads the parent
    for ZERO too, so it is not the oracle here.)"""
    shutil.copy(vhdx["diff-base"], tmp_path / "diff-base.vhdx")
    spec = mk.VhdxSpec(
        size=6 * MiB,
        blocks={
            0: (PayloadState.ZERO, b""),
            1: (PayloadState.UNMAPPED, b""),
            2: (PayloadState.UNDEFINED, b""),
        },
        parent={"parent_linkage": f"{{{mk.guid(0xBA)}}}", "relative_path": ".\\diff-base.vhdx"},
    )
    child = mk.write_vhdx(tmp_path / "c.vhdx", spec)
    data, base = read_all(child), read_all(tmp_path / "diff-base.vhdx")
    assert data[: 2 * MiB] == bytes(2 * MiB)
    assert data[2 * MiB :] == base[2 * MiB :] and base[: 2 * MiB].strip(b"\0")


def test_parent_found_by_absolute_win32_path_basename_and_checked_by_linkage(vhdx, tmp_path):
    shutil.copy(vhdx["diff-base"], tmp_path / "diff-base.vhdx")
    pairs = {
        "parent_linkage": f"{{{mk.guid(0xBA)}}}",
        "absolute_win32_path": "D:\\vms\\diff-base.vhdx",
    }
    child = mk.write_vhdx(tmp_path / "c.vhdx", mk.VhdxSpec(size=6 * MiB, parent=pairs))
    assert read_all(child) == read_all(vhdx["diff-base"])
    pairs["parent_linkage"] = f"{{{mk.guid(0xBB)}}}"
    mk.write_vhdx(child, mk.VhdxSpec(size=6 * MiB, parent=pairs))
    with pytest.raises(VhdxError) as err:
        open_vhdx(child)
    assert err.value.code == "vhdx.parent-mismatch" and str(child) in str(err.value)


def test_parent_linkage2_is_accepted_and_a_cycle_refused(vhdx, tmp_path):
    shutil.copy(vhdx["diff-base"], tmp_path / "diff-base.vhdx")
    pairs = {
        "parent_linkage": f"{{{mk.guid(0xBB)}}}",
        "parent_linkage2": f"{{{mk.guid(0xBA)}}}",
        "relative_path": ".\\diff-base.vhdx",
    }
    child = mk.write_vhdx(tmp_path / "c.vhdx", mk.VhdxSpec(size=6 * MiB, parent=pairs))
    assert read_all(child) == read_all(vhdx["diff-base"])
    own = {"parent_linkage": f"{{{mk.guid(0xC2)}}}", "relative_path": ".\\c.vhdx"}
    mk.write_vhdx(child, mk.VhdxSpec(size=6 * MiB, parent=own, data_write_guid=mk.guid(0xC2)))
    with pytest.raises(VhdxError) as err:
        open_vhdx(child)
    assert err.value.code == "vhdx.parent-cycle"


def test_missing_parent_and_vhd_parent_are_refused(vhdx, tmp_path, fixtures_dir):
    pairs = {"parent_linkage": f"{{{mk.guid(0xBA)}}}", "relative_path": ".\\gone.vhdx"}
    child = mk.write_vhdx(tmp_path / "c.vhdx", mk.VhdxSpec(size=6 * MiB, parent=pairs))
    with pytest.raises(VhdxError) as err:
        open_vhdx(child)
    assert err.value.code == "vhdx.parent-not-found" and "gone.vhdx" in str(err.value)
    shutil.copy(fixtures_dir / "qemu-dynamic-20m.vhd", tmp_path / "gone.vhdx")
    with pytest.raises(VhdxError) as err:
        open_vhdx(child)
    assert err.value.code == "vhdx.parent-format"


def test_pending_log_is_replayed_in_memory_as_qemu_replays_it(vhdx, tmp_path):
    path = vhdx["pending-log"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with open_vhdx(path) as disk:
        assert [f.code for f in disk.findings] == ["vhdx.log-replayed"]
        assert disk.overlay.entries == 2
        data = disk.read(0, disk.virtual_size)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the source is untouched
    # Block 2 exists only in the logged BAT; block 0 has one logged sector and 8 KiB zeroed.
    assert data[2 * MiB : 3 * MiB] == mk.pattern(31, MiB)
    block0 = bytearray(mk.pattern(30, MiB))
    block0[64 * 1024 : 68 * 1024] = mk.pattern(32, 4096)
    block0[128 * 1024 : 136 * 1024] = bytes(8192)
    assert data[:MiB] == bytes(block0)
    # qemu replays the log only when it may write: on a copy, with `qemu-img check -r all`.
    copy = tmp_path / "replayed.vhdx"
    shutil.copy(path, copy)
    assert (
        subprocess.run(
            ["qemu-img", "info", "-f", "vhdx", str(path)], capture_output=True
        ).returncode
        != 0
    )
    run("qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(copy), check=False)
    assert data == qemu_vhdx_raw(copy, tmp_path) == vhdi_read([copy])


def test_unaligned_reads_equal_slices_of_the_whole(vhdx):
    rng = random.Random(5)
    for name in ("qemu-8m", "diff-child", "own-4k", "pending-log"):
        with open_vhdx(vhdx[name]) as disk:
            whole = disk.read(0, disk.virtual_size)
            for _ in range(40):
                start = rng.randrange(disk.virtual_size)
                length = rng.randrange(min(3 * MiB, disk.virtual_size - start) + 1)
                assert disk.read(start, length) == whole[start : start + length]


@settings(max_examples=12, deadline=None, database=None)
@given(
    block=st.sampled_from(["1M", "8M", "32M"]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write -P 0x%02x", "write -z", "discard"]),
            st.integers(0, 40 * 512 * 2048 - 1),  # offsets within 40 MiB, 512-byte aligned
            st.integers(1, 6 * 2048),  # lengths up to 6 MiB, in sectors
            st.integers(1, 255),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_random_qemu_io_writes_read_as_qemu_reads_them(tmp_path_factory, block, ops):
    tmp = tmp_path_factory.mktemp("random")
    size = 40 * MiB
    cmds = []
    for op, start, sectors, fill in ops:
        start = start // 512 * 512 % size
        length = min(sectors * 512, size - start)
        cmd = op % fill if "%" in op else op
        cmds.append(f"{cmd} {start} {length}")
    path = mk.qemu_vhdx(tmp / "r.vhdx", "40M", block, cmds)
    with open_vhdx(path) as disk:
        mine = disk.read(0, disk.virtual_size)
        covered = np.zeros(disk.virtual_size, dtype=bool)
        for start, end in disk.allocated():
            covered[start:end] = True
    assert mine == qemu_vhdx_raw(path, tmp)
    assert not np.frombuffer(mine, dtype=np.uint8)[~covered].any()  # nothing outside allocated
