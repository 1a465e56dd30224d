"""Fuzzing: mutated footers, headers, BATs, bitmaps and locators of real images.

Every parse must either succeed or raise the project's own error (VhdError): never another
exception, never a hang (hypothesis deadline), never unbounded memory (tracemalloc peak).
Checksums are resealed in half the examples, so mutations reach the rules behind them.

CI runs 100 examples per test; set VHDTOOL_FUZZ_EXAMPLES=100000 for the long run.
"""

from __future__ import annotations

import os
import tracemalloc
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from construct import Array, Bytes, Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import make_corpus
from vhdtool.workflows.check import CODES, Target, check_image
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import CHECKSUM_OFFSET, FOOTER_SIZE, Footer, footer_checksum, parse_footer
from vhdtool.format.vhd.header import HEADER_CHECKSUM_OFFSET, HEADER_SIZE, DynamicHeader, header_checksum, parse_header
from vhdtool.disk.image import open_disk
from vhdtool.workflows.info import describe
from vhdtool.disk.writer import ParentRef, SparseImageWriter

EXAMPLES = int(os.environ.get("VHDTOOL_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
MEMORY_LIMIT = 32 * 1024 * 1024  # the images are a few KiB: anything near this is a leak of trust
SIZE = 64 * 1024
BLOCK = 4096


def flatten(struct: Struct, base: int = 0) -> list[tuple[int, int, bool]]:
    """(offset, width, is_bytes) of every leaf field of a fixed-size construct."""
    out, offset = [], base
    for sc in struct.subcons:
        inner = sc.subcon
        if isinstance(inner, Struct):
            out += flatten(inner, offset)
        elif isinstance(inner, Array):
            for i in range(inner.count):
                out += flatten(inner.subcon, offset + i * inner.subcon.sizeof())
        else:
            out.append((offset, inner.sizeof(), isinstance(inner, Bytes)))
        offset += inner.sizeof()
    return out


FOOTER_FIELDS, HEADER_FIELDS = flatten(Footer), flatten(DynamicHeader)


@dataclass(frozen=True)
class Base:
    """A good image and where its structures are."""

    raw: bytes
    name: str
    footers: tuple[int, ...]  # offsets of footer copies
    header: int | None
    bat: int | None
    entries: int


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def bases(workdir) -> dict[str, Base]:
    """Small images: fixed; dynamic with 4 KiB blocks; a differencing child of parent.vhd."""
    fixed, dynamic, child = workdir / "fixed.vhd", workdir / "parent.vhd", workdir / "child.vhd"
    make_corpus.fixed(fixed, SIZE)
    make_small_dynamic(dynamic, None)
    parent_uuid = parse_footer(dynamic.read_bytes()[-FOOTER_SIZE:]).unique_id
    make_small_dynamic(child, ParentRef(
        unique_id=parent_uuid, timestamp=make_corpus.T0, name="parent.vhd",
        locators=[(b"W2ru", ".\\parent.vhd".encode("utf-16-le"), 512),
                  (b"MacX", b"file://./parent.vhd", 1)]))
    out = {"fixed": Base(fixed.read_bytes(), "fixed-m.vhd", (SIZE,), None, None, 0)}
    for kind, path in (("dynamic", dynamic), ("child", child)):
        raw = path.read_bytes()
        out[kind] = Base(raw, "child-m.vhd" if kind == "child" else "dynamic-m.vhd",
                         (0, len(raw) - FOOTER_SIZE), FOOTER_SIZE, FOOTER_SIZE + HEADER_SIZE, SIZE // BLOCK)
    return out


def make_small_dynamic(path: Path, parent: ParentRef | None) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        writer = SparseImageWriter(fd, SIZE, block_size=BLOCK, parent=parent)
        for offset in (0, 3 * BLOCK + 512, 9 * BLOCK):
            writer.write(offset, b"\xa5" * 1024)
        writer.finish()
    finally:
        os.close(fd)


def interesting(width: int, file_len: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * width)) - 1
    specials = [0, 1, 2, 3, 5, 511, 512, 513, 1024, 1536, 2048, 4096, 1 << 16, 1 << 21, (1 << 31) - 1,
                1 << 31, (1 << 32) - 1, 1 << 32, file_len, file_len - 512, file_len // 512, 1 << 63, top]
    return st.one_of(st.sampled_from([v & top for v in specials]), st.integers(0, top))


@st.composite
def mutated(draw, base: Base) -> bytes:
    """`base` with field writes, BAT entries, byte flips, resealed checksums, truncation."""
    data = bytearray(base.raw)
    n = len(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["footer", "header", "bat", "byte"]))
        if kind == "footer" or (kind == "header" and base.header is None):
            where = draw(st.sampled_from(base.footers))
            offset, width, is_bytes = draw(st.sampled_from(FOOTER_FIELDS))
        elif kind == "header":
            where = base.header
            offset, width, is_bytes = draw(st.sampled_from(HEADER_FIELDS))
        elif kind == "bat" and base.bat is not None:
            where, offset, width, is_bytes = base.bat, 4 * draw(st.integers(0, base.entries + 1)), 4, False
        else:
            where, width, is_bytes = 0, 1, True
            offset = draw(st.one_of(st.integers(0, min(n, 8192) - 1), st.integers(0, n - 1)))
        value = draw(st.binary(min_size=width, max_size=width)) if is_bytes else \
            draw(interesting(width, n)).to_bytes(width, "big")
        data[where + offset : where + offset + width] = value
    if draw(st.booleans()):
        reseal(data, base)
    cut = draw(st.one_of(st.just(n), st.integers(0, n), st.integers(n, n + 4096)))
    return bytes(data[:cut].ljust(cut, b"\0"))


def reseal(data: bytearray, base: Base) -> None:
    """Recompute the checksums so that the mutation is seen by the rules behind them."""
    for at in base.footers:
        raw = bytes(data[at : at + FOOTER_SIZE])
        data[at + CHECKSUM_OFFSET : at + CHECKSUM_OFFSET + 4] = footer_checksum(raw).to_bytes(4, "big")
    if base.header is not None:
        at = base.header
        raw = bytes(data[at : at + HEADER_SIZE])
        data[at + HEADER_CHECKSUM_OFFSET : at + HEADER_CHECKSUM_OFFSET + 4] = header_checksum(raw).to_bytes(4, "big")


def read_everything(path: Path) -> None:
    """What the commands do with an image: open it (with its chain), read, map, describe."""
    try:
        with open_disk(path) as disk:
            size = disk.virtual_size
            if size >= 512:
                disk.read(0, 512)
                disk.read(size - 512, 512)
            list(disk.allocated())
    except VhdError:
        pass
    try:
        describe(str(path))
    except VhdError:
        pass


def within_memory(action) -> None:
    tracemalloc.start()
    try:
        action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"peak {peak:,} bytes"


def exercise(workdir: Path, base: Base, raw: bytes, target: str) -> None:
    path = workdir / base.name
    path.write_bytes(raw)

    def run() -> None:
        report = check_image(path, target)
        assert report.exit_code in (0, 1, 2)
        assert all(code in CODES for code in report.codes)
        read_everything(path)

    within_memory(run)


@pytest.mark.parametrize("kind", ["fixed", "dynamic", "child"])
@FUZZ
@given(data=st.data())
def test_mutated_images(bases, workdir, kind, data):
    base = bases[kind]
    raw = data.draw(mutated(base), label="image")
    target = data.draw(st.sampled_from([t.value for t in Target]), label="target")
    exercise(workdir, base, raw, target)


@FUZZ
@given(st.binary(max_size=2048))
def test_structure_parsers_take_any_bytes(raw):
    for parse in (parse_footer, parse_header):
        try:
            parse(raw)
        except VhdError:
            pass


def test_base_images_are_sound(bases, workdir):
    """The fuzz starts from images that pass: every finding comes from a mutation."""
    for base in bases.values():
        path = workdir / base.name
        path.write_bytes(base.raw)
        assert check_image(path, Target.GENERIC).codes in ([], ["parent.chain"])
