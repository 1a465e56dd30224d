"""The virtual-disk reader agrees with qemu-img and libvhdi on every fixture."""

import fcntl
import os
import shutil
import uuid

import numpy as np
import pytest

import make_fixtures
from conftest import FIXTURES
from oracles import qemu_info, qemu_raw, vhdi_info, vhdi_read
from vhdtool.errors import FormatError
from vhdtool.disk.image import open_disk
from vhdtool.format.vhd.footer import qemu_7_2_size
from vhdtool.ranges import merge

VHDS = sorted(FIXTURES.glob("*.vhd"))
# libvhdi 20210425 cannot open 511-byte footers (libvhd and qemu can).
NOT_LIBVHDI = {"virtualpc-short-footer.vhd"}
# Different readers read different bytes here, by design (see make_fixtures.py).
QEMU_IGNORES_BITMAPS = {"dynamic-stale-under-clear-bits.vhd"}
QEMU_NO_DIFFERENCING = {"chain-child1.vhd", "chain-child2.vhd"}


@pytest.mark.parametrize("path", VHDS, ids=lambda p: p.name)
def test_sizes_type_uuid_agree_with_oracles(path):
    with open_disk(path) as disk:
        qemu_size = qemu_info(path)["virtual-size"]
        # Our prediction of qemu 7.2's CHS rule is exact on every image...
        assert qemu_7_2_size(disk.footer) == qemu_size
        # ...and qemu agrees with the footer except where its CHS rule applies.
        if path.name != "azure-wa-fixed-4m.vhd":
            assert disk.virtual_size == qemu_size
        else:
            assert (disk.virtual_size, qemu_size) == (4_194_304, 4_177_920)
        if path.name in NOT_LIBVHDI:
            return
        vhdi = vhdi_info(path)
        assert vhdi["virtual_size"] == disk.virtual_size
        assert vhdi["type"] == {"differencing": "differential"}.get(disk.kind, disk.kind)
        assert vhdi["unique_id"] == str(uuid.UUID(bytes=disk.footer.unique_id))


@pytest.mark.parametrize(
    "path", [p for p in VHDS if p.name not in QEMU_IGNORES_BITMAPS | QEMU_NO_DIFFERENCING],
    ids=lambda p: p.name,
)
def test_content_equals_qemu_img_convert(path, tmp_path):
    with open_disk(path) as disk:
        ours = disk.read(0, disk.virtual_size)
    expected = qemu_raw(path, tmp_path / "out.raw")
    n = min(len(expected), len(ours))  # the "wa" image: qemu reads CHS, fewer bytes
    assert ours[:n] == expected[:n] and not any(ours[n:])


@pytest.mark.parametrize(
    "name", ["dynamic-stale-under-clear-bits.vhd", "chain-base.vhd", "chain-child1.vhd"]
)
def test_content_equals_libvhdi(name):
    """Clear bitmap bits read as zeros (dynamic) or from the parent (differencing)."""
    with open_disk(FIXTURES / name) as disk:
        ours = disk.read(0, disk.virtual_size)
        assert ours == vhdi_read([d.path for d in disk.chain()])
    if name.startswith("dynamic-stale"):
        assert ours[65536 : 65536 + 4096] == bytes(4096)  # stale 0xEE bytes under clear bits


@pytest.mark.parametrize("name", list(make_fixtures.CHAIN_WRITES))
def test_chain_content_equals_ground_truth(name):
    """Sector-granular bitmaps, which libvhdi misreads, checked against the generator's writes."""
    with open_disk(FIXTURES / name) as disk:
        assert disk.read(0, disk.virtual_size) == make_fixtures.chain_expected()[name]


@pytest.mark.parametrize("path", VHDS, ids=lambda p: p.name)
def test_allocated_ranges_cover_all_data(path):
    with open_disk(path) as disk:
        data = np.frombuffer(disk.read(0, disk.virtual_size), dtype=np.uint8)
        mask = np.zeros(len(data), dtype=bool)
        spans = list(disk.allocated())
        assert spans == list(merge(spans)) and all(0 <= s < e <= disk.virtual_size for s, e in spans)
        for start, end in spans:
            mask[start:end] = True
        assert not data[~mask].any()
        assert mask.sum() < disk.virtual_size  # holes were found, not everything


