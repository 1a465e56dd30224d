"""`vhdtool snapshot`: byte-identical, sparse, atomic, race-safe, and the source stays untouched."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from conftest import FIXTURES
from oracles import vhdtool
from helpers import allocated, allocation_bound, page_runs
from vhdtool.engine import sink
from vhdtool.workflows.create import create
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import DiskType
from vhdtool.disk.image import open_disk
from vhdtool.ranges import total
from vhdtool.workflows.snapshot import compare, default_destination, snapshot

MiB = 1024 * 1024
VHDS = sorted(FIXTURES.glob("*.vhd"))


@pytest.fixture
def fixed_with_zeros(tmp_path) -> Path:
    """A fixed VHD whose file holds random data and 4 MiB of allocated zeros."""
    path = tmp_path / "disk.vhd"
    create(path, 16 * MiB, DiskType.FIXED)
    rng = random.Random(5)
    with open(path, "r+b") as f:
        for offset, data in [(0, rng.randbytes(8192)), (MiB, bytes(4 * MiB)), (3 * MiB + 512, b"\x01"),
                             (9 * MiB, rng.randbytes(MiB + 512))]:
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert allocated(path) >= 5 * MiB
    return path


@pytest.mark.parametrize("path", VHDS, ids=lambda p: p.name)
def test_fixture_copies_are_identical_and_sparse(path, tmp_path):
    """Fixed, dynamic and differencing files (committed fully allocated) copy byte for byte
    and allocate only their non-zero pages."""
    dest = tmp_path / "copy.vhd"
    done = snapshot(path, dest)
    content = path.read_bytes()
    assert done.path == dest and dest.read_bytes() == content
    assert allocated(dest) <= allocation_bound(content, tmp_path)
    assert done.data_bytes == total(page_runs(content))


def test_allocated_zeros_are_not_copied(fixed_with_zeros, tmp_path):
    dest = tmp_path / "copy.vhd"
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(dest))
    assert result.returncode == 0, result.stderr
    assert subprocess.run(["cmp", str(fixed_with_zeros), str(dest)]).returncode == 0
    content = fixed_with_zeros.read_bytes()
    assert allocated(dest) <= allocation_bound(content, tmp_path) < allocated(fixed_with_zeros) - 3 * MiB
    assert f"snapshot {dest}:" in result.stdout


def test_default_names_are_dated_and_numbered(fixed_with_zeros):
    base = default_destination(fixed_with_zeros, date.today())
    assert base.name == f"disk-snapshot-{date.today():%Y-%m-%d}.vhd"
    first, second = snapshot(fixed_with_zeros), snapshot(fixed_with_zeros)
    assert (first.path, second.path) == (base, base.with_name(base.stem + "-01.vhd"))
    assert first.path.read_bytes() == second.path.read_bytes() == fixed_with_zeros.read_bytes()


def test_name_taken_during_the_copy_gets_the_next_number(fixed_with_zeros, monkeypatch):
    """Another snapshot finishing first under the dated name is never overwritten."""
    base = default_destination(fixed_with_zeros, date.today())
    real_put = sink.SparseFile.put

    def competitor_appears(self, offset, data):
        if not base.exists():
            base.write_bytes(b"the other snapshot")
        real_put(self, offset, data)

    monkeypatch.setattr(sink.SparseFile, "put", competitor_appears)
    done = snapshot(fixed_with_zeros)
    assert done.path.name == base.stem + "-01.vhd"
    assert base.read_bytes() == b"the other snapshot"
    assert done.path.read_bytes() == fixed_with_zeros.read_bytes()


def test_concurrent_snapshots_get_different_names(fixed_with_zeros):
    procs = [subprocess.Popen([sys.executable, "-m", "vhdtool.cli", "snapshot", str(fixed_with_zeros)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    made = list(fixed_with_zeros.parent.glob("disk-snapshot-*.vhd"))
    base = default_destination(fixed_with_zeros, date.today())
    assert {p.name for p in made} == {base.name, base.stem + "-01.vhd", base.stem + "-02.vhd"}
    for p in made:
        assert p.read_bytes() == fixed_with_zeros.read_bytes()


def test_verify_passes_on_the_copy_and_catches_differences(fixed_with_zeros, tmp_path):
    dest = tmp_path / "copy.vhd"
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(dest), "--verify")
    assert result.returncode == 0 and "verified" in result.stdout, result.stderr
    with open(dest, "r+b") as f:  # one byte in what was a hole of both files
        f.seek(7 * MiB + 700)
        f.write(b"\x01")
    with open_disk(fixed_with_zeros, raw=True) as source, open_disk(dest, raw=True) as copy:
        with pytest.raises(VhdError, match=f"differs in the page at offset {7 * MiB + 512:,}"):
            compare(source, copy)
    with open(dest, "ab") as f:
        f.write(b"\0" * 512)
    with open_disk(fixed_with_zeros, raw=True) as source, open_disk(dest, raw=True) as copy:
        with pytest.raises(VhdError, match="verify failed: the copy has"):
            compare(source, copy)


def test_a_copy_that_fails_verify_is_never_published(fixed_with_zeros, tmp_path, monkeypatch):
    real_put = sink.SparseFile.put

    def corrupting_put(self, offset, data):
        real_put(self, offset, data)
        os.pwrite(self.fd, b"\xee", 12 * MiB)  # a byte where the source has a hole

    monkeypatch.setattr(sink.SparseFile, "put", corrupting_put)
    with pytest.raises(VhdError, match=f"differs in the page at offset {12 * MiB:,}"):
        snapshot(fixed_with_zeros, tmp_path / "copy.vhd", verify=True)
    assert sorted(tmp_path.iterdir()) == [fixed_with_zeros]


def test_the_source_is_only_ever_opened_read_only(fixed_with_zeros, tmp_path, monkeypatch):
    before = (fixed_with_zeros.read_bytes(), fixed_with_zeros.stat().st_mtime_ns)
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)).resolve() == fixed_with_zeros.resolve():
            opened.append(flags)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    snapshot(fixed_with_zeros, tmp_path / "copy.vhd", verify=True)
    assert opened and all(flags & (os.O_WRONLY | os.O_RDWR) == 0 for flags in opened)
    assert (fixed_with_zeros.read_bytes(), fixed_with_zeros.stat().st_mtime_ns) == before


def test_a_source_modified_during_the_copy_leaves_nothing(fixed_with_zeros, tmp_path, monkeypatch):
    real_put = sink.SparseFile.put

    def writer_touches_source(self, offset, data):
        real_put(self, offset, data)
        os.utime(fixed_with_zeros)

    monkeypatch.setattr(sink.SparseFile, "put", writer_touches_source)
    dest = tmp_path / "copy.vhd"
    with pytest.raises(VhdError, match="was modified while being copied"):
        snapshot(fixed_with_zeros, dest)
    assert sorted(tmp_path.iterdir()) == [fixed_with_zeros]


KILL_RUNNER = """
import sys, time
from vhdtool.engine import sink
from vhdtool.workflows.snapshot import snapshot
real_put = sink.SparseFile.put
def put_then_hang(self, offset, data):
    real_put(self, offset, data)
    open(sys.argv[3], "w").close()
    time.sleep(600)
