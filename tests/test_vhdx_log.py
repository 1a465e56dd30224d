"""Log replay (MS-VHDX 2.3.3) in memory: where the entries lie in the circular log and which
sequence is active, checked against QEMU's own replay (`qemu-img check -r all` on a copy)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import make_vhdx_fixtures as mk
import pytest
from oracles import run

from vhdtool.disk.vhdx import open_vhdx

MiB, SECTOR = 1024 * 1024, 4096


@pytest.fixture
def clean(tmp_path) -> Path:
    blocks = {0: (mk.State.FULLY_PRESENT, mk.pattern(1, MiB))}
    return mk.write_vhdx(tmp_path / "clean.vhdx", mk.VhdxSpec(size=2 * MiB, blocks=blocks))


def block0(path: Path) -> int:
    with open_vhdx(path) as disk:
        return disk.block_offset(0)


def replayed_by_qemu(path: Path, tmp_path: Path) -> bytes:
    copy = tmp_path / "qemu-replayed.vhdx"
    shutil.copy(path, copy)
    run("qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(copy), check=False)
    out = tmp_path / "qemu.raw"
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(copy), str(out))
    return out.read_bytes()


def read_all(path: Path) -> bytes:
    with open_vhdx(path) as disk:
        assert disk.overlay is not None
        return disk.read(0, disk.virtual_size)


def test_a_sequence_wrapping_around_the_end_of_the_log(clean, tmp_path):
    at = block0(clean)
    a, b = mk.pattern(2, SECTOR), mk.pattern(3, SECTOR)
    # Entry 41 starts in the log's last sector, its data sector wraps to sector 0.
    mk.add_pending_log(clean, [(at, a), (at + 3 * SECTOR, b)], start=mk.LOG_SECTORS - 1)
    before = hashlib.sha256(clean.read_bytes()).digest()
    data = read_all(clean)
    assert data[:SECTOR] == a and data[3 * SECTOR : 4 * SECTOR] == b
    assert data[SECTOR : 3 * SECTOR] == mk.pattern(1, MiB)[SECTOR : 3 * SECTOR]
    assert hashlib.sha256(clean.read_bytes()).digest() == before
    # Not QEMU's replay here: 7.2's vhdx_log_search ranks a run by its FIRST entry's sequence
    # number, so the tail of a wrapped run (entry 42 alone, found first) outranks the whole
    # run (41, 42) and only entry 42 is replayed. The spec's active sequence is the whole run:
    # the head entry's Tail names entry 41.
    copy = replayed_by_qemu(clean, tmp_path)
    assert copy[:SECTOR] == mk.pattern(1, MiB)[:SECTOR] and copy[SECTOR:] == data[SECTOR:]


def test_the_sequence_with_the_highest_number_is_replayed_not_an_older_one(clean, tmp_path):
    at, size = block0(clean), clean.stat().st_size
    stale = mk.log_entry(5, mk.LOG_GUID, [(at + SECTOR, mk.pattern(9, SECTOR))], 100 * SECTOR, size)
    mk.place_log(clean, [(100, stale)])
    mk.add_pending_log(clean, [(at, mk.pattern(2, SECTOR)), (at + 2 * SECTOR, 8192)])
    data = read_all(clean)
    assert data[:SECTOR] == mk.pattern(2, SECTOR)
    assert (
        data[SECTOR : 2 * SECTOR] == mk.pattern(1, MiB)[SECTOR : 2 * SECTOR]
    )  # stale: not applied
    assert data[2 * SECTOR : 4 * SECTOR] == bytes(8192)
    assert data == replayed_by_qemu(clean, tmp_path)


def test_an_entry_of_another_log_guid_is_not_replayed(clean):
    at, size = block0(clean), clean.stat().st_size
    foreign = mk.log_entry(50, mk.guid(0x99), [(at, mk.pattern(9, SECTOR))], 0, size)
    mk.place_log(clean, [(0, foreign)])
    with open_vhdx(clean) as disk:
        assert disk.overlay is None and disk.findings == []
        assert disk.read(0, MiB) == mk.pattern(1, MiB)