def test_unaligned_reads_match_whole_read():
    with open_disk(FIXTURES / "chain-child2.vhd") as disk:
        whole = disk.read(0, disk.virtual_size)
        for offset, length in [(1, 1), (511, 2), (2 * 1024 * 1024 - 700, 1400), (4 * 1024 * 1024 + 4000, 9000)]:
            assert disk.read(offset, length) == whole[offset : offset + length]


def copy_chain(tmp_path, names):
    for name in names:
        shutil.copy(FIXTURES / name, tmp_path / name)


def test_missing_parent_is_reported(tmp_path):
    copy_chain(tmp_path, ["chain-child1.vhd"])
    with pytest.raises(FormatError, match=r"\(parent.missing\).*parent image not found.*W2ku 'C:\\VMs.*vhdtool check"):
        open_disk(tmp_path / "chain-child1.vhd")


def test_parent_uuid_mismatch_is_reported(tmp_path):
    copy_chain(tmp_path, ["chain-child1.vhd"])
    shutil.copy(FIXTURES / "windows-dynamic-10m.vhd", tmp_path / "chain-base.vhd")
    with pytest.raises(FormatError, match="does not match: its UUID differs"):
        open_disk(tmp_path / "chain-child1.vhd")


def test_parent_found_by_header_name_alone(tmp_path):
    """Windows stores C:\\VMs\\chain-base.vhd: its basename next to the child is found."""
    copy_chain(tmp_path, ["chain-base.vhd", "chain-child1.vhd", "chain-child2.vhd"])
    with open_disk(tmp_path / "chain-child2.vhd") as disk:
        assert [d.path.name for d in disk.chain()] == ["chain-child2.vhd", "chain-child1.vhd", "chain-base.vhd"]


def test_source_is_opened_read_only(tmp_path):
    copy_chain(tmp_path, ["chain-base.vhd", "chain-child1.vhd"])
    for p in tmp_path.iterdir():
        p.chmod(0o444)
    with open_disk(tmp_path / "chain-child1.vhd") as disk:
        for d in disk.chain():
            assert fcntl.fcntl(d.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY


def test_writer_misuse_is_a_vhd_error(tmp_path):
    """Every failure is a VhdError (the writer raised ValueError, a traceback at the CLI)."""
    from vhdtool.disk.writer import SparseImageWriter
    from vhdtool.errors import VhdError

    fd = os.open(tmp_path / "w.vhd", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        writer = SparseImageWriter(fd, 1024 * 1024)
        with pytest.raises(VhdError, match="sector aligned"):
            writer.write(100, b"x" * 512)
        with pytest.raises(VhdError, match="past the end"):
            writer.write(1024 * 1024, b"x" * 512)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["windows-fixed-10m.vhd", "qemu-dynamic-20m.vhd"])
def test_a_source_cut_short_while_read_is_an_error_not_zeros(tmp_path, name):
    """The file shrinks after it was opened (another program truncates it): reading the
    part that is gone fails, naming the file, in a plain read and in the engine."""
    from vhdtool.engine.pipeline import scan
    from vhdtool.errors import VhdError

    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    with open_disk(path) as disk:
        cut = (max(end for _, end in disk.allocated()) - 1) // 512 * 512  # inside the last data
        if disk.kind == "dynamic":
            cut = disk.block_entry(int(np.flatnonzero(disk.bat != 0xFFFFFFFF)[-1])) * 512 + 1024
        os.truncate(path, cut)
        with pytest.raises(VhdError, match="cut short while being read") as read:
            disk.read(0, disk.virtual_size)
        assert str(read.value).startswith(f"{path}: ")
        with pytest.raises(VhdError, match="cut short while being read"):
            for _ in scan(disk):
                pass


def test_a_read_error_names_the_file(cli):
    """os.pread's errors name no file: /proc/self/mem fails with EIO at offset 0."""
    for command in ("info", "check", "map"):
        outcome = cli(command, "/proc/self/mem")
        assert outcome.code == 2 and outcome.err == "vhdtool: error: /proc/self/mem: Input/output error\n"
