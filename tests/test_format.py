"""The format layer: exact round trips on real structures, checksums, CHS, bitmaps."""

from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, strategies as st

from vhdtool.format.vhd.bat import bitmap_bytes, bitmap_sectors, build_bat, build_bitmap, parse_bat
from vhdtool.format.vhd.footer import build_footer, footer_checksum, parse_footer
from vhdtool.format.vhd.geometry import MAX_CHS_SECTORS, Chs, chs_for_size
from vhdtool.format.vhd.header import build_header, header_checksum, parse_header
from vhdtool.format.vhd.timestamp import from_datetime, to_datetime
from conftest import FIXTURES

VHDS = sorted(FIXTURES.glob("*.vhd"))


@pytest.mark.parametrize("path", VHDS, ids=lambda p: p.name)
def test_footer_round_trips_and_checksums(path):
    data = path.read_bytes()
    raw = data[-512:] if data[-512:-504] == b"conectix" else data[-511:] + b"\0"
    footer = parse_footer(raw)
    assert build_footer(footer) == raw
    assert footer_checksum(raw) == footer.checksum
    if footer.disk_type != 2:
        head = data[:512]
        assert build_footer(parse_footer(head)) == head
        header_raw = data[footer.data_offset : footer.data_offset + 1024]
        header = parse_header(header_raw)
        assert build_header(header) == header_raw
        assert header_checksum(header_raw) == header.checksum


def test_checksum_known_value():
    # qemu-img 7.2 wrote this 20 MiB dynamic footer; its stored checksum is the oracle.
    raw = (FIXTURES / "qemu-dynamic-20m.vhd").read_bytes()[:512]
    assert footer_checksum(raw) == int.from_bytes(raw[64:68], "big")
    flipped = raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]
    assert footer_checksum(flipped) == footer_checksum(raw) - 1


@pytest.mark.parametrize(
    "size, chs",
    [
        (5 * 1024**3, Chs(10402, 16, 63)),  # spec example: 544 sectors short
        (20 * 1024**2, Chs(602, 4, 17)),
        (1024**3, Chs(2080, 16, 63)),
        (136_365_211_648, Chs(65278, 16, 255)),  # 127 GiB
        (2 * 1024**4, Chs(65535, 16, 255)),  # capped
    ],
)
def test_chs_spec_values(size, chs):
    assert chs_for_size(size) == chs


def test_chs_matches_qemu_rounding():
    # qemu-img create -f vpc -o subformat=fixed X 1G gives 1,073,995,776 bytes: a CHS size.
    assert chs_for_size(1_073_995_776).capacity == 1_073_995_776


@given(st.integers(min_value=512, max_value=4 * 1024**4))
def test_chs_never_exceeds_size(size):
    chs = chs_for_size(size)
    assert chs.capacity <= min(size, MAX_CHS_SECTORS * 512)
    assert chs.heads <= 16 and chs.sectors_per_track <= 255 and chs.cylinders <= 65535


def test_timestamps():
    assert to_datetime(0) == datetime(2000, 1, 1, tzinfo=timezone.utc)
    moment = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert from_datetime(moment) == 757_382_400
    assert to_datetime(757_382_400) == moment


def test_bitmap_is_msb_first():
    flags = np.zeros(4096, dtype=bool)
    flags[0] = flags[9] = True
    raw = build_bitmap(flags, 2 * 1024 * 1024)
    assert len(raw) == 512 == bitmap_bytes(2 * 1024 * 1024)
    assert raw[:2] == bytes([0x80, 0x40]) and not any(raw[2:])
    assert np.array_equal(bitmap_sectors(raw, 4096), flags)


def test_bat_padding_and_parse():
    bat = np.array([4, 0xFFFFFFFF, 1234], dtype=np.uint32)
    raw = build_bat(bat)
    assert len(raw) == 512 and raw[:12] == bytes.fromhex("00000004ffffffff000004d2")
    assert raw[12:] == b"\xff" * 500  # QEMU and Hyper-V pad with 0xFF
    assert list(parse_bat(raw, 3)) == [4, 0xFFFFFFFF, 1234]
