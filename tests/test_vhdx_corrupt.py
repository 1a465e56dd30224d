"""Damaged VHDX files: what can still be read is read (with a finding), the rest is refused
with one line naming the file and the rule (a VhdxError with a stable code)."""

from __future__ import annotations

import shutil
from pathlib import Path
from uuid import UUID

import make_vhdx_fixtures as mk
import numpy as np
import pytest

from vhdtool.disk.sniff import open_vhdx
from vhdtool.disk.vhdx_errors import VhdxError
from vhdtool.errors import VhdError
from vhdtool.format.vhdx.header import HEADER_OFFSETS, Header
from vhdtool.format.vhdx.log import LogEntryHeader
from vhdtool.format.vhdx.metadata import VIRTUAL_DISK_SIZE, MetadataEntry
from vhdtool.format.vhdx.region import REGION_TABLE_OFFSETS, RegionEntry

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    blocks = {
        0: (mk.State.FULLY_PRESENT, mk.pattern(1, MiB)),
        2: (mk.State.FULLY_PRESENT, mk.pattern(2, MiB)),
    }
    return mk.write_vhdx(
        tmp_path_factory.mktemp("clean") / "clean.vhdx", mk.VhdxSpec(size=4 * MiB, blocks=blocks)
    )


def damaged(clean: Path, tmp_path: Path, edit, *, reseal: bool = True) -> Path:
    """A copy of `clean` with `edit(bytearray of the whole file)` applied (CRCs resealed)."""
    data = bytearray(clean.read_bytes())
    edit(data)
    if reseal:
        data[: 1 * MiB] = mk.reseal(data[: 1 * MiB])
    out = tmp_path / "damaged.vhdx"
    out.write_bytes(data)
    return out


