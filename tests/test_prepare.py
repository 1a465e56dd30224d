"""`vhdtool prepare`: any fixture to an image that passes check --target azure."""

import json

import pytest

import make_fixtures
from conftest import FIXTURES
from oracles import qemu_info, run, vhdi_info, vhdi_read, vhdtool
from helpers import content
from vhdtool.disk.image import open_disk
from vhdtool.workflows.prepare import prepare
from vhdtool.format.vhd.footer import FOOTER_SIZE, OUR_CREATOR, DiskType, new_footer, parse_footer, seal_footer

MiB = 1024 * 1024
VHDS = sorted(FIXTURES.glob("*.vhd"))


def check_json(path, target="azure"):
    proc = vhdtool("check", str(path), "--target", target, "--json")
    return proc.returncode, json.loads(proc.stdout)


def test_qemu_1g_fixed_becomes_the_next_whole_mib(tmp_path):
    src = tmp_path / "q.vhd"
    run("qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(src), "1G")
    run("qemu-io", "-f", "vpc", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa5 1073930240 64k", str(src))
    assert check_json(src)[0] == 1  # not a whole number of MiB
    proc = vhdtool("prepare", str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "q-azure.vhd"
    assert "1,073,995,776 -> 1,074,790,400 bytes" in proc.stdout  # exact: rounded, both are 1.00 GiB
    assert out.stat().st_size == 1_074_790_400 + 512
    assert out.stat().st_blocks * 512 <= 256 * 1024  # only the data and the footer
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == 1_074_790_400
    with open_disk(out) as disk, open_disk(src) as orig:
        assert disk.read(0, 65536) == orig.read(0, 65536) == b"\x5a" * 65536
        assert disk.read(1073930240, 65536) == b"\xa5" * 65536
        assert not any(disk.read(1_073_995_776, 1_074_790_400 - 1_073_995_776))
    assert check_json(out) == (0, check_json(out)[1])


@pytest.mark.parametrize("src", VHDS, ids=lambda p: p.name)
def test_every_fixture_prepares_to_a_passing_image(tmp_path, src):
    out = tmp_path / "out.vhd"
    proc = vhdtool("prepare", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, report = check_json(out)
    assert code == 0 and report["counts"]["error"] == 0, report
    size = report["virtual_size"]
    assert size % MiB == 0 and vhdi_info(out)["virtual_size"] == size
    # Every reader agrees, Azure's own "wa" image included (qemu 7.2 read its footer by CHS).
    assert qemu_info(out)["virtual-size"] == size
    expected = make_fixtures.chain_expected().get(src.name) or content(src)
    got = vhdi_read([out])
    assert got[: len(expected)] == expected and not any(got[len(expected) :])


def test_already_passing_source_is_left_alone(tmp_path):
    src = FIXTURES / "windows-fixed-10m.vhd"
    proc = vhdtool("prepare", str(src))
    assert proc.returncode == 0 and "already passes check --target azure: nothing written" in proc.stdout
    assert not (FIXTURES / "windows-fixed-10m-azure.vhd").exists()
    out = tmp_path / "copy.vhd"
    assert vhdtool("prepare", str(src), "-o", str(out)).returncode == 0
    assert out.read_bytes() == src.read_bytes()


def test_windows_dynamic_fails_check_then_prepares(tmp_path):
    src = FIXTURES / "windows-dynamic-10m.vhd"
    code, report = check_json(src)
    assert code == 1 and any("vhdtool prepare" in (f["fix"] or "") for f in report["findings"])
    out = tmp_path / "w.vhd"
    assert vhdtool("prepare", str(src), "-o", str(out)).returncode == 0
    assert check_json(out)[0] == 0 and content(out) == content(src)


def test_raw_rule_is_stated_and_managed_disk_minimum(tmp_path):
    proc = vhdtool("prepare", str(FIXTURES / "raw-3m.img"), "-o", str(tmp_path / "r.vhd"),
                   "--target", "azure-managed-disk")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "read as raw (no VHD footer, name ends in .img)" in proc.stdout
    assert check_json(tmp_path / "r.vhd", "azure-managed-disk")[1]["virtual_size"] == 20 * MiB
    assert content(tmp_path / "r.vhd")[: 3 * MiB] == (FIXTURES / "raw-3m.img").read_bytes()


def test_bad_input(tmp_path):
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(b"\x01" * 4096)
    proc = vhdtool("prepare", str(bad))
    assert proc.returncode == 2 and "not a VHD" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.vhd"]
    proc = vhdtool("prepare", str(FIXTURES / "windows-dynamic-10m.vhd"), "--target", "generic")
    assert proc.returncode == 2 and "is not one of azure, azure-managed-disk" in proc.stderr


@pytest.mark.parametrize("name, code", [
    ("dynamic-truncated-mid-block.vhd", "footer.tail-missing"),  # then bat.block-truncated
    ("dynamic-bat-entry-past-eof.vhd", "bat.entry-past-eof"),
    ("dynamic-bat-overlap.vhd", "bat.overlap"),
])
def test_damage_the_reader_tolerates_is_refused_not_converted(tmp_path, name, code):
    """The reader reads missing blocks as zeros; prepare must not turn damage into a 'passing' image."""
    import make_corpus

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for make in make_corpus.MAKERS:
        make(corpus)
    out = tmp_path / "out.vhd"
    proc = vhdtool("prepare", str(corpus / name), "-o", str(out))
    assert proc.returncode == 2 and f"damaged ({code}" in proc.stderr and "vhdtool check" in proc.stderr
    assert not out.exists() and "Traceback" not in proc.stderr


def fixed_vhd(path, data: bytes, creator: bytes):
    """A fixed VHD as another tool writes it: spec CHS geometry, its own creator code."""
    footer = new_footer(len(data), DiskType.FIXED)
    footer.creator_application = creator
    path.write_bytes(data + seal_footer(footer))


@pytest.mark.parametrize("creator", [b"vbox", b"vpc "])
def test_passing_image_qemu_sizes_by_chs_gets_our_footer(tmp_path, creator):
    """Issue 16 item 5: the image passes, but qemu-img 7.2 reads 5,222,400 bytes (CHS 150/4/17)."""
    src, out = tmp_path / "other.vhd", tmp_path / "other-azure.vhd"
    data = bytes(range(256)) * (5 * MiB // 256)
    fixed_vhd(src, data, creator)
    code, report = check_json(src)
    assert code == 0 and "qemu.chs-size" in {f["code"] for f in report["findings"]}
    assert qemu_info(src)["virtual-size"] == 5_222_400
    proc = vhdtool("prepare", str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing written" not in proc.stdout
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == 5 * MiB
    raw = out.read_bytes()
    assert raw[:-FOOTER_SIZE] == data and parse_footer(raw[-FOOTER_SIZE:]).creator_application == OUR_CREATOR
    code, report = check_json(out)
    # Only that the data has no partition table to tell the Hyper-V generation from.
    assert code == 0 and [f["code"] for f in report["findings"]] == ["partitions.generation-unknown"], report


def test_fixture_qemu_sizes_by_chs_gets_our_footer(tmp_path):
    src, out = FIXTURES / "azure-wa-fixed-4m.vhd", tmp_path / "wa.vhd"
    assert qemu_info(src)["virtual-size"] == 4_177_920
    assert prepare(src, tmp_path / "api.vhd").note == (
        "qemu-img 7.2 read 4,177,920 bytes from the old footer's geometry, other readers 4,194,304: "
        "a fresh footer makes them agree")
    assert vhdtool("prepare", str(src), "-o", str(out)).returncode == 0
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == 4 * MiB
    assert out.read_bytes()[:-FOOTER_SIZE] == src.read_bytes()[:-FOOTER_SIZE]


def test_image_smaller_than_the_minimum_is_rounded_up(tmp_path):
    """Issue 16 item 5: check says azure.too-small; prepare rounds up instead of refusing."""
    src, out = tmp_path / "small.vhd", tmp_path / "small-azure.vhd"
    data = b"\x5a" * 4096 + bytes(512 * 1024 - 4096)
    fixed_vhd(src, data, OUR_CREATOR)
    code, report = check_json(src)
    assert code == 1 and "azure.too-small" in {f["code"] for f in report["findings"]}
    proc = vhdtool("prepare", str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.stat().st_size == MiB + FOOTER_SIZE
    assert qemu_info(out)["virtual-size"] == vhdi_info(out)["virtual_size"] == MiB
    assert content(out) == data + bytes(MiB - len(data)) and check_json(out)[0] == 0


def test_the_source_is_parsed_once(tmp_path, monkeypatch):
    """Issue 13: prepare checked the source and then opened it, two parses of the same file;
    its findings now come with the disk. (The output is inspected once more, by its check.)"""
    import vhdtool.disk.inspect as inspect
    from vhdtool.workflows.prepare import prepare

    seen = []
    real = inspect.inspect_file
    monkeypatch.setattr(inspect, "inspect_file", lambda path, *a: seen.append(path.name) or real(path, *a))
    done = prepare(FIXTURES / "windows-dynamic-10m.vhd", tmp_path / "out.vhd")
    assert done.source_report.codes == ["azure.not-fixed"] and done.report.exit_code == 0
    assert seen == ["windows-dynamic-10m.vhd", "out.vhd"]
