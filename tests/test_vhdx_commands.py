"""VHDX through every command that reads a disk (open_disk sniffs it): map, convert, prepare,
upload, image capture and snapshot. Results are held against qemu-img (`qemu-img compare -f
vhdx -F vpc`, `qemu-img convert -O vpc -o subformat=fixed,force_size=on`) for the images qemu
makes, and against libvhdi (or qemu after `qemu-img check -r all`) for the ones it cannot read;
every prepared or uploaded VHD passes `check --target azure`."""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import shutil
from pathlib import Path
from uuid import UUID

import make_partition_fixtures
import make_vhdx_fixtures as mk
import numpy as np
import pytest
from oracles import run, vhdi_read
from test_engine import page_runs
from test_upload import check_blob_is, conn_env, image_bytes

from vhdtool.disk.image import open_disk
from vhdtool.disk.partitions import read_layout
from vhdtool.format.vhd.footer import OUR_CREATOR, DiskType, parse_footer
from vhdtool.format.vhd.geometry import chs_for_size
from vhdtool.format.vhdx.bat import PayloadState

MiB = 1024 * 1024
QEMU_MADE = mk.QEMU_MADE
OWN_MADE = ["own-4k", "own-4k-32m", "diff-child", "pending-log"]
CONVERT_HINT = "-O vpc -o subformat=fixed,force_size=on"


@pytest.fixture(scope="module")
def vhdx(vhdx, tmp_path_factory) -> dict[str, Path]:
    """conftest's VHDX fixtures and one more."""
    # 10000 KiB: not a whole MiB, which prepare rounds up and upload takes only with --align
    odd = mk.qemu_vhdx(tmp_path_factory.mktemp("vhdx-odd") / "qemu-odd.vhdx", "10000K", "1M",
                       ["write -P 0x42 9M 512k", "write -P 0x43 9999k 1k"])
    return {**vhdx, "qemu-odd": odd}


def qemu_fixed_vhd(src: Path, out: Path) -> bytes:
    run("qemu-img", "convert", "-f", "vhdx", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
        str(src), str(out))
    return out.read_bytes()


