"""`vhdtool download` against a hostile or full destination folder: a link planted at the
partial file's or state file's name is never followed, a partial file that is not ours is never
resumed into, and a full disk is reported with the file's name, leaving at most one partial and
one state file however often it is re-run."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from helpers import conn_env, image_bytes, KINDS, leftovers, location
from vhdtool.engine import sink
from vhdtool.workflows import download as downloads
from vhdtool.workflows.download import DownloadOptions, Partial, download
from vhdtool.workflows.upload import upload


@pytest.fixture
def blob(azurite, container):
    upload(KINDS["fixed"], location(azurite, container, "d.vhd"))
    return location(azurite, container, "d.vhd")


def partial_of(dest: Path, loc) -> Partial:
    with downloads.PageBlob(loc, connections=1) as remote:
        return Partial.beside(dest, loc, downloads.blob_info(remote))


@pytest.mark.parametrize("planted", ["data", "state", "state.tmp"])
def test_a_link_planted_at_a_temporary_name_is_not_followed(planted, blob, tmp_path) -> None:
    folder, outside = tmp_path / "dl", tmp_path / "outside"
    folder.mkdir(), outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    dest = folder / "d.vhd"
    partial = partial_of(dest, blob)
    name = {"data": partial.data, "state": partial.state,
            "state.tmp": partial.state.with_name(partial.state.name + ".tmp")}[planted]
    name.symlink_to(victim)
    download(blob, dest)
    assert victim.read_bytes() == b"precious"
    assert dest.read_bytes() == image_bytes(KINDS["fixed"])
    assert not dest.is_symlink() and [p.name for p in outside.iterdir()] == ["victim"]


def test_a_partial_file_that_is_a_link_is_not_resumed_into(blob, tmp_path) -> None:
    """A state that matches the blob, beside a link to someone's file of the blob's size."""
    victim = tmp_path / "victim"
    size = len(image_bytes(KINDS["fixed"]))
    victim.write_bytes(b"\x07" * size)
    dest = tmp_path / "dl" / "d.vhd"
    dest.parent.mkdir()
    partial = partial_of(dest, blob)
    partial.data.symlink_to(victim)
    partial.record(size // 2)
    assert partial.resumable_offset() == 0  # refused: a link, whatever the state says
    result = download(blob, dest)
    assert result.resumed_from == 0 and victim.read_bytes() == b"\x07" * size
    assert dest.read_bytes() == image_bytes(KINDS["fixed"])


def full_disk_after(monkeypatch, budget: int) -> None:
    """pwrite fails with ENOSPC once `budget` bytes are written, as on a full filesystem."""
    real = os.pwrite
    left = [budget]

    def pwrite(fd, data, offset):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= len(data)
        return real(fd, data, offset)

    monkeypatch.setattr(sink.os, "pwrite", pwrite)


def test_a_full_disk_names_the_file_and_leaves_one_partial_and_one_state(azurite, container, blob, cli,
                                                                          tmp_path, monkeypatch) -> None:
    dest = tmp_path / "d.vhd"
    args = ("download", "--container", container.container_name, "--name", "d.vhd", str(dest))
    with monkeypatch.context() as m:
        full_disk_after(m, 0)
        for _ in range(3):
            done = cli(*args, env=conn_env(azurite))
            assert done.code == 2 and done.err.count("\n") == 1, done.err
            assert ".d.vhd.vhdtool-partial: writing failed: No space left on device" in done.err, done.err
            assert "run the same command again to resume" in done.err
            assert leftovers(tmp_path) == [".d.vhd.vhdtool-partial", ".d.vhd.vhdtool-partial.json"]
    done = cli(*args, env=conn_env(azurite))
    assert done.code == 0, done.err
    assert dest.read_bytes() == image_bytes(KINDS["fixed"]) and leftovers(tmp_path) == []


def test_a_state_file_that_cannot_be_written_leaves_no_temporary(blob, tmp_path, monkeypatch) -> None:
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(downloads.os, "replace", full)
    dest = tmp_path / "d.vhd"
    for _ in range(2):
        with pytest.raises(downloads.VhdError, match="No space left on device"):
            download(blob, dest, DownloadOptions())
        assert leftovers(tmp_path) == [".d.vhd.vhdtool-partial"]
