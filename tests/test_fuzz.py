"""Fuzzing: mutated footers, headers, BATs, bitmaps and locators of real images.

Every parse must either succeed or raise the project's own error (VhdError): never another
exception, never a hang (hypothesis deadline), never unbounded memory (tracemalloc peak).
Checksums are resealed in half the examples, so mutations reach the rules behind them.

CI runs 100 examples per test; set VHDTOOL_FUZZ_EXAMPLES=100000 for the long run.

The command-line fuzz runs mutants through info, check, map and convert, in one child process
(its peak RSS is measured): exit codes only 0/1/2, no traceback, no hang, nothing left after a
refusal, and convert never succeeds on an image whose check reports a finding that changes
what the disk reads. VHDTOOL_FUZZ_CLI sets how many mutants (default 60; 60 mutants of the old reader gave 14 failures).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import time
import traceback
import tracemalloc
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from construct import Array, Bytes, Struct
from hypothesis import given
from hypothesis import strategies as st

import make_corpus
from helpers import fuzz_settings
from vhdtool.workflows.check import CODES, Target, check_image
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import CHECKSUM_OFFSET, FOOTER_SIZE, Footer, footer_checksum, parse_footer
from vhdtool.format.vhd.header import HEADER_CHECKSUM_OFFSET, HEADER_SIZE, DynamicHeader, header_checksum, parse_header
from vhdtool.disk.image import open_disk
from vhdtool.workflows.info import describe
from vhdtool.disk.writer import ParentRef, SparseImageWriter

FUZZ = fuzz_settings(timedelta(seconds=2))
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


CLI_MUTANTS = int(os.environ.get("VHDTOOL_FUZZ_CLI", "60"))
RSS_LIMIT_KIB = 150 * 1024
HOSTILE = [0, 1, 511, 512, 513, 4095, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, (1 << 64) - 1]


def random_mutant(rng: random.Random, base: Base) -> bytes:
    """Bit flips, hostile header/footer/BAT values, truncation; checksums resealed half the time."""
    data = bytearray(base.raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "flip", "footer", "header", "bat"])
        if op == "flip":
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
            continue
        if op == "bat" and base.bat is not None:
            where, offset, width = base.bat, 4 * rng.randrange(base.entries + 1), 4
        elif op == "header" and base.header is not None:
            where, (offset, width, _) = base.header, rng.choice(HEADER_FIELDS)
        else:
            where, (offset, width, _) = rng.choice(base.footers), rng.choice(FOOTER_FIELDS)
        value = rng.choice(HOSTILE + [len(data), len(data) // 512, rng.getrandbits(8 * width)])
        data[where + offset : where + offset + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "big")
    if rng.random() < 0.5:
        reseal(data, base)
    if rng.random() < 0.3:
        del data[rng.randrange(len(data)):]
    return bytes(data)


def run_cli(*args: str) -> tuple[int, str]:
    """vhdtool's entry point in this process: its exit code, and any traceback it let out."""
    from vhdtool.cli import main

    sys.argv = ["vhdtool", *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main()
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else 1), ""
        except BaseException:
            return -1, traceback.format_exc()
    return 0, ""


def cli_fuzz(workdir: Path, count: int, seed: int) -> dict:
    """The child process: `count` mutants of the bases described in workdir/bases.json."""
    from vhdtool.disk.findings import CHANGES_CONTENT

    bases = [Base(**{**b, "raw": (workdir / b["raw"]).read_bytes(), "footers": tuple(b["footers"])})
             for b in json.loads((workdir / "bases.json").read_text())]
    rng, problems, slowest = random.Random(seed), [], 0.0
    out_dir = workdir / "out"
    out_dir.mkdir(exist_ok=True)
    for i in range(count):
        base = rng.choice(bases)
        path = workdir / base.name
        path.write_bytes(random_mutant(rng, base))
        started = time.monotonic()
        damage = [c for c in check_image(path, Target.GENERIC).codes if c in CHANGES_CONTENT]
        out = out_dir / "o.vhd"
        runs = {
            "check": run_cli("check", str(path), "--target", "generic"),
            "info": run_cli("info", str(path)),
            "map": run_cli("map", str(path)),
            "convert": run_cli("convert", str(path), str(out), "--to", rng.choice(["fixed", "dynamic"])),
        }
        slowest = max(slowest, time.monotonic() - started)
        for command, (code, trace) in runs.items():
            if code not in (0, 1, 2):
                problems.append(f"mutant {i} ({base.name}): {command} exit {code} {trace}")
        if runs["convert"][0] == 0 and damage:
            problems.append(f"mutant {i} ({base.name}): convert exit 0 despite {damage}")
        left = sorted(p.name for p in out_dir.iterdir())
        if runs["convert"][0] != 0 and left:
            problems.append(f"mutant {i} ({base.name}): convert refused but left {left}")
        for p in out_dir.iterdir():
            p.unlink()
    return {"problems": problems, "slowest": slowest, "max_rss_kib": peak_rss_kib()}


def peak_rss_kib() -> int:
    """This process's peak RSS. Not getrusage: Linux carries ru_maxrss over exec from the
    forking parent (here pytest), VmHWM belongs to this process's own memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


def test_mutants_through_the_commands(bases, workdir):
    folder = workdir / "cli"
    folder.mkdir()
    meta = []
    for kind, base in bases.items():
        (folder / f"{kind}.base").write_bytes(base.raw)
        meta.append({**base.__dict__, "raw": f"{kind}.base", "footers": list(base.footers)})
    (folder / "parent.vhd").write_bytes(bases["dynamic"].raw)  # the child's parent, unmutated
    (folder / "bases.json").write_text(json.dumps(meta))
    here = Path(__file__).resolve().parent
    code = (f"import sys, json; sys.path[:0] = [{str(here)!r}, {str(here.parent / 'fixtures')!r}]; "
            f"import test_fuzz; from pathlib import Path; "
            f"print(json.dumps(test_fuzz.cli_fuzz(Path({str(folder)!r}), {CLI_MUTANTS}, 13)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["problems"] == []
    assert result["slowest"] < 20, result  # no hang: one mutant through four commands
    assert result["max_rss_kib"] < RSS_LIMIT_KIB, result
