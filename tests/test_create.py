"""`vhdtool create`: qemu-img 7.2 and libvhdi read our images at exactly the requested size."""

import pytest

from oracles import qemu_info, qemu_raw, vhdi_info, vhdtool

GiB, MiB = 1024**3, 1024**2


@pytest.mark.parametrize(
    "kind, size",
    [
        ("fixed", GiB),  # not CHS-representable: qemu would round a "qemu" image to 1,073,995,776
        ("fixed", 20 * MiB),
        ("fixed", 127 * GiB),
        ("fixed", 3 * 1024**4 // 2),  # 1.5 TiB: geometry capped at 65535/16/255
        ("dynamic", GiB),
        ("dynamic", 20 * MiB),
        ("dynamic", 127 * GiB),
        ("dynamic", 3 * 1024**4 // 2),
    ],
)
def test_oracles_read_the_requested_size(tmp_path, kind, size):
    path = tmp_path / "new.vhd"
    proc = vhdtool("create", str(path), "--size", str(size), "--type", kind)
    assert proc.returncode == 0, proc.stderr
    assert qemu_info(path)["virtual-size"] == size
    vhdi = vhdi_info(path)
    assert (vhdi["virtual_size"], vhdi["type"]) == (size, kind)
    on_disk = path.stat().st_blocks * 512
    assert on_disk <= 64 * 1024 + 4 * (size // (2 * MiB))  # footer, header and BAT only


def test_created_images_read_as_zeros(tmp_path):
    for kind in ("fixed", "dynamic"):
        path = tmp_path / f"{kind}.vhd"
        vhdtool("create", str(path), "--size", "4MiB", "--type", kind, check=True)
        assert qemu_raw(path, tmp_path / "out.raw") == bytes(4 * MiB)


def test_file_layout_of_a_fixed_image(tmp_path):
    path = tmp_path / "f.vhd"
    vhdtool("create", str(path), "--size", "20MiB", check=True)
    data = path.read_bytes()
    assert len(data) == 20 * MiB + 512 and not any(data[: 20 * MiB])
    assert data[-512:-504] == b"conectix" and data[-484:-480] == b"win "


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "x.vhd"
    path.write_bytes(b"keep me")
    proc = vhdtool("create", str(path), "--size", "1MiB")
    assert proc.returncode == 2 and "already exists (use --force" in proc.stderr
    assert path.read_bytes() == b"keep me"
    assert vhdtool("create", str(path), "--size", "1MiB", "--force").returncode == 0
    assert path.stat().st_size == MiB + 512
    assert [p.name for p in tmp_path.iterdir()] == ["x.vhd"]  # no temporary left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "1000"], "not a positive multiple of 512"),
        (["--size", "ten"], "'ten' is not a size"),
        (["--size", "4MiB", "--type", "dynamic", "--block-size", "3MiB"], "not a power of two"),
        (["--size", "3TiB", "--type", "dynamic"], "a dynamic VHD holds at most"),
    ],
)
def test_bad_sizes(tmp_path, args, message):
    proc = vhdtool("create", str(tmp_path / "x.vhd"), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_warns_when_azure_would_refuse(tmp_path):
    proc = vhdtool("create", str(tmp_path / "x.vhd"), "--size", "1000448")
    assert proc.returncode == 0 and "not a whole number of MiB" in proc.stderr