def refused(path: Path) -> VhdxError:
    with pytest.raises(VhdxError) as err:
        open_vhdx(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    return err.value


def test_one_bad_header_checksum_uses_the_other(clean, tmp_path):
    want = open_vhdx(clean).read(0, 4 * MiB)
    for number, offset in enumerate(HEADER_OFFSETS, 1):
        path = damaged(
            clean, tmp_path, lambda d, offset=offset: d.__setitem__(offset + 40, d[offset + 40] ^ 1), reseal=False
        )
        with open_vhdx(path) as disk:
            assert [(f.code, f.numbers["header"]) for f in disk.findings] == [
                ("vhdx.header-checksum", number)
            ]
            assert (
                disk.current_header.sequence_number == 3 - number
            )  # the writer gives header 2 seq 2
            assert disk.read(0, 4 * MiB) == want


def test_the_header_with_the_larger_sequence_number_is_current(clean, tmp_path):
    def older_header_2(d):
        at = HEADER_OFFSETS[1] + 8
        d[at : at + 8] = (0).to_bytes(8, "little")

    with open_vhdx(damaged(clean, tmp_path, older_header_2)) as disk:
        assert disk.current_header.sequence_number == 1 and disk.headers[1].sequence_number == 0


def test_both_headers_bad_is_refused(clean, tmp_path):
    def both(d):
        for offset in HEADER_OFFSETS:
            d[offset + 40] ^= 1

    assert refused(damaged(clean, tmp_path, both, reseal=False)).code == "vhdx.headers-invalid"


def test_bad_first_region_table_uses_the_second(clean, tmp_path):
    path = damaged(
        clean, tmp_path, lambda d: d.__setitem__(REGION_TABLE_OFFSETS[0] + 20, 0xEE), reseal=False
    )
    with open_vhdx(path) as disk:
        assert [f.code for f in disk.findings] == ["vhdx.region-checksum"]
        assert disk.read(0, MiB) == mk.pattern(1, MiB)


def bat_entry(d: bytearray, index: int, value: int) -> None:
    at = mk.BAT_OFFSET + index * 8
    d[at : at + 8] = value.to_bytes(8, "little")


@pytest.mark.parametrize("offset", [64 * MiB, 2**64 - MiB])  # the last wraps offset + block size to 0
def test_bat_entry_past_eof_is_refused(clean, tmp_path, offset):
    path = damaged(clean, tmp_path, lambda d: bat_entry(d, 2, mk.batfmt.build_entry(6, offset)))
    err = refused(path)
    assert err.code == "vhdx.bat-past-eof" and "BAT entry 2" in str(err)


@pytest.mark.parametrize("offset,code", [
    (mk.LOG_OFFSET, "vhdx.bat-in-region"),  # the log
    (mk.METADATA_OFFSET + MiB // 2, "vhdx.bat-in-region"),  # the metadata region
    (mk.BAT_OFFSET, "vhdx.bat-in-region"),  # the BAT itself
    (None, "vhdx.bat-overlap"),  # block 0's data
])
def test_a_block_on_top_of_a_region_or_another_block_is_refused(clean, tmp_path, offset, code):
    """It would read other structures' bytes as data (QEMU refuses them too)."""
    def edit(d):
        block0 = int.from_bytes(d[mk.BAT_OFFSET : mk.BAT_OFFSET + 8], "little") >> 20 << 20
        bat_entry(d, 2, mk.batfmt.build_entry(6, block0 if offset is None else offset))

    err = refused(damaged(clean, tmp_path, edit))
    assert err.code == code and "BAT entr" in str(err) and "2" in str(err)


def test_a_clean_files_log_fields_past_2_64_do_not_stop_a_read(clean, tmp_path):
    """A log with no GUID is never replayed; its offset, checked against the blocks, may run
    past 2^64 (an OverflowError once)."""
    def far_log(d):
        for offset in HEADER_OFFSETS:
            head = Header.parse(bytes(d[offset : offset + 4096]))
            head.log_offset = 2**64 - MiB
            d[offset : offset + 4096] = Header.build(head)

    with open_vhdx(clean) as disk:
        want = disk.read(0, 4 * MiB)
    with open_vhdx(damaged(clean, tmp_path, far_log)) as disk:
        assert disk.read(0, 4 * MiB) == want


def test_regions_on_top_of_each_other_are_refused(clean, tmp_path):
    def bat_on_log(d):
        at = REGION_TABLE_OFFSETS[0] + 16 + 16  # entry 0 (BAT): its offset
        d[at : at + 8] = mk.LOG_OFFSET.to_bytes(8, "little")

    err = refused(damaged(clean, tmp_path, bat_on_log))
    assert err.code == "vhdx.region-overlap" and "log" in str(err) and "BAT region" in str(err)


def test_bat_entry_in_header_section_and_bad_states_are_refused(clean, tmp_path):
    assert (
        refused(damaged(clean, tmp_path, lambda d: bat_entry(d, 0, 6))).code == "vhdx.bat-in-header"
    )
    # PARTIALLY_PRESENT in a file without a parent, and the reserved state 4
    for state in (7, 4):
        path = damaged(
            clean, tmp_path, lambda d, state=state: bat_entry(d, 1, mk.batfmt.build_entry(state, 4 * MiB))
        )
        assert refused(path).code == "vhdx.bat-state"


def test_partial_block_without_its_sector_bitmap_is_refused(tmp_path):
    flags = np.ones(MiB // 512, dtype=np.uint8)
    spec = mk.VhdxSpec(
        size=2 * MiB,
        blocks={0: (mk.State.PARTIALLY_PRESENT, mk.pattern(1, MiB))},
        present={0: flags},
        parent={"parent_linkage": f"{{{mk.guid(0xBA)}}}", "relative_path": ".\\p.vhdx"},
    )
    child = mk.write_vhdx(tmp_path / "c.vhdx", spec)
    ratio = mk.batfmt.chunk_ratio(512, MiB)
    damaged_child = damaged(child, tmp_path, lambda d: bat_entry(d, ratio, 0))
    assert refused(damaged_child).code == "vhdx.bitmap-missing"


def add_region(guid: UUID, required: bool):
    def edit(d):
        at = REGION_TABLE_OFFSETS[0]
        count = int.from_bytes(d[at + 8 : at + 12], "little")
        entry = RegionEntry.build(
            dict(
                guid=guid,
                file_offset=2 * MiB,
                length=MiB,
                flags=dict(reserved=0, required=required),
            )
        )
        d[at + 16 + count * 32 : at + 48 + count * 32] = entry
        d[at + 8 : at + 12] = (count + 1).to_bytes(4, "little")

    return edit


def test_unknown_required_region_is_refused_and_optional_one_ignored(clean, tmp_path):
    guid = UUID("12345678-1234-5678-9abc-def012345678")
    err = refused(damaged(clean, tmp_path, add_region(guid, True)))
    assert err.code == "vhdx.region-unknown-required" and str(guid) in str(err)
    with open_vhdx(damaged(clean, tmp_path, add_region(guid, False))) as disk:
        assert [f.code for f in disk.findings] == ["vhdx.region-unknown"]


def metadata_entry(index: int, **changes):
    def edit(d):
        at = mk.METADATA_OFFSET + 32 + index * 32
        entry = MetadataEntry.parse(bytes(d[at : at + 32]))
        entry.update(changes)
        d[at : at + 32] = MetadataEntry.build(entry)

    return edit


def test_metadata_item_out_of_bounds_is_refused(clean, tmp_path):
    err = refused(damaged(clean, tmp_path, metadata_entry(1, offset=MiB - 4)))
    assert err.code == "vhdx.metadata-out-of-bounds" and "virtual disk size" in str(err)


@pytest.mark.parametrize("item", [0, 1, 3, 4])  # parameters, virtual disk size, sector sizes
def test_an_item_too_short_to_parse_is_refused_and_check_reports_it(clean, tmp_path, item):
    """An item of length 0 decodes nothing: refused, and check's report (it shows what was
    read before the refusal) has no disk type or size rather than a traceback."""
    from vhdtool.disk.findings import Report, Target
    from vhdtool.disk.vhdx import examine_vhdx
    from vhdtool.workflows.check.vhdx_rules import vhdx_report

    path = damaged(clean, tmp_path, metadata_entry(item, length=0))
    assert refused(path).code == "vhdx.malformed"
    disk, refusal = examine_vhdx(path)
    with disk:
        report = vhdx_report(Report(path, Target.AZURE), disk, refusal)
    assert [f.code for f in report.findings] == ["vhdx.malformed"] and report.virtual_size is None


def test_duplicate_and_oversized_metadata_items_are_refused(clean, tmp_path):
    path = damaged(clean, tmp_path, metadata_entry(0, item_id=VIRTUAL_DISK_SIZE))
    assert refused(path).code == "vhdx.metadata-duplicate"
    path = damaged(clean, tmp_path, metadata_entry(4, length=MiB + 4096))
    assert refused(path).code == "vhdx.metadata-out-of-bounds"  # the region is 1 MiB

    def larger_region(d):
        bat_at = REGION_TABLE_OFFSETS[0] + 16 + 16  # entry 0 (BAT): its offset, moved to the end
        d[bat_at : bat_at + 8] = len(d).to_bytes(8, "little")
        d.extend(d[mk.BAT_OFFSET : mk.BAT_OFFSET + MiB])
        at = REGION_TABLE_OFFSETS[0] + 16 + 32 + 24  # entry 1 (metadata): its length
        d[at : at + 4] = (3 * MiB).to_bytes(4, "little")
        metadata_entry(4, length=MiB + 4096)(d)

    assert refused(damaged(clean, tmp_path, larger_region)).code == "vhdx.metadata-item-size"


def test_missing_and_unknown_required_metadata_are_refused(clean, tmp_path):
    unknown = UUID("87654321-1234-5678-9abc-def012345678")
    assert (
        refused(damaged(clean, tmp_path, metadata_entry(0, item_id=unknown))).code
        == "vhdx.metadata-unknown-required"
    )
    flags = dict(reserved=0, is_required=False, is_virtual_disk=False, is_user=True)
    path = damaged(clean, tmp_path, metadata_entry(0, item_id=unknown, flags=flags))
    assert refused(path).code == "vhdx.metadata-missing"  # the file parameters are gone


@pytest.mark.parametrize(
    ("item", "value", "code"),
    [
        (0, 3 * MiB, "vhdx.block-size"),  # not a power of two
        (0, 512 * MiB, "vhdx.block-size"),  # over 256 MiB
        (1, 1000, "vhdx.virtual-size"),  # not a multiple of the sector size
        (3, 1000, "vhdx.sector-size"),  # logical
        (4, 0, "vhdx.sector-size"),  # physical
    ],
)
def test_bad_parameters_are_refused(clean, tmp_path, item, value, code):
    """The writer lays the items out one 4 KiB page each from 64 KiB into the region:
    parameters, virtual disk size, page 83, logical and physical sector size."""

    def edit(d):
        at = mk.METADATA_OFFSET + 64 * 1024 + item * 4096
        d[at : at + 4] = value.to_bytes(4, "little")

    assert refused(damaged(clean, tmp_path, edit)).code == code


def dirty(log_offset: int = mk.LOG_OFFSET, flushed: int | None = None, write_at: int = mk.BAT_OFFSET):
    """Headers naming a log of one entry, writing the BAT's first sector at `write_at`;
    `flushed` overrides its FlushedFileOffset."""

    def edit(d):
        guid = mk.LOG_GUID
        entry = bytearray(
            mk.log_entry(
                7,
                guid,
                [(write_at, bytes(d[mk.BAT_OFFSET : mk.BAT_OFFSET + 4096]))],
                0,
                len(d),
            )
        )
        if flushed is not None:
            head = LogEntryHeader.parse(bytes(entry[:64]))
            head.flushed_file_offset = flushed
            entry[:64] = LogEntryHeader.build(head)
            entry[4:8] = mk.vhdx_checksum(bytes(entry)).to_bytes(4, "little")
        d[mk.LOG_OFFSET : mk.LOG_OFFSET + len(entry)] = entry
        for offset in HEADER_OFFSETS:
            head = Header.parse(bytes(d[offset : offset + 4096]))
            head.log_guid, head.log_offset = guid, log_offset
            d[offset : offset + 4096] = Header.build(head)

    return edit


def test_dirty_log_that_cannot_be_replayed_is_refused_with_the_way_out(clean, tmp_path):
    for edit in (dirty(log_offset=64 * MiB), dirty(log_offset=MiB + 4096), dirty(flushed=1 << 40),
                 dirty(write_at=2**64 - 4096)):  # the file would grow to 2^64 bytes
        err = refused(damaged(clean, tmp_path, edit))
        assert err.code == "vhdx.log-not-replayable"
        assert "Hyper-V" in str(err) and "qemu-img check -r all" in str(err)


def test_log_entry_with_a_bad_checksum_is_not_replayed(clean, tmp_path):
    def edit(d):
        dirty()(d)
        d[mk.LOG_OFFSET + 4096 + 100] ^= 0xFF  # inside the entry's data sector

    with open_vhdx(damaged(clean, tmp_path, edit)) as disk:
        assert disk.overlay is None and disk.findings == []


def test_not_a_vhdx_and_truncated_files(clean, tmp_path, fixtures_dir):
    assert refused(fixtures_dir / "qemu-dynamic-20m.vhd").code == "vhdx.not-vhdx"
    short = tmp_path / "short.vhdx"
    short.write_bytes(clean.read_bytes()[: 300 * 1024])
    assert refused(short).code == "vhdx.truncated"
    cut = tmp_path / "cut.vhdx"
    cut.write_bytes(clean.read_bytes()[: 3 * MiB + 4096])
    assert refused(cut).code in ("vhdx.region-past-eof", "vhdx.bat-past-eof")


def test_source_is_opened_read_only(clean, tmp_path):
    path = tmp_path / "ro.vhdx"
    shutil.copy(clean, path)
    path.chmod(0o444)
    with open_vhdx(path) as disk:
        assert disk.read(0, MiB) == mk.pattern(1, MiB)
    assert isinstance(VhdxError("x", "y"), VhdError)


def test_a_large_bat_is_checked_without_table_sized_copies(tmp_path):
    """A 4 TiB disk of 1 MiB blocks has a 32 MiB table; opening it, its info and its map hold
    the table once plus byte-sized arrays per entry (a 64 TiB one peaked at 3.9 GiB)."""
    import subprocess
    import tracemalloc

    from vhdtool.workflows.info_vhdx import bat_summary

    path = tmp_path / "big.vhdx"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", "-o", "subformat=dynamic,block_size=1M",
                    str(path), "4T"], check=True)
    table = (4 * 1024 * 1024 + 1024) * 8
    tracemalloc.start()
    try:
        with open_vhdx(path) as disk:
            assert bat_summary(disk)["blocks"] == 4 * 1024 * 1024 and list(disk.allocated()) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table < peak < 2 * table
