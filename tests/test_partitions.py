"""Partition tables made by sfdisk, sgdisk and fdisk, read as Azure will boot them."""

import json
import random
import struct
import subprocess
import zlib

import pytest

import make_partition_fixtures
from oracles import run
from vhdtool.disk.image import open_disk
from vhdtool.errors import VhdError
from vhdtool.disk.partitions import (
    MAX_ENTRY_ARRAY,
    MAX_LOGICAL,
    contradiction,
    generation_findings,
    read_layout,
    render_lines,
    to_dict,
)

MiB = 1024 * 1024
ESP, ROOT_X64 = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_partition_fixtures.make(tmp_path_factory.mktemp("partitions"))


def layout_of(path, sector=None):
    with open_disk(path) as disk:
        if sector:
            disk.logical_sector_size = sector
        return read_layout(disk)


class MemDisk:
    """Any object with virtual_size and read() is a disk to read_layout."""

    def __init__(self, data: bytes, sector: int | None = None):
        self.data, self.virtual_size = bytes(data), len(data)
        if sector:
            self.logical_sector_size = sector

    def read(self, offset, length):
        assert 0 <= offset and offset + length <= self.virtual_size, "read outside the disk"
        return self.data[offset : offset + length]


# name: scheme, generations, os_hint, [(index, type_name, bootable)]
EXPECTED = {
    "mbr-linux": ("mbr", ("V1",), "linux", [(1, "Linux", False), (2, "Linux swap / Solaris", False),
                                            (3, "Extended", False), (5, "Linux LVM", False)]),
    "mbr-windows": ("mbr", ("V1",), "windows", [(1, "HPFS/NTFS/exFAT", True), (2, "HPFS/NTFS/exFAT", False),
                                                (3, "Hidden NTFS WinRE", False)]),
    "gpt-esp-linux": ("gpt", ("V2",), "linux", [(1, "EFI System", False), (2, "Linux root (x86-64)", False),
                                                (3, "Linux swap", False)]),
    "gpt-esp-windows": ("gpt", ("V2",), "windows", [
        (1, "EFI System", False), (2, "Microsoft reserved", False), (3, "Microsoft basic data", False),
        (4, "Windows recovery environment", False)]),
    "gpt-bios-esp-linux": ("gpt", ("V2", "V1"), "linux", [(1, "Linux filesystem", False), (14, "BIOS boot", False),
                                                         (15, "EFI System", False)]),
    "gpt-no-esp": ("gpt", (), "linux", [(1, "Linux filesystem", False), (2, "Linux LVM", False)]),
    "gpt-4k-sectors": ("gpt", ("V2",), "linux", [(1, "EFI System", False), (2, "Linux root (x86-64)", False)]),
    "no-table": (None, (), None, []),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_layout_generation_and_os(images, name):
    scheme, generations, os_hint, parts = EXPECTED[name]
    layout = layout_of(images[name], 4096 if "4k" in name else None)
    assert layout.scheme == scheme and layout.problems == ()
    assert layout.generations == generations and layout.generation == (generations[0] if generations else None)
    assert layout.os_hint == os_hint
    assert [(p.index, p.type_name, p.bootable) for p in layout.partitions] == parts


def sfdisk_json(img):
    return subprocess.run([make_partition_fixtures.tool("sfdisk"), "--json", str(img)], capture_output=True, text=True)


@pytest.mark.parametrize("name", [n for n in EXPECTED if n not in ("no-table", "gpt-4k-sectors")])
def test_agrees_with_sfdisk_json(images, name):
    img = images[name].with_suffix(".img")
    table = json.loads(sfdisk_json(img).stdout)["partitiontable"]
    unit = table["sectorsize"]
    theirs = [(int(p["node"].removeprefix(str(img))), p["start"] * unit, p["size"] * unit,
               p["type"].upper().rjust(2, "0") if table["label"] == "dos" else p["type"],
               p.get("bootable", False), p.get("name", "")) for p in table["partitions"]]
    layout = layout_of(images[name])
    ours = [(p.index, p.start, p.size, p.type.removeprefix("0x").upper() if layout.scheme == "mbr" else p.type,
             p.bootable, p.name) for p in layout.partitions]
    assert {"dos": "mbr", "gpt": "gpt"}[table["label"]] == layout.scheme
    assert ours == theirs


def test_no_table_sfdisk_agrees(images):
    proc = sfdisk_json(images["no-table"].with_suffix(".img"))
    assert proc.returncode != 0 and "does not contain a recognized partition table" in proc.stderr


def test_4k_sectors_as_fdisk_wrote_them(images):
    """fdisk -b 4096 -l: 1 at 256 (256 sectors), 2 at 512 (3328 sectors)."""
    layout = layout_of(images["gpt-4k-sectors"], 4096)
    assert layout.sector_size == 4096
    assert [(p.start, p.size, p.type) for p in layout.partitions] == [
        (256 * 4096, 256 * 4096, ESP), (512 * 4096, 3328 * 4096, ROOT_X64)]
    # A disk of 512-byte sectors still finds it, and says firmware would not.
    seen_as_512 = layout_of(images["gpt-4k-sectors"])
    assert seen_as_512.partitions == layout.partitions
    assert seen_as_512.problems == ("the GPT is laid out for 4096-byte sectors but the disk has 512-byte "
                                    "sectors: firmware reading it as it is finds no GPT",)


def test_rendering(images):
    layout = layout_of(images["gpt-esp-windows"])
    data = to_dict(layout)
    assert json.loads(json.dumps(data)) == data
    assert data["generation"] == "V2" and data["os_hint"] == "windows" and data["scheme"] == "gpt"
    assert data["partitions"][0] == {"index": 1, "start": MiB, "size": 2 * MiB, "type": ESP,
                                     "type_name": "EFI System", "bootable": False, "name": "EFI system partition"}
    lines = render_lines(layout)
    assert lines[0] == "partition table: GPT, 512-byte sectors, 4 partitions"
    assert lines[1] == '    1  start       1,048,576  size 2 MiB  EFI System "EFI system partition"'
    assert lines[-2] == "generation: V2 (GPT with an EFI system partition (1): boots through UEFI (Generation 2))"
    assert lines[-1].startswith("os: windows (partition types say Windows: 2 Microsoft reserved, 3 Microsoft basic")
    assert render_lines(layout_of(images["no-table"]))[0] == "partition table: none"


def test_generation_findings_and_contradictions(images):
    (known,) = generation_findings(layout_of(images["mbr-windows"]))
    assert (known.code, known.severity) == ("partitions.generation", "info")
    assert "--hyper-v-generation V1:" in known.message
    (hybrid,) = generation_findings(layout_of(images["gpt-bios-esp-linux"]))
    assert "--hyper-v-generation V2 (or V1):" in hybrid.message
    for name in ("gpt-no-esp", "no-table"):
        (unknown,) = generation_findings(layout_of(images[name]))
        assert (unknown.code, unknown.severity) == ("partitions.generation-unknown", "warning")
    assert contradiction(layout_of(images["gpt-esp-windows"]), "V1").startswith(
        "--hyper-v-generation V1 contradicts the disk: GPT with an EFI system partition")
    assert contradiction(layout_of(images["gpt-esp-windows"]), "v2") is None
    assert contradiction(layout_of(images["gpt-bios-esp-linux"]), "V1") is None
    assert contradiction(layout_of(images["no-table"]), "V1") is None


# Hostile tables: bytes of a real table with one field changed (header CRC kept valid).

def gpt_disk(images, patch_header=None, patch_entries=None) -> bytearray:
    data = bytearray(images["gpt-esp-windows"].with_suffix(".img").read_bytes())
    header = data[512:1024]
    if patch_entries:
        patch_entries(data)
        struct.pack_into("<I", header, 88, zlib.crc32(data[1024 : 1024 + 128 * 128]))
    if patch_header:
        patch_header(header)
    struct.pack_into("<I", header, 16, 0)
    struct.pack_into("<I", header, 16, zlib.crc32(header[:92]))
    data[512:1024] = header
    return data


def test_huge_entry_count_is_bounded(images):
    data = gpt_disk(images, lambda h: struct.pack_into("<I", h, 80, 0xFFFFFFFF))
    layout = read_layout(MemDisk(data))
    assert [p.index for p in layout.partitions] == [1, 2, 3, 4]  # what the first 1 MiB holds
    assert layout.problems[0] == (f"4,294,967,295 partition entries of 128 bytes: only the first "
                                  f"{MAX_ENTRY_ARRAY // 128:,} (1 MiB) are read")
    assert "partition entry array: CRC-32 mismatch" in layout.problems


@pytest.mark.parametrize("entry_size", [0, 64, 200, 1 << 31])
def test_bad_entry_size_is_reported(images, entry_size):
    data = gpt_disk(images, lambda h: struct.pack_into("<I", h, 84, entry_size))
    layout = read_layout(MemDisk(data))
    assert layout.scheme is None and layout.generation is None
    assert f"partition entry size {entry_size:,} is not 128 * 2**n up to 4096" in layout.problems[-1]


def test_entry_array_past_the_disk(images):
    data = gpt_disk(images, lambda h: struct.pack_into("<Q", h, 72, 2**60))
    layout = read_layout(MemDisk(data))
    assert layout.scheme is None
    assert any(f"the partition entry array at LBA {2**60:,} ends past the disk" in p for p in layout.problems)


def test_partition_past_the_end_and_inverted(images):
    def patch(data):
        struct.pack_into("<QQ", data, 1024 + 32, 100, 2**40)  # entry 1: LBA 100 .. 2**40
        struct.pack_into("<QQ", data, 1024 + 128 + 32, 500, 400)  # entry 2 ends before it starts

    layout = read_layout(MemDisk(gpt_disk(images, patch_entries=patch)))
    assert [p.index for p in layout.partitions] == [1, 3, 4]
    assert layout.problems == (
        "partition 2 ends (LBA 400) before it starts (LBA 500)",
        f"partition 1 ends at byte {(2**40 + 1) * 512:,}, past the disk's end ({16 * MiB:,})",
    )


def test_damaged_primary_header_uses_the_backup(images):
    data = bytearray(images["gpt-esp-windows"].with_suffix(".img").read_bytes())
    data[512 + 40] ^= 0xFF  # first usable LBA: the header CRC no longer holds
    layout = read_layout(MemDisk(data))
    assert layout.scheme == "gpt" and len(layout.partitions) == 4 and layout.generation == "V2"
    assert layout.problems == ("GPT header at LBA 1 (512-byte sectors): CRC-32 mismatch",
                               "the primary GPT header is damaged: read the backup")


def test_ebr_chain_loop_and_length_are_bounded():
    mbr = bytearray(512)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"", 0x05, b"", 1, 2**20)  # extended at LBA 1
    mbr[510:] = b"\x55\xaa"
    ebr = bytearray(512)
    struct.pack_into("<B3sB3sII", ebr, 446, 0, b"", 0x83, b"", 1, 8)  # logical at EBR + 1
    struct.pack_into("<B3sB3sII", ebr, 462, 0, b"", 0x05, b"", 0, 8)  # next EBR: itself
    ebr[510:] = b"\x55\xaa"
    layout = read_layout(MemDisk(mbr + ebr + bytes(8 * 512)))
    assert [p.index for p in layout.partitions] == [1, 5]
    assert "the extended boot record chain loops back to sector 1" in layout.problems
    # A chain longer than the bound: EBR k at LBA k, each pointing to the next.
    chain = bytearray(mbr)
    for k in range(1, MAX_LOGICAL + 3):
        ebr = bytearray(512)
        struct.pack_into("<B3sB3sII", ebr, 446, 0, b"", 0x83, b"", 0, 1)
        struct.pack_into("<B3sB3sII", ebr, 462, 0, b"", 0x05, b"", k, 1)
        ebr[510:] = b"\x55\xaa"
        chain += ebr
    layout = read_layout(MemDisk(chain))
    assert len(layout.partitions) == 1 + MAX_LOGICAL
    assert f"more than {MAX_LOGICAL} extended boot records: the rest are not read" in layout.problems
    # Empty EBRs count too: the chain is bounded by reads, not by partitions found.
    for k in range(1, MAX_LOGICAL + 3):
        chain[k * 512 + 446 + 4] = 0  # logical record's type: empty
    layout = read_layout(MemDisk(chain))
    assert len(layout.partitions) == 1
    assert f"more than {MAX_LOGICAL} extended boot records: the rest are not read" in layout.problems


def test_garbage_never_raises(images):
    rng = random.Random(16)
    real = images["gpt-esp-windows"].with_suffix(".img").read_bytes()[: 64 * 1024]
    for _ in range(300):
        data = bytearray(real)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(0, 512 + 1024 + 128 * 8)] = rng.randrange(256)
        data[510:512] = b"\x55\xaa"
        for sector in (None, 4096):
            layout = read_layout(MemDisk(data[: rng.choice([511, 600, 4096, len(data)])], sector))
            assert json.loads(json.dumps(to_dict(layout)))["scheme"] in ("mbr", "gpt", None)
            assert render_lines(layout) and len(generation_findings(layout)) == 1


@pytest.mark.parametrize("name", ["gpt-esp-windows", "mbr-linux"])
def test_dynamic_vhd_reads_the_same(images, name, tmp_path):
    """Through the dynamic reader (BAT, bitmaps) the table is the one sfdisk/sgdisk wrote."""
    out = tmp_path / "dynamic.vhd"
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on",
        str(images[name].with_suffix(".img")), str(out))
    with open_disk(out) as disk:
        assert disk.kind == "dynamic"
        assert read_layout(disk) == layout_of(images[name])


def test_a_read_the_disk_refuses_is_a_problem_not_a_traceback(images):
    class Damaged(MemDisk):
        def read(self, offset, length):
            if offset >= 1024:  # e.g. a dynamic image whose block holding the entries is truncated
                raise VhdError("block 0 is truncated", "d.vhd")
            return super().read(offset, length)

    layout = read_layout(Damaged(images["gpt-esp-windows"].with_suffix(".img").read_bytes()))
    assert layout.scheme is None and layout.generation is None
    assert layout.problems[-1] == ("GPT with 4096-byte sectors: cannot read 4,096 bytes at offset 4,096: "
                                   "block 0 is truncated")
    assert ("GPT with 512-byte sectors: cannot read 16,384 bytes at offset 1,024: block 0 is truncated"
            in layout.problems)
