"""Range math: exact results on examples, and properties against a brute-force byte model."""

import os

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from vhdtool import ranges
from vhdtool.ranges import align, clip, cut, data_extents, intersect, merge, shift, total, true_runs, union


def covered(ranges) -> set[int]:
    return {i for s, e in ranges for i in range(s, e)}


def sorted_disjoint(draw_list):
    """Sorted, disjoint, non-touching ranges from a list of (gap, length) pairs."""
    out, pos = [], 0
    for gap, length in draw_list:
        start = pos + gap + 1
        out.append((start, start + length + 1))
        pos = start + length + 1
    return out


layouts = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), max_size=12).map(sorted_disjoint)


def test_existing_helpers_keep_their_behaviour():
    assert list(merge([(0, 5), (5, 9), (3, 4), (12, 12), (20, 30)])) == [(0, 9), (20, 30)]
    assert list(union([(0, 4), (10, 12)], [(2, 6), (12, 14)])) == [(0, 6), (10, 14)]
    assert list(intersect([(0, 10), (20, 30)], [(5, 25)])) == [(5, 10), (20, 25)]
    assert list(clip([(0, 10), (20, 30)], 5, 25)) == [(5, 10), (20, 25)]
    assert list(shift([(1, 2)], 10)) == [(11, 12)]
    assert total([(0, 10), (20, 25)]) == 15
    assert true_runs(np.array([1, 1, 0, 1, 0, 0, 1], dtype=bool), 512, 1024) == [
        (1024, 2048), (2560, 3072), (4096, 4608)]


def test_align_widens_to_pages_and_joins_neighbours():
    assert list(align([(1, 2), (600, 700), (1030, 1100)], 512, 10_000)) == [(0, 1536)]
    assert list(align([(5000, 5001)], 4096, 10_000)) == [(4096, 8192)]
    # the end of the disk is not a page boundary: the last piece stops there
    assert list(align([(9000, 9500)], 4096, 9600)) == [(8192, 9600)]
    assert list(align([(9700, 9800)], 512, 9600)) == []


def test_cut_never_crosses_a_step_boundary():
    assert list(cut([(1, 9), (10, 12)], 4)) == [(1, 4), (4, 8), (8, 9), (10, 12)]
    assert list(cut([(0, 8 << 20)], 4 << 20)) == [(0, 4 << 20), (4 << 20, 8 << 20)]


@given(layouts, st.sampled_from([512, 4096]), st.integers(1, 60_000))
def test_align_is_the_smallest_page_cover(ranges, unit, limit):
    out = list(align(ranges, unit, limit))
    wanted = covered(clip(ranges, 0, limit))
    got = covered(out)
    assert wanted <= got
    # sorted, disjoint, not touching, page-aligned (or ending at the limit)
    for (_, e1), (s2, _) in zip(out, out[1:]):
        assert e1 < s2
    for s, e in out:
        assert s % unit == 0 and (e % unit == 0 or e == limit) and s < e <= limit
        # every page of the output holds some wanted byte: nothing extra is read
        for page in range(s, e, unit):
            assert wanted & set(range(page, min(page + unit, e)))


@given(layouts, st.integers(1, 5000))
def test_cut_pieces_cover_exactly_and_stay_within_steps(ranges, step):
    pieces = list(cut(ranges, step))
    assert covered(pieces) == covered(ranges)
    assert total(pieces) == total(ranges)
    for s, e in pieces:
        assert 0 < e - s <= step and s // step == (e - 1) // step


def test_data_extents_reports_only_written_blocks(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
        f.seek(4 << 20)
        f.write(b"x" * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(data_extents(fd, 0, 16 << 20)) == [(4 << 20, (4 << 20) + 8192)]
        assert list(data_extents(fd, (4 << 20) + 4096, 32 << 20)) == [((4 << 20) + 4096, (4 << 20) + 8192)]
    finally:
        os.close(fd)


@given(st.lists(st.integers(0, 10_000), max_size=40), st.integers(0, 10_000), st.integers(0, 10_000))
def test_sorted_ranges_lookups_equal_a_full_scan(points, a, b):
    edges = sorted(set(points))
    items = list(zip(edges[::2], edges[1::2]))  # sorted, disjoint, non-empty
    index = ranges.SortedRanges(items)
    start, end = min(a, b), max(a, b)
    assert list(index.within(start, end)) == list(ranges.clip(items, start, end))
    inside = [(s, e) for s, e in items if s <= start and end <= e]
    assert index.covers(start, end) == bool(inside)
    assert index.touched(np.array([start]), np.array([end])).tolist() == [any(s < end and start < e for s, e in items)]
