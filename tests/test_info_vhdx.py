"""`vhdtool info X.vhdx`: every header, region, metadata field and the BAT by block state, as
qemu-img and libvhdi read them; a differencing file's locator and chain; a damaged file shows
what could be decoded, its findings, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import make_vhdx_fixtures as mk
import pytest
from oracles import run, vhdi_info, vhdi_sector_size

from vhdtool.format.vhdx.header import HEADER_OFFSETS
from vhdtool.workflows.info import describe

MiB = 1024 * 1024
QEMU_MADE = mk.QEMU_MADE


def current(data: dict) -> dict:
    (header,) = [h for h in data["headers"] if h["current"]]
    return header


@pytest.mark.parametrize("name", QEMU_MADE)
def test_sizes_guids_and_blocks_agree_with_qemu_img_and_vhdiinfo(vhdx, name, cli):
    path = vhdx[name]
    outcome = cli("info", str(path), "--json")
    assert outcome.code == 0, outcome.err
    data = json.loads(outcome.out)
    qemu = json.loads(run("qemu-img", "info", "--output=json", "-f", "vhdx", str(path)).stdout)
    libvhdi = vhdi_info(path)
    meta = data["metadata"]
    assert data["type"] == "vhdx" and data["virtual_size"] == meta["virtual_disk_size"]
    assert data["virtual_size"] == qemu["virtual-size"] == libvhdi["virtual_size"]
    assert meta["block_size"] == qemu["cluster-size"]
    assert meta["logical_sector_size"] == vhdi_sector_size(path) == 512
    assert current(data)["data_write_guid"] == libvhdi["unique_id"]  # libvhdi's identifier
    assert data["subformat"] == libvhdi["type"].lower()
    assert data["file_size"] == path.stat().st_size and data["allocated_on_disk"] == qemu["actual-size"]
    assert "findings" not in data and data["exit_code"] == 0
    states = data["bat"]["block_states"]
    assert (states["fully_present"], states["zero"]) == FULL_AND_ZERO[name]
    assert sum(states.values()) == data["bat"]["blocks"] == -(-data["virtual_size"] // meta["block_size"])


# qemu-img create marks every block ZERO (block_state_zero=on); each block qemu-io wrote to
# (write -z included: qemu 7.2 vhdx writes those zeros) is FULLY_PRESENT: see make_vhdx_fixtures.
FULL_AND_ZERO = {"qemu-1m": (6, 14), "qemu-8m": (3, 2), "qemu-32m": (2, 1), "qemu-fixed": (1, 3)}


@pytest.mark.parametrize("name", QEMU_MADE)
def test_every_block_qemu_reads_data_from_is_fully_present(vhdx, name, tmp_path):
    """qemu-img 7.2 maps a VHDX as all data, so its raw conversion is the oracle: a block with
    any non-zero byte must hold data in the file."""
    raw = tmp_path / "disk.raw"
    run("qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(vhdx[name]), str(raw))
    data = describe(str(vhdx[name]))
    bs, content = data["metadata"]["block_size"], raw.read_bytes()
    nonzero = sum(any(content[i : i + bs]) for i in range(0, len(content), bs))
    assert 0 < nonzero <= data["bat"]["block_states"]["fully_present"]
    assert "findings" not in data and data["exit_code"] == 0


def test_every_structure_of_a_differencing_file_and_its_chain(vhdx, cli):
    data = json.loads(cli("info", str(vhdx["diff-child"]), "--json").out)
    assert data["subformat"] == "differencing" and data["creator"] == "vhdtool test writer"
    assert [(h["number"], h["offset"], h["valid"], h["current"], h["sequence_number"]) for h in data["headers"]] == [
        (1, HEADER_OFFSETS[0], True, False, 1), (2, HEADER_OFFSETS[1], True, True, 2)]
    header = current(data)
    assert header["data_write_guid"] == str(mk.guid(0xC1))
    assert header["log_guid"] == "00000000-0000-0000-0000-000000000000" and header["version"] == 1
    assert header["log_offset"] == mk.LOG_OFFSET and header["log_length"] == MiB
    assert [(r["name"], r["file_offset"], r["length"], r["required"]) for r in data["regions"]] == [
        ("BAT", mk.BAT_OFFSET, MiB, True), ("metadata", mk.METADATA_OFFSET, MiB, True)]
    meta = data["metadata"]
    assert (meta["block_size"], meta["has_parent"], meta["leave_blocks_allocated"]) == (MiB, True, False)
    assert (meta["logical_sector_size"], meta["physical_sector_size"]) == (512, 4096)
    assert meta["parent_locator"] == {
        "locator_type": "B04AEFB7-D19E-4A81-B789-25B8E9445913",
        "entries": {"parent_linkage": f"{{{mk.guid(0xBA)}}}", "relative_path": ".\\diff-base.vhdx",
                    "absolute_win32_path": "C:\\vms\\diff-base.vhdx"},
    }
    # The fixture: block 1 full, blocks 2 and 5 partial (one sector bitmap), 6 blocks in all.
    assert data["bat"]["block_states"] == {"not_present": 3, "undefined": 0, "zero": 0, "unmapped": 0,
                                           "fully_present": 1, "partially_present": 2}
    assert data["bat"]["sector_bitmaps_present"] == 1 and data["bat"]["chunk_ratio"] == 4096
    (parent,) = data["parent_chain"]
    assert parent["path"] == str(vhdx["diff-base"]) and parent["subformat"] == "dynamic"
    assert current(parent)["data_write_guid"] == str(mk.guid(0xBA))
    assert data["partitions"]["scheme"] is None


def test_text_output_shows_each_structure(vhdx, cli):
    out = cli("info", str(vhdx["diff-child"])).out
    for line in ["Header 1 at 65,536 (valid)", "Header 2 at 131,072 (current)", "Region table",
                 "  logical sector size     512", "    relative_path: .\\diff-base.vhdx",
                 "  blocks by state         3 not_present, 1 fully_present, 2 partially_present",
                 f"Parent {vhdx['diff-base']}", "  partition table: none"]:
        assert any(shown.startswith(line) for shown in out.splitlines()), line


def test_4096_byte_sectors_and_a_replayed_log_are_shown(vhdx):
    data = describe(str(vhdx["own-4k"]))
    assert data["metadata"]["logical_sector_size"] == 4096 == vhdi_sector_size(vhdx["own-4k"])
    assert [f["code"] for f in data["findings"]] == ["vhdx.logical-sector-4k"] and data["exit_code"] == 0
    logged = describe(str(vhdx["pending-log"]))
    assert logged["log_replayed_entries"] == 2
    assert current(logged)["log_guid"] != "00000000-0000-0000-0000-000000000000"
    assert [f["code"] for f in logged["findings"]] == ["vhdx.log-replayed"]


def damaged(src: Path, tmp_path: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    edit(data)
    out = tmp_path / "damaged.vhdx"
    out.write_bytes(data)
    return out


def test_one_damaged_header_is_shown_and_the_other_used(vhdx, cli, tmp_path):
    path = damaged(vhdx["diff-base"], tmp_path, lambda d: d.__setitem__(HEADER_OFFSETS[1] + 40, d[HEADER_OFFSETS[1] + 40] ^ 1))
    outcome = cli("info", str(path), "--json")
    data = json.loads(outcome.out)
    assert outcome.code == 0
    assert [(h["valid"], h["current"]) for h in data["headers"]] == [(True, True), (False, False)]
    assert [(f["code"], f["severity"], f["header"]) for f in data["findings"]] == [("vhdx.header-checksum", "warning", 2)]


def test_damaged_file_shows_what_could_be_decoded_exit_1(vhdx, cli, tmp_path):
    """A BAT entry past the end: headers, regions and metadata are shown, the BAT is not."""
    def past_eof(d):
        at = mk.BAT_OFFSET + 2 * 8
        d[at : at + 8] = mk.batfmt.build_entry(6, 64 * MiB).to_bytes(8, "little")

    path = damaged(vhdx["diff-base"], tmp_path, past_eof)
    outcome = cli("info", str(path), "--json")
    data = json.loads(outcome.out)
    assert outcome.code == 1 and outcome.err == ""
    assert data["metadata"]["virtual_disk_size"] == 6 * MiB and len(data["headers"]) == 2
    assert data["bat"]["block_states"]["fully_present"] == 4  # decoded, then refused
    assert "partitions" not in data  # the disk cannot be read
    (finding,) = data["findings"]
    assert finding["code"] == "vhdx.bat-past-eof" and finding["severity"] == "error"
    assert finding["message"].startswith("BAT entry 2 points to offset 67108864, past the end")
    text = cli("info", str(path))
    assert text.code == 1 and "Traceback" not in text.out + text.err
    assert any("vhdx.bat-past-eof" in line for line in text.out.splitlines())


def test_both_headers_damaged_shows_the_identifier_and_headers(vhdx, cli, tmp_path):
    def both(d):
        for offset in HEADER_OFFSETS:
            d[offset + 40] ^= 1

    data = json.loads(cli("info", str(damaged(vhdx["diff-base"], tmp_path, both)), "--json").out)
    assert data["creator"] == "vhdtool test writer" and data["exit_code"] == 1
    assert [h["valid"] for h in data["headers"]] == [False, False] and "regions" not in data
    assert [f["code"] for f in data["findings"]] == ["vhdx.header-checksum", "vhdx.header-checksum",
                                                     "vhdx.headers-invalid"]


@pytest.mark.parametrize("fmt, head", [("qcow2", b"QFI\xfb"), ("vmdk", b"KDMV")])
def test_formats_vhdtool_does_not_read_are_named_with_the_convert_command(tmp_path, cli, fmt, head):
    path = tmp_path / f"disk.{fmt}"
    path.write_bytes(head + bytes(4096))
    outcome = cli("info", str(path))
    assert outcome.code == 2 and outcome.out == ""
    (line,) = outcome.err.splitlines()
    assert f"is a {fmt} image" in line and f"qemu-img convert -f {fmt} -O vpc -o subformat=fixed,force_size=on" in line
