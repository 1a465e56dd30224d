"""`vhdtool convert`: same content as the oracles, sparse, atomic, fresh footers."""

import os
import uuid

import pytest

import make_fixtures
from conftest import FIXTURES
from oracles import qemu_info, run, vhdi_info, vhdi_read, vhdtool
from helpers import content
from vhdtool.disk.image import open_disk

MiB = 1024 * 1024
VHDS = sorted(FIXTURES.glob("*.vhd"))
QEMU_READS_SAME = [p for p in VHDS if not p.name.startswith(("chain-child", "dynamic-stale", "azure-wa"))]


def qemu_compare(a, b, fmt_a="vpc", fmt_b="vpc"):
    return run("qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b), check=False)


def nonzero_bytes(data: bytes) -> int:
    return sum(512 for i in range(0, len(data), 512) if any(data[i : i + 512]))


@pytest.mark.parametrize("to", ["fixed", "dynamic"])
@pytest.mark.parametrize("src", QEMU_READS_SAME, ids=lambda p: p.name)
def test_qemu_img_compare_says_identical(tmp_path, src, to):
    out = tmp_path / "out.vhd"
    proc = vhdtool("convert", str(src), str(out), "--to", to)
    assert proc.returncode == 0, proc.stderr
    assert qemu_compare(src, out).returncode == 0
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == content(src).__len__()
    assert vhdi_info(out)["type"] == to


@pytest.mark.parametrize("name", ["chain-child1.vhd", "chain-child2.vhd", "dynamic-stale-under-clear-bits.vhd"])
def test_differencing_and_bitmaps_resolved(tmp_path, name):
    out = tmp_path / "out.vhd"
    vhdtool("convert", str(FIXTURES / name), str(out), "--to", "fixed", check=True)
    expected = make_fixtures.chain_expected().get(name) or content(FIXTURES / name)
    assert content(out) == expected
    assert vhdi_read([out]) == expected  # an independent reader sees the same bytes


def test_outputs_allocate_only_data(tmp_path):
    src = FIXTURES / "chain-child2.vhd"
    data = make_fixtures.chain_expected()["chain-child2.vhd"]
    for to, overhead in (("fixed", 8192), ("dynamic", 3 * 512 + 2048 + 16384), ("raw", 0)):
        out = tmp_path / f"out.{to}"
        vhdtool("convert", str(src), str(out), "--to", to, check=True)
        # Filesystem blocks are 4 KiB: each non-zero run may round up to one block per end.
        assert out.stat().st_blocks * 512 <= nonzero_bytes(data) + 8 * 4096 + overhead


def test_fresh_footer_new_uuid_unless_kept(tmp_path):
    src = FIXTURES / "qemu-dynamic-20m.vhd"
    with open_disk(src) as disk:
        src_uuid = disk.footer.unique_id
    vhdtool("convert", str(src), str(tmp_path / "a.vhd"), "--to", "fixed", check=True)
    vhdtool("convert", str(src), str(tmp_path / "b.vhd"), "--to", "fixed", "--keep-uuid", check=True)
    with open_disk(tmp_path / "a.vhd") as a, open_disk(tmp_path / "b.vhd") as b:
        assert a.footer.unique_id != src_uuid and b.footer.unique_id == src_uuid
        assert (a.footer.disk_type, a.footer.data_offset) == (2, 2**64 - 1)
        assert a.footer.creator_application == b"win " and a.footer.current_size == 20_994_048
    assert vhdi_info(tmp_path / "b.vhd")["unique_id"] == str(uuid.UUID(bytes=src_uuid))


def test_round_trips(tmp_path):
    fixed, dyn, back = tmp_path / "f.vhd", tmp_path / "d.vhd", tmp_path / "f2.vhd"
    vhdtool("convert", str(FIXTURES / "windows-fixed-10m.vhd"), str(dyn), "--to", "dynamic", check=True)
    vhdtool("convert", str(dyn), str(back), "--to", "fixed", check=True)
    assert content(back) == content(FIXTURES / "windows-fixed-10m.vhd")
    raw = FIXTURES / "raw-3m.img"
    vhdtool("convert", str(raw), str(fixed), "--to", "fixed", check=True)  # raw by its .img name
    vhdtool("convert", str(fixed), str(tmp_path / "r.img"), "--to", "raw", check=True)
    assert (tmp_path / "r.img").read_bytes() == raw.read_bytes()
    assert fixed.stat().st_size == raw.stat().st_size + 512
    assert qemu_compare(raw, fixed, "raw", "vpc").returncode == 0


def test_raw_needs_a_raw_name_or_from_raw(tmp_path):
    src = tmp_path / "disk.bin"
    src.write_bytes(os.urandom(4096))
    proc = vhdtool("convert", str(src), str(tmp_path / "o.vhd"), "--to", "fixed")
    assert proc.returncode == 2 and "not a VHD" in proc.stderr
    assert vhdtool("convert", str(src), str(tmp_path / "o.vhd"), "--to", "fixed", "--from", "raw").returncode == 0
    assert content(tmp_path / "o.vhd")[:4096] == src.read_bytes()


def test_bad_inputs_leave_nothing(tmp_path):
    child = tmp_path / "chain-child1.vhd"
    child.write_bytes((FIXTURES / "chain-child1.vhd").read_bytes())  # parent not beside it
    damaged = tmp_path / "damaged.vhd"
    raw = bytearray((FIXTURES / "windows-dynamic-10m.vhd").read_bytes())
    raw[512 + 36] ^= 0x01  # dynamic header checksum
    damaged.write_bytes(raw)
    existing = tmp_path / "exists.vhd"
    existing.write_bytes(b"precious")
    cases = [
        (child, tmp_path / "o1.vhd", "parent image not found"),
        (damaged, tmp_path / "o2.vhd", "damaged (header.checksum): dynamic header checksum"),
        (FIXTURES / "windows-fixed-10m.vhd", existing, "already exists (use --force"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for src, dest, message in cases:
        proc = vhdtool("convert", str(src), str(dest), "--to", "fixed")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert existing.read_bytes() == b"precious"


def test_full_disk_leaves_no_partial_output(tmp_path):
    """A 1 MiB tmpfs cannot hold the 1.1 MiB of data: clear error, nothing left behind."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt), check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        proc = vhdtool("convert", str(FIXTURES / "qemu-dynamic-20m.vhd"), str(mnt / "o.vhd"), "--to", "fixed")
        assert proc.returncode == 2 and "No space left on device" in proc.stderr
        assert list(mnt.iterdir()) == []
    finally:
        run("umount", str(mnt), check=False)


def test_force_to_a_new_name_and_over_an_old_one(tmp_path):
    out = tmp_path / "o.vhd"
    for _ in range(2):  # the first run has nothing to replace, the second replaces it
        proc = vhdtool("convert", str(FIXTURES / "windows-fixed-10m.vhd"), str(out), "--to", "fixed", "--force")
        assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["o.vhd"]
    assert content(out) == content(FIXTURES / "windows-fixed-10m.vhd")


@pytest.mark.parametrize("to", ["fixed", "dynamic"])
def test_raw_source_of_a_partial_last_sector(tmp_path, to):
    """A raw image whose length is no multiple of 512: the output's last sector is zero-padded."""
    src = tmp_path / "odd.raw"
    data = os.urandom(1000)
    src.write_bytes(data)
    out = tmp_path / "out.vhd"
    proc = vhdtool("convert", str(src), str(out), "--to", to)
    assert proc.returncode == 0, proc.stderr
    assert content(out) == data + bytes(24)
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == 1024


def test_dynamic_output_over_the_vhd_limit_is_refused(tmp_path):
    src = tmp_path / "huge.raw"
    with open(src, "wb") as f:
        f.truncate(2040 * 1024**3 + 512)  # a hole: one sector over 2040 GiB
    proc = vhdtool("convert", str(src), str(tmp_path / "out.vhd"), "--to", "dynamic")
    assert proc.returncode == 2 and "a dynamic VHD holds at most" in proc.stderr
    assert not (tmp_path / "out.vhd").exists()


def test_truncated_dynamic_image_is_refused_not_zero_filled(tmp_path):
    """Issue 13: cut inside its last data block, the image converted with exit 0 and the lost
    sectors became zeros. Now refused, naming check's findings; qemu-img refuses it too."""
    data = (FIXTURES / "qemu-dynamic-20m.vhd").read_bytes()
    src = tmp_path / "cut.vhd"
    src.write_bytes(data[: len(data) - 512 - 4096])
    out = tmp_path / "out"
    out.mkdir()
    for to in ("fixed", "dynamic"):
        proc = vhdtool("convert", str(src), str(out / "o.vhd"), "--to", to)
        assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
        assert "(footer.tail-missing, bat.block-truncated)" in proc.stderr
        assert f"run: vhdtool check {src}" in proc.stderr
    assert list(out.iterdir()) == []
    assert run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(src), str(out / "q.raw"),
               check=False).returncode != 0


@pytest.mark.parametrize("block_size,qemu_agrees", [(512, False), (2048, False), (4096, True)])
def test_blocks_below_4k_are_valid_but_qemu_misreads_them_and_both_commands_say_so(cli, tmp_path, block_size,
                                                                                   qemu_agrees):
    """QEMU block/vpc.c sizes a block's bitmap as 0 bytes below 4 KiB and reads it as data:
    convert warns, check reports qemu.small-block, and qemu-img really reads other bytes."""
    import json

    from oracles import qemu_raw

    out = tmp_path / "small.vhd"
    done = cli("convert", str(FIXTURES / "qemu-dynamic-20m.vhd"), str(out), "--to", "dynamic",
               "--block-size", str(block_size), "--json")
    assert done.code == 0
    warned = any("qemu-img" in w for w in json.loads(done.out)["warnings"])
    found = [f["code"] for f in json.loads(cli("check", str(out), "--target", "generic", "--json").out)["findings"]]
    assert warned == ("qemu.small-block" in found) == (not qemu_agrees)
    with open_disk(out) as disk, open_disk(FIXTURES / "qemu-dynamic-20m.vhd") as source:
        assert disk.read(0, disk.virtual_size) == source.read(0, source.virtual_size)
        ours = disk.read(0, disk.virtual_size)
    assert (qemu_raw(out, tmp_path / "q.raw")[: len(ours)] == ours) == qemu_agrees
