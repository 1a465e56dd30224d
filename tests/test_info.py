"""`vhdtool info`: decoded fields, JSON, one-line errors, footer-only reads on fixed images."""

import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURES
from oracles import vhdtool
from vhdtool.workflows.create import create
from vhdtool.workflows.info import describe


def test_info_json_fields_of_a_qemu_dynamic_image():
    data = json.loads(vhdtool("info", "--json", str(FIXTURES / "qemu-dynamic-20m.vhd"), check=True).stdout)
    assert data["type"] == "dynamic" and data["virtual_size"] == 20_994_048
    f = data["footer"]
    assert (f["creator_application"], f["creator_host_os"], f["disk_type"]) == ("qemu", "Windows", "dynamic")
    assert f["geometry"] == {"cylinders": 603, "heads": 4, "sectors_per_track": 17, "capacity": 20_994_048}
    assert f["checksum_valid"] is True and f["timestamp"].endswith("Z")
    h = data["dynamic_header"]
    assert (h["table_offset"], h["max_table_entries"], h["block_size"]) == (1536, 11, 2 * 1024 * 1024)
    assert data["allocated_blocks"] == 3 and data["block_count"] == 11


def test_info_shows_the_whole_chain_and_locators():
    data = describe(str(FIXTURES / "chain-child2.vhd"))
    assert [p["path"].rsplit("/", 1)[1] for p in data["parent_chain"]] == ["chain-child1.vhd", "chain-base.vhd"]
    locs = data["dynamic_header"]["parent_locators"]
    assert [(loc["platform_code"], loc["path"], loc["data_space"]) for loc in locs] == [
        ("W2ru", ".\\chain-child1.vhd", 512),
        ("MacX", "file://./chain-child1.vhd", 512),
    ]
    child1 = describe(str(FIXTURES / "chain-child1.vhd"))["dynamic_header"]
    assert child1["parent_name"] == "C:\\VMs\\chain-base.vhd"
    assert child1["parent_unique_id"] == "09090909-0909-0909-0909-090909090909"


def test_creator_quirks_are_shown_as_text():
    d2v = describe(str(FIXTURES / "disk2vhd-fixed.vhd"))["footer"]
    assert (d2v["creator_application"], d2v["creator_name"]) == ("d2v\\0", "Sysinternals Disk2vhd")
    wa = describe(str(FIXTURES / "azure-wa-fixed-4m.vhd"))
    assert (wa["footer"]["creator_application"], wa["footer"]["creator_version"]) == ("wa\\0\\0", "7.0")
    assert wa["qemu_7_2_virtual_size"] == 4_177_920 != wa["virtual_size"]
    tap = describe(str(FIXTURES / "tap-dynamic.vhd"))["footer"]
    assert tap["creator_host_os"] == "none"


def test_human_output_is_a_table():
    out = vhdtool("info", str(FIXTURES / "windows-fixed-10m.vhd"), check=True).stdout
    assert "  virtual size           10 MiB" in out
    assert "  creator application  win " in out


def bad_inputs(tmp_path):
    (tmp_path / "empty.vhd").write_bytes(b"")
    (tmp_path / "short.vhd").write_bytes(b"x" * 300)
    (tmp_path / "random.vhd").write_bytes(os.urandom(64 * 1024))
    os.mkfifo(tmp_path / "fifo.vhd")
    return {
        "empty.vhd": "the file is empty",
        "short.vhd": "the file is 300 bytes, smaller than a VHD footer",
        "random.vhd": "no VHD footer",
        "fifo.vhd": "is not a regular file",
        "missing.vhd": "no such file",
        ".": "is a directory",
    }


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    for name, message in bad_inputs(tmp_path).items():
        proc = vhdtool("info", str(tmp_path / name))
        assert proc.returncode == 2, name
        assert proc.stdout == "" and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, proc.stderr)
        assert str(tmp_path / name).rstrip("/.") in lines[0]


