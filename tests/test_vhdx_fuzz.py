"""Fuzzing VHDX: mutated headers, region tables, metadata, parent locators, BATs, bitmaps and
logs of real images. Opening, reading and mapping must either work or raise VhdError: never
another exception, never a hang (hypothesis deadline), never unbounded memory.
Checksums are resealed in half the examples, so mutations reach the rules behind them.

CI runs 100 examples per test; set VHDTOOL_FUZZ_EXAMPLES=100000 for the long run.
"""

from __future__ import annotations

import tracemalloc
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import make_vhdx_fixtures as mk
from helpers import fuzz_settings
from vhdtool.disk.sniff import open_vhdx
from vhdtool.errors import VhdError

FUZZ = fuzz_settings(timedelta(seconds=3))
KiB, MiB = 1024, 1024 * 1024
READ_LIMIT = 8 * MiB  # a mutated size may claim terabytes: read what a real image would hold
MEMORY_LIMIT = 64 * MiB
# (start, length) of the structures in the writer's layout (make_vhdx_fixtures).
AREAS = [
    (0, 16),  # file identifier
    (64 * KiB, 80),  # header 1
    (128 * KiB, 80),  # header 2
    (192 * KiB, 16 + 3 * 32),  # region table 1
    (mk.LOG_OFFSET, 3 * 4096),  # log entries
    (mk.METADATA_OFFSET, 32 + 6 * 32),  # metadata table
    (mk.METADATA_OFFSET + 64 * KiB, 6 * 4096),  # metadata items, parent locator last
    (mk.BAT_OFFSET, 64),  # BAT
]
INTERESTING = [0, 1, 2, 3, 6, 7, 0xFF, 0x80, 0x7F]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    made = mk.make_all(tmp_path_factory.mktemp("fuzz-src"))
    return {name: made[name].read_bytes() for name in ("diff-child", "pending-log", "own-4k")} | {
        "base": made["diff-base"].read_bytes()
    }


mutation = st.tuples(
    st.sampled_from(AREAS),
    st.integers(0, 1 << 16),
    st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)),
)


@FUZZ
@given(
    name=st.sampled_from(["diff-child", "pending-log", "own-4k"]),
    mutations=st.lists(mutation, min_size=1, max_size=6),
    wide=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(AREAS),
            st.integers(0, 1 << 16),
            st.sampled_from([0, 1 << 20, 1 << 31, (1 << 64) - 1]),
        ),
    ),
    reseal=st.booleans(),
)
def test_mutated_vhdx_gives_only_vhderror(images, tmp_path, name, mutations, wide, reseal):
    data = bytearray(images[name])
    for (start, length), at, value in mutations:
        data[start + at % length] = value
    if wide is not None:  # a whole u64 field: sizes, offsets and counts far out of range
        (start, length), at, value = wide
        at = start + (at % length) // 8 * 8
        data[at : at + 8] = value.to_bytes(8, "little")
    if reseal:
        data[:MiB] = mk.reseal(data[:MiB])
    path = tmp_path / "diff-child.vhdx"
    path.write_bytes(data)
    (tmp_path / "diff-base.vhdx").write_bytes(images["base"])
    tracemalloc.start()
    try:
        with open_vhdx(path) as disk:
            disk.read(0, min(disk.virtual_size, READ_LIMIT))
            for _ in zip(range(10_000), disk.allocated()):
                pass
    except VhdError as exc:
        assert "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT
