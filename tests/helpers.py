"""Helpers several test modules share (fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, settings

from conftest import FIXTURES
from vhdtool.azure.location import BlobLocation
from vhdtool.disk.image import open_disk
from vhdtool.engine.pipeline import PAGE
from vhdtool.format.vhd.footer import DiskType
from vhdtool.ranges import align, merge, total
from vhdtool.workflows.create import create
from vhdtool.workflows.upload import fixed_image

MiB = 1024 * 1024

# One fixture of each VHD type, as uploads, downloads and remote reads take them.
KINDS = {
    "fixed": FIXTURES / "windows-fixed-10m.vhd",
    "dynamic": FIXTURES / "windows-dynamic-10m.vhd",
    "differencing": FIXTURES / "chain-child2.vhd",
}
AZURE_KEYS = ("microsoftazurecompute_imagetype", "microsoftazurecompute_osstate",
              "microsoftazurecompute_ostype", "microsoftazurecompute_capturedvmkey")


def fuzz_settings(deadline: timedelta) -> settings:
    """The fuzz tests' settings: VHDTOOL_FUZZ_EXAMPLES examples each (100 by default), no database."""
    return settings(
        max_examples=int(os.environ.get("VHDTOOL_FUZZ_EXAMPLES", "100")),
        deadline=deadline,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


def content(path, **kw) -> bytes:
    """The virtual disk of the image at `path`, as vhdtool reads it."""
    with open_disk(path, **kw) as disk:
        return disk.read(0, disk.virtual_size)


def page_runs(data: bytes, granularity: int = PAGE) -> list[tuple[int, int]]:
    """Brute force: runs of pages holding a non-zero byte (the last page may be short)."""
    zero = bytes(granularity)
    pages = []
    for start in range(0, len(data), granularity):
        page = data[start : start + granularity]
        if page != zero[: len(page)]:
            pages.append((start, start + len(page)))
    return list(merge(pages))


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512  # st_blocks counts 512-byte units (POSIX)


def allocation_bound(data: bytes, folder: Path) -> int:
    """What a sparse copy may allocate: the non-zero pages rounded to filesystem blocks, plus
    a few blocks of extent metadata."""
    block = os.statvfs(folder).f_bsize
    return total(align(page_runs(data), block, len(data))) + 4 * block


def scattered_vhd(path: Path, size: int, pieces: int, seed: int, piece: int = 64 * 1024) -> Path:
    """A fixed VHD with `pieces` random 64 KiB pieces at random, unaligned offsets."""
    create(path, size, DiskType.FIXED)
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for slot in rng.sample(range(size // (2 * piece)), pieces):
            f.seek(slot * 2 * piece + rng.randrange(piece))
            f.write(rng.randbytes(piece))
    return path


def three_disks(folder: Path) -> dict[str, Path]:
    """An OS disk and two data disks with different content (fixed, 10 MiB: pass check)."""
    return {role: scattered_vhd(folder / f"{role}.vhd", 10 * MiB, 4, seed)
            for seed, role in enumerate(("os", "data0", "data1"), start=1)}


def image_bytes(path: Path, align: bool = False) -> bytes:
    """The fixed VHD an upload of `path` must produce, byte for byte."""
    with open_disk(path) as disk:
        image = fixed_image(disk, align)
        return image.read(0, image.virtual_size)


def found(pattern: str, text: str) -> re.Match[str]:
    """The first match of `pattern` in a tool's output; a clear failure when there is none."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in: {text!r}"
    return match


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "vhdtool-partial" in p.name)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def utc_days() -> set[str]:
    """Today's UTC date (and the next one, should the test straddle midnight UTC)."""
    now = datetime.now(timezone.utc)
    return {f"{now:%Y-%m-%d}", f"{now + timedelta(minutes=5):%Y-%m-%d}"}


def dated(pattern: str) -> re.Pattern:
    """`pattern` with DATE standing for today's UTC date."""
    days = "|".join(sorted(utc_days()))
    return re.compile("^" + pattern.replace("DATE", f"(?:{days})") + "$")


# Azure (Azurite): addresses and blobs, through the plain SDK where vhdtool is not under test.

def conn_env(azurite) -> dict[str, str]:
    return {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}


def location(azurite, container, name: str) -> BlobLocation:
    return BlobLocation.from_connection_string(azurite.connection_string, container.container_name, name)


def put_disk(client, name: str, path: Path):
    """Upload a local file as a page blob (plain SDK: no vhdtool involved)."""
    blob = client.get_blob_client(name)
    blob.upload_blob(path.read_bytes(), blob_type="PageBlob")
    return blob


def blobs(client) -> dict[str, object]:
    return {b.name: b for b in client.list_blobs(include=["metadata"])}


# `vhdtool image` on a local store.

def capture_args(name: str, disks: dict[str, Path], store: Path | str, *extra: str) -> list[str]:
    return ["image", "capture", name, "--os-disk", str(disks["os"]), "--os-type", "linux",
            "--os-state", "generalized", "--data-disk", f"0={disks['data0']}",
            "--data-disk", f"1={disks['data1']},caching=ReadOnly", "--store", str(store), *extra]


def vhd_names(store: Path) -> set[str]:
    folder = store / "vhds"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def shown(cli, store: Path, name: str) -> dict:
    done = cli("image", "show", name, "--store", str(store), "--json")
    assert done.code == 0, done.err
    return json.loads(done.out)