def test_info_reads_only_the_footer_of_a_fixed_image(tmp_path, monkeypatch):
    path = tmp_path / "big.vhd"
    create(path, 3 * 1024**4 // 2)  # 1.5 TiB, sparse
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append((n, off)) or real_pread(fd, n, off))
    monkeypatch.setattr(os, "preadv", lambda *a: pytest.fail("preadv of image data"))
    data = describe(str(path))
    assert data["virtual_size"] == 3 * 1024**4 // 2
    # the footer, the first sector (check's fixed.head-cookie rule), and the MBR (no partition
    # table: no signature, nothing more read)
    assert reads == [(512, path.stat().st_size - 512), (512, 0), (512, 0)]
    assert data["partitions"]["scheme"] is None


def test_damaged_image_shows_its_fields_and_findings_exit_1(tmp_path):
    """Like qemu-img info: what could be decoded, plus what is wrong (was: exit 2, one line)."""
    raw = bytearray((FIXTURES / "windows-fixed-10m.vhd").read_bytes())
    raw[-512 + 64] ^= 0xFF  # the stored checksum no longer matches
    (tmp_path / "badsum.vhd").write_bytes(raw)
    proc = vhdtool("info", str(tmp_path / "badsum.vhd"))
    assert proc.returncode == 1 and proc.stderr == ""
    assert "  checksum valid       no" in proc.stdout and "  virtual size           10 MiB" in proc.stdout
    assert "error   footer.checksum" in proc.stdout

    data = bytearray((FIXTURES / "qemu-dynamic-20m.vhd").read_bytes())
    (tmp_path / "cut.vhd").write_bytes(data[: len(data) - 512 - 4096])  # inside the last block
    proc = vhdtool("info", "--json", str(tmp_path / "cut.vhd"))
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["dynamic_header"]["block_size"] == 2 * 1024 * 1024 and out["allocated_blocks"] == 3
    assert [f["code"] for f in out["findings"]] == ["footer.tail-missing", "bat.block-truncated"]


def test_child_without_its_parent_shows_its_own_fields_and_where_it_looked(tmp_path):
    child = tmp_path / "chain-child1.vhd"
    child.write_bytes((FIXTURES / "chain-child1.vhd").read_bytes())  # parent not beside it
    proc = vhdtool("info", str(child))
    assert proc.returncode == 1 and proc.stderr == ""
    assert "  type                   differencing" in proc.stdout
    assert "  parent name        C:\\VMs\\chain-base.vhd" in proc.stdout  # one backslash each
    (line,) = [ln for ln in proc.stdout.splitlines() if "parent.missing" in ln]
    assert "parent image not found (tried" in line and "'C:\\\\VMs\\\\chain-base.vhd'" not in line


def test_windows_locator_paths_are_shown_as_stored():
    out = vhdtool("info", str(FIXTURES / "chain-child2.vhd"), check=True).stdout
    assert "  locator W2ru: .\\chain-child1.vhd (" in out


@pytest.mark.parametrize("command", ["info", "check"])
def test_fixed_image_needs_neither_numpy_nor_the_azure_sdk(command):
    """Start-up (#17): numpy is for BAT work, the Azure SDK for blobs; a fixed image needs neither."""
    code = (
        "import sys\n"
        "from vhdtool.cli import main\n"
        f"sys.argv = ['vhdtool', {command!r}, {str(FIXTURES / 'windows-fixed-10m.vhd')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "print('heavy:', sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'azure'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "heavy: []"


def test_info_json_redacts_a_signed_url_used_as_a_file_name(tmp_path):
    """The path field of `info --json` (and check's messages) passed a SAS signature through
    when a signed URL had been saved as a file name."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import FIXTURES

    src = tmp_path / "a?sig=SECRET.vhd"
    shutil.copy(FIXTURES / "windows-fixed-10m.vhd", src)
    for args in (["info", str(src), "--json"], ["check", str(src), "--json"]):
        done = subprocess.run([sys.executable, "-m", "vhdtool.cli", *args], capture_output=True, text=True)
        assert "SECRET" not in done.stdout + done.stderr, args
        assert "a?sig=REDACTED" in json.loads(done.stdout)["path"]