def reference(vhdx: dict[str, Path], name: str, tmp: Path) -> bytes:
    """The virtual disk's bytes as the other readers see them: qemu-img for its own images
    (through the very conversion the issue names), libvhdi for the writer's, and qemu after
    replaying the log on a copy for the file closed uncleanly."""
    src = vhdx[name]
    if name == "pending-log":
        copy = tmp / "replayed.vhdx"
        shutil.copy(src, copy)
        run("qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(copy))
        src = copy
    elif name not in QEMU_MADE + ["qemu-odd"]:
        return vhdi_read([src, vhdx["diff-base"]] if name == "diff-child" else [src])
    return qemu_fixed_vhd(src, tmp / "qemu.vhd")[:-512]


def qemu_compare(src: Path, vhd: Path) -> None:
    done = run("qemu-img", "compare", "-f", "vhdx", "-F", "vpc", str(src), str(vhd))
    assert "Images are identical." in done.stdout


def assert_azure_ready(cli, vhd: Path, data: bytes) -> None:
    """`check --target azure` passes; the data, then our fixed footer (creator, spec CHS)."""
    checked = cli("check", "--target", "azure", str(vhd))
    assert checked.code == 0, checked.out
    content = vhd.read_bytes()
    size = len(content) - 512
    assert size % MiB == 0 and content[:len(data)] == data and not any(content[len(data):size])
    footer = parse_footer(content[size:])
    chs = chs_for_size(size)
    assert (footer.disk_type, footer.current_size) == (DiskType.FIXED, size)
    assert footer.creator_application == OUR_CREATOR
    assert (footer.disk_geometry.cylinders, footer.disk_geometry.heads,
            footer.disk_geometry.sectors_per_track) == (chs.cylinders, chs.heads, chs.sectors_per_track)


# --- prepare -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QEMU_MADE + OWN_MADE + ["qemu-odd"])
def test_prepare_makes_the_azure_ready_vhd_of_the_same_disk(vhdx, name, cli, tmp_path):
    src, out = vhdx[name], tmp_path / "out.vhd"
    done = cli("prepare", str(src), "-o", str(out))
    assert done.code == 0, done.err
    assert f"{src}: read as VHDX" in done.out
    data = reference(vhdx, name, tmp_path)
    assert data.strip(b"\0")  # equal zeros would prove nothing
    assert_azure_ready(cli, out, data)
    if name in QEMU_MADE + ["qemu-odd"]:
        qemu_compare(src, out)
    with open_disk(out) as disk:
        assert list(disk.allocated()) == page_runs(disk.read(0, disk.virtual_size), 4096)


def test_prepare_rounds_a_size_that_is_not_whole_mib_up(vhdx, cli, tmp_path):
    out = tmp_path / "odd.vhd"
    assert cli("prepare", str(vhdx["qemu-odd"]), "-o", str(out)).code == 0
    assert out.stat().st_size == 10 * MiB + 512  # 10000 KiB -> 10 MiB


def test_a_4096_byte_sector_vhdx_keeps_its_bytes_and_a_4k_gpt_is_reported(cli, tmp_path):
    """Azure takes 512-byte sectors only. The VHD holds the same bytes (as qemu-img and libvhdi
    read the VHDX: a disk is its bytes, the sector size is how the guest addresses them); a
    partition table laid out for 4096-byte sectors is reported, not rewritten."""
    img = tmp_path / "gpt4k.img"
    make_partition_fixtures.partition("gpt-4k-sectors", img)
    raw = img.read_bytes()
    blocks = {b: (PayloadState.FULLY_PRESENT, raw[b * MiB : (b + 1) * MiB])
              for b in range(len(raw) // MiB) if any(raw[b * MiB : (b + 1) * MiB])}
    src = mk.write_vhdx(tmp_path / "gpt4k.vhdx", mk.VhdxSpec(size=len(raw), sector=4096, blocks=blocks))
    with open_disk(src) as disk:
        own = read_layout(disk)
    assert (own.scheme, own.sector_size, own.problems) == ("gpt", 4096, ())

    out = tmp_path / "gpt4k.vhd"
    assert cli("prepare", str(src), "-o", str(out)).code == 0
    assert out.read_bytes()[: len(raw)] == raw == vhdi_read([src])
    with open_disk(out) as disk:
        seen = read_layout(disk)
    assert seen.partitions == own.partitions
    assert seen.problems == ("the GPT is laid out for 4096-byte sectors but the disk has 512-byte "
                             "sectors: firmware reading it as it is finds no GPT",)


# --- upload: streamed as the fixed VHD, nothing written locally ------------------------------------


@pytest.fixture
def no_local_writes(monkeypatch):
    """Fail any file opened for writing (os.open or open) while the test runs."""
    real_os_open, real_open = os.open, builtins.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def os_open(path, flags, *args, **kwargs):
        assert not flags & writes, f"opened {path} for writing"
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        assert not set(mode) & set("wax+"), f"opened {file} for writing"
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)


def upload_args(src: Path, container, name: str) -> list[str]:
    return ["upload", str(src), "--container", container.container_name, "--name", name]


@pytest.mark.parametrize("name", QEMU_MADE + OWN_MADE)
def test_upload_streams_the_fixed_vhd_it_represents(vhdx, name, azurite, container, cli, tmp_path,
                                                    request):
    src = vhdx[name]
    expected = image_bytes(src)  # before the guard: it reads the source, and so does reference()
    data = reference(vhdx, name, tmp_path)
    request.getfixturevalue("no_local_writes")
    done = cli(*upload_args(src, container, "d.vhd"), env=conn_env(azurite))
    assert done.code == 0, done.err
    blob = container.get_blob_client("d.vhd")
    check_blob_is(blob, expected)  # exact bytes, only the non-zero pages, Content-MD5
    assert expected[:-512] == data
    with open_disk(src) as disk:
        assert blob.get_blob_properties().metadata["vhdtool_source_uuid"] == \
            disk.current_header.data_write_guid.bytes_le.hex()


@pytest.mark.parametrize("name", QEMU_MADE)
def test_uploaded_blob_passes_check_and_qemu_compare(vhdx, name, azurite, container, cli, tmp_path):
    src, down = vhdx[name], tmp_path / "down.vhd"
    assert cli(*upload_args(src, container, "d.vhd"), env=conn_env(azurite)).code == 0
    down.write_bytes(container.get_blob_client("d.vhd").download_blob().readall())
    assert_azure_ready(cli, down, qemu_fixed_vhd(src, tmp_path / "qemu.vhd")[:-512])
    qemu_compare(src, down)


def test_a_second_upload_finds_the_blob_complete(vhdx, azurite, container, cli):
    """A VHDX has no footer UUID or timestamp: the VHD's are derived from the file (data write
    GUID, modification time), so a second run recognises its own blob and sends nothing."""
    args = upload_args(vhdx["qemu-8m"], container, "d.vhd")
    assert cli(*args, env=conn_env(azurite)).code == 0
    before = container.get_blob_client("d.vhd").download_blob().readall()
    again = cli(*args, env=conn_env(azurite))
    assert again.code == 0, again.err
    assert "already" in again.out.lower()
    assert container.get_blob_client("d.vhd").download_blob().readall() == before


def test_upload_of_a_size_that_is_not_whole_mib_needs_align(vhdx, azurite, container, cli):
    args = upload_args(vhdx["qemu-odd"], container, "odd.vhd")
    refused = cli(*args, env=conn_env(azurite))
    assert refused.code == 2 and "--align" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert not container.get_blob_client("odd.vhd").exists()
    done = cli(*args, "--align", env=conn_env(azurite))
    assert done.code == 0, done.err
    check_blob_is(container.get_blob_client("odd.vhd"), image_bytes(vhdx["qemu-odd"], align=True))
    assert parse_footer(image_bytes(vhdx["qemu-odd"], align=True)[-512:]).current_size == 10 * MiB


# --- map, convert, snapshot, image capture ---------------------------------------------------------


@pytest.mark.parametrize("name", ["qemu-1m", "own-4k", "diff-child"])
def test_map_lists_what_the_bat_holds(vhdx, name, cli, tmp_path):
    done = cli("map", "--json", str(vhdx[name]))
    assert done.code == 0, done.err
    runs = [(r["start"], r["start"] + r["length"]) for r in json.loads(done.out)["runs"]]
    data = reference(vhdx, name, tmp_path)
    covered = np.zeros(len(data), dtype=bool)
    for start, end in runs:
        covered[start:end] = True
    assert not np.frombuffer(data, dtype=np.uint8)[~covered].any()  # no data outside the runs
    if name == "qemu-1m":  # 3 MiB at 1 MiB, 512 bytes at 8 MiB; the zeroed and discarded MiBs not
        assert runs == [(MiB, 4 * MiB), (8 * MiB, 8 * MiB + 512)]


@pytest.mark.parametrize("to", ["fixed", "dynamic", "raw"])
@pytest.mark.parametrize("name", ["qemu-8m", "own-4k"])
def test_convert(vhdx, name, to, cli, tmp_path):
    out = tmp_path / f"out.{to}"
    done = cli("convert", str(vhdx[name]), str(out), "--to", to)
    assert done.code == 0, done.err
    data = reference(vhdx, name, tmp_path)
    with open_disk(out, raw=to == "raw") as disk:
        assert disk.kind == to and disk.read(0, disk.virtual_size) == data
    if name in QEMU_MADE:
        run("qemu-img", "compare", "-f", "vhdx", "-F", "raw" if to == "raw" else "vpc", str(vhdx[name]),
            str(out))


def test_snapshot_is_a_byte_copy_named_vhdx(vhdx, cli, tmp_path):
    src = tmp_path / "disk.vhdx"
    shutil.copy(vhdx["qemu-8m"], src)
    done = cli("snapshot", str(src), "--verify")
    assert done.code == 0, done.err
    copies = [p for p in tmp_path.iterdir() if p.name.startswith("disk-snapshot-")]
    assert len(copies) == 1 and copies[0].suffix == ".vhdx"
    assert copies[0].read_bytes() == src.read_bytes()


def test_image_capture_stores_a_vhdx_as_a_fixed_vhd(vhdx, cli, tmp_path):
    store = tmp_path / "store"
    done = cli("image", "capture", "img", "--os-disk", str(vhdx["qemu-32m"]), "--os-type", "linux",
               "--os-state", "generalized", "--store", str(store), "--md5", "--json")
    assert done.code == 0, done.err
    record = json.loads(done.out)
    stored = store / "vhds" / record["osDisk"]["name"]
    assert stored.suffix == ".vhd" and record["osDisk"]["sizeBytes"] == 70 * MiB + 512
    md5 = base64.b64encode(hashlib.md5(stored.read_bytes()).digest()).decode()
    assert record["osDisk"]["contentMd5"] == md5  # hashed in the same pass as the copy
    assert_azure_ready(cli, stored, reference(vhdx, "qemu-32m", tmp_path))
    qemu_compare(vhdx["qemu-32m"], stored)


def test_image_capture_uploads_a_vhdx_into_an_azure_store_as_a_fixed_vhd(vhdx, azurite, container, cli,
                                                                         tmp_path):
    done = cli("image", "capture", "img", "--os-disk", str(vhdx["qemu-8m"]), "--os-type", "linux",
               "--os-state", "generalized", "--container", container.container_name, "--json",
               env=conn_env(azurite))
    assert done.code == 0, done.err
    entry = json.loads(done.out)["osDisk"]
    assert entry["copy"]["method"] == "upload" and entry["sizeBytes"] == 40 * MiB + 512
    stored = tmp_path / "stored.vhd"
    stored.write_bytes(container.get_blob_client(entry["name"]).download_blob().readall())
    assert_azure_ready(cli, stored, reference(vhdx, "qemu-8m", tmp_path))
    qemu_compare(vhdx["qemu-8m"], stored)


def test_image_capture_refuses_a_vhdx_azure_would_refuse(vhdx, cli, tmp_path):
    done = cli("image", "capture", "img", "--os-disk", str(vhdx["qemu-odd"]), "--os-type", "linux",
               "--os-state", "generalized", "--store", str(tmp_path / "store"))
    assert done.code == 1 and "azure.size-not-mib" in done.err and "vhdtool prepare" in done.err
    assert not (tmp_path / "store" / "vhds").exists() or not any((tmp_path / "store" / "vhds").iterdir())


@pytest.mark.parametrize("args", [["--size", "30M"], ["--size", "10M", "--allow-shrink", "--force"],
                                  ["--size", "30M", "-o", "copy.vhdx"]])
def test_resize_refuses_a_vhdx_and_leaves_it_as_it_was(vhdx, args, cli, tmp_path, monkeypatch):
    """vhdtool writes no VHDX: resizing one would write a VHD footer into it."""
    src = tmp_path / "disk.vhdx"
    shutil.copy(vhdx["qemu-1m"], src)
    monkeypatch.chdir(tmp_path)
    done = cli("resize", str(src), *args)
    assert done.code == 2 and len(done.err.strip().splitlines()) == 1
    assert "never writes it" in done.err and "vhdtool prepare" in done.err
    assert src.read_bytes() == vhdx["qemu-1m"].read_bytes() and not (tmp_path / "copy.vhdx").exists()


# --- formats vhdtool does not read ----------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"QFI\xfb", b"vhdxfile", b"KDMV"])
def test_a_fixed_vhd_whose_data_starts_like_another_format_stays_a_vhd(magic, cli, tmp_path):
    """The footer decides, as it did before VHDX: a fixed VHD's first bytes are its guest's."""
    src = tmp_path / "guest.vhd"
    assert cli("create", str(src), "--size", "2M", "--type", "fixed").code == 0
    with open(src, "r+b") as f:
        f.write(magic)
    out = tmp_path / "out.vhd"
    assert cli("snapshot", str(src), "-o", str(out)).code == 0
    done = cli("convert", str(src), str(tmp_path / "raw.img"), "--to", "raw")
    assert done.code == 0, done.err
    assert (tmp_path / "raw.img").read_bytes()[:len(magic)] == magic


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("foreign")
    made = {}
    for fmt in ("qcow2", "vmdk", "vdi"):
        made[fmt] = folder / f"disk.{fmt}"
        run("qemu-img", "create", "-q", "-f", fmt, str(made[fmt]), "4M")
    return made


COMMANDS = {
    "map": lambda src, tmp: ["map", str(src)],
    "convert": lambda src, tmp: ["convert", str(src), str(tmp / "out.vhd"), "--to", "fixed"],
    "prepare": lambda src, tmp: ["prepare", str(src), "-o", str(tmp / "out.vhd")],
    "snapshot": lambda src, tmp: ["snapshot", str(src), "-o", str(tmp / "out.vhd")],
    "capture": lambda src, tmp: ["image", "capture", "i", "--os-disk", str(src), "--os-type", "linux",
                                 "--os-state", "generalized", "--store", str(tmp / "store")],
}


@pytest.mark.parametrize("command", [*COMMANDS, "upload"])
@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi"])
def test_formats_it_cannot_read_get_one_line_with_the_command(foreign, fmt, command, cli, tmp_path,
                                                              request):
    src = foreign[fmt]
    if command == "upload":
        azurite, container = request.getfixturevalue("azurite"), request.getfixturevalue("container")
        done = cli(*upload_args(src, container, "x.vhd"), env=conn_env(azurite))
        assert not container.get_blob_client("x.vhd").exists()
    else:
        done = cli(*COMMANDS[command](src, tmp_path))
    assert done.code == 2, (done.out, done.err)
    assert done.err.strip() == (
        f"vhdtool: error: {src}: is a {fmt} image, which vhdtool does not read: convert it first "
        f"with `qemu-img convert -f {fmt} {CONVERT_HINT} {src} OUT.vhd`")
    assert not (tmp_path / "out.vhd").exists()


@pytest.mark.parametrize("how", ["named .img", "--raw"])
@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vdi"])
def test_another_format_is_never_read_as_raw_data(foreign, fmt, how, cli, tmp_path):
    """A qcow2 named disk.img (or given with --raw) became a tiny 'Azure OK' VHD of its own
    bytes, exit 0: raw means raw data, and the image it holds would be lost."""
    src = foreign[fmt]
    if how == "named .img":
        src = tmp_path / "disk.img"
        src.write_bytes(foreign[fmt].read_bytes())
    for command in (["prepare", str(src), "-o", str(tmp_path / "out.vhd")],
                    ["convert", str(src), str(tmp_path / "out.vhd"), "--to", "fixed"]):
        done = cli(*command, *(["--raw"] if how == "--raw" else []))
        assert done.code == 2 and f"is a {fmt} image" in done.err and "qemu-img convert" in done.err, done.err
        assert len(done.err.strip().splitlines()) == 1 and not (tmp_path / "out.vhd").exists()


def test_a_vhdx_is_not_read_as_raw_data(vhdx, cli, tmp_path):
    done = cli("convert", str(vhdx["qemu-32m"]), str(tmp_path / "out.vhd"), "--to", "fixed", "--raw")
    assert done.code == 2 and "is a VHDX image, not raw data" in done.err and not (tmp_path / "out.vhd").exists()


def test_the_data_write_guid_is_the_vhd_uuid_convert_keeps(vhdx, cli, tmp_path):
    """--keep-uuid: a VHDX's children name it by its data write GUID (parent_linkage)."""
    out = tmp_path / "kept.vhd"
    assert cli("convert", str(vhdx["diff-base"]), str(out), "--to", "fixed", "--keep-uuid").code == 0
    uuid = parse_footer(out.read_bytes()[-512:]).unique_id
    assert UUID(bytes_le=uuid) == mk.guid(0xBA)