sink.SparseFile.put = put_then_hang
snapshot(sys.argv[1], sys.argv[2])
"""


def test_sigkill_leaves_no_destination_and_a_rerun_completes(fixed_with_zeros, tmp_path):
    dest, marker = tmp_path / "copy.vhd", tmp_path.parent / f"{tmp_path.name}.marker"
    child = subprocess.Popen([sys.executable, "-c", KILL_RUNNER, str(fixed_with_zeros), str(dest), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "snapshot never wrote"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not dest.exists()
    assert sorted(tmp_path.iterdir()) == [fixed_with_zeros]  # not even a partial temp file
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == fixed_with_zeros.read_bytes()


def test_existing_destination_needs_force(fixed_with_zeros, tmp_path):
    dest = tmp_path / "copy.vhd"
    dest.write_bytes(b"keep me")
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(dest))
    assert result.returncode == 2
    assert result.stderr == f"vhdtool: error: {dest}: already exists (use --force to overwrite)\n"
    assert dest.read_bytes() == b"keep me"
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(dest), "--force")
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == fixed_with_zeros.read_bytes()


def test_refuses_to_replace_the_source(fixed_with_zeros):
    before = fixed_with_zeros.read_bytes()
    result = vhdtool("snapshot", str(fixed_with_zeros), "-o", str(fixed_with_zeros), "--force")
    assert result.returncode == 2 and "is the source itself" in result.stderr
    assert fixed_with_zeros.read_bytes() == before


@pytest.mark.parametrize("name,message", [("raw-3m.img", "not a VHD"), ("missing.vhd", "no such file")])
def test_unusable_sources_give_one_line_and_exit_2(name, message, tmp_path):
    src = FIXTURES / name
    result = vhdtool("snapshot", str(src), "-o", str(tmp_path / "out.vhd"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"vhdtool: error: {src}: {message}") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_reflink_is_used_exactly_where_the_filesystem_can(fixed_with_zeros, tmp_path):
    """`cp --reflink=always` is the oracle for whether this filesystem shares extents."""
    probe = subprocess.run(["cp", "--reflink=always", str(fixed_with_zeros), str(tmp_path / "probe")],
                           capture_output=True)
    done = snapshot(fixed_with_zeros, tmp_path / "copy.vhd")
    assert done.reflinked == (probe.returncode == 0)
    assert done.path.read_bytes() == fixed_with_zeros.read_bytes()


def test_copy_file_range_on_one_filesystem_and_pwrite_when_it_fails(fixed_with_zeros, tmp_path, monkeypatch):
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    first = snapshot(fixed_with_zeros, tmp_path / "a.vhd")
    assert calls and first.path.read_bytes() == fixed_with_zeros.read_bytes()

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    second = snapshot(fixed_with_zeros, tmp_path / "b.vhd")
    assert second.path.read_bytes() == fixed_with_zeros.read_bytes()
    assert allocated(second.path) <= allocation_bound(fixed_with_zeros.read_bytes(), tmp_path)


def test_progress_bar_on_a_terminal(fixed_with_zeros, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    snapshot(fixed_with_zeros, tmp_path / "copy.vhd")
    assert "snapshot disk.vhd" in screen.getvalue() and "B/s" in screen.getvalue()


class FastExit(Exception):
    pass


def test_program_skips_teardown_only_after_a_success_with_its_output_flushed(tmp_path, monkeypatch, capsys):
    """`vhdtool` (cli.run) leaves with os._exit(0) once the snapshot is complete and its line
    printed; a failure exits normally with its code."""
    from vhdtool import cli

    exits = []

    def fast_exit(code):
        exits.append(code)
        raise FastExit

    monkeypatch.setattr(os, "_exit", fast_exit)
    dest = tmp_path / "copy.vhd"
    monkeypatch.setattr(sys, "argv", ["vhdtool", "snapshot", str(FIXTURES / "windows-fixed-10m.vhd"), "-o", str(dest)])
    with pytest.raises(FastExit):
        cli.run()
    assert exits == [0] and dest.read_bytes() == (FIXTURES / "windows-fixed-10m.vhd").read_bytes()
    assert capsys.readouterr().out.startswith(f"snapshot {dest}:")
    monkeypatch.setattr(sys, "argv", ["vhdtool", "snapshot", str(tmp_path / "missing.vhd")])
    with pytest.raises(SystemExit) as failed:
        cli.run()
    assert failed.value.code == 2 and exits == [0]


def test_a_failing_tap_stops_every_write_before_the_output_is_closed(tmp_path, monkeypatch):
    """The tap (the store's MD5) raising mid-copy: the writer threads are joined before the
    output's descriptors close, so no write lands in a file that reuses their numbers (slow
    writes here keep writers busy long after the tap failed)."""
    import threading

    real_put = sink.SparseFile.put
    monkeypatch.setattr(sink.SparseFile, "put", lambda self, o, d: time.sleep(0.05) or real_put(self, o, d))

    src = tmp_path / "src.vhd"
    create(src, 48 * 1024 * 1024, DiskType.FIXED)
    with open(src, "r+b") as f:
        for n in range(48):
            f.seek(n * 1024 * 1024)
            f.write(bytes([n + 1]) * 1024 * 1024)

    class Boom(Exception):
        pass

    def tap(offset, data):
        raise Boom

    try:  # not pytest.raises, which lets go of the frames: a caller that logs keeps them
        snapshot(src, tmp_path / "copy.vhd", tap=tap)
    except Boom as exc:
        kept = exc  # noqa: F841
    else:
        raise AssertionError("the tap's error was lost")
    victims = [tmp_path / f"victim{n}" for n in range(6)]
    fds = [os.open(v, os.O_RDWR | os.O_CREAT, 0o644) for v in victims]
    try:
        assert not [t.name for t in threading.enumerate() if t.name.startswith("vhdtool-")]
        time.sleep(0.5)
        assert all(v.stat().st_size == 0 for v in victims)
    finally:
        for fd in fds:
            os.close(fd)
    assert not (tmp_path / "copy.vhd").exists()


def test_verify_leaves_no_descriptor_open(fixed_with_zeros, tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    for n in range(3):
        snapshot(fixed_with_zeros, tmp_path / f"copy{n}.vhd", verify=True)
    assert len(os.listdir("/proc/self/fd")) == before
