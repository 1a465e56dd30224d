"""`vhdtool image capture` reads the OS disk's partition table (disks made by sfdisk and sgdisk):
the Hyper-V generation recorded, --hyper-v-generation refused when the disk contradicts it,
--os-type defaulted from the partition types; the field shown, carried to deploy, type-checked
when read, and absent from older records without harm."""

from __future__ import annotations

import json
import re

import make_partition_fixtures
import pytest
from test_partitions import layout_of
from test_upload import conn_env
from test_vmimage_azure import put_disk, store_args
from test_vmimage_local import MiB, everything, shown

from vhdtool.disk.partitions import contradiction


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_partition_fixtures.make(tmp_path_factory.mktemp("partitions"))


def capture(cli, name: str, disk, store, *extra: str):
    return cli("image", "capture", name, "--os-disk", str(disk), "--os-state", "generalized",
               "--store", str(store), "--json", *extra)


def one_line_refusal(done, store, message: str) -> None:
    assert done.code == 2 and re.search(message, done.err), done.err
    assert done.err.startswith("vhdtool: error: ") and done.err.count("\n") == 1 and not done.out
    assert not (store / "images").exists() and not (store / "vhds").exists()


@pytest.mark.parametrize("fixture, os_type, generation", [
    ("gpt-esp-linux", "Linux", "V2"),
    ("gpt-esp-windows", "Windows", "V2"),
    ("gpt-bios-esp-linux", "Linux", "V2"),  # boots either way: UEFI preferred, as Ubuntu's cloud images
    ("mbr-linux", "Linux", "V1"),
    ("mbr-windows", "Windows", "V1"),
])
def test_generation_and_os_type_from_the_partition_table(fixture, os_type, generation, images, cli, tmp_path) -> None:
    store = tmp_path / "store"
    done = capture(cli, "img", images[fixture], store)
    assert done.code == 0 and done.err == "", done.err  # the disk said everything: no warning
    record = json.loads(done.out)
    assert (record["osType"], record["hyperVGeneration"]) == (os_type, generation)
    assert record["osDisk"]["metadata"]["microsoftazurecompute_ostype"] == os_type
    assert (store / "vhds" / record["osDisk"]["name"]).read_bytes() == images[fixture].read_bytes()


def test_generation_is_shown_listed_and_carried_to_deploy(images, cli, tmp_path) -> None:
    store = tmp_path / "store"
    assert capture(cli, "uefi", images["gpt-esp-windows"], store).code == 0
    record = shown(cli, store, "uefi")
    assert record == json.loads((store / "images" / "uefi.json").read_text())  # the record round-trips
    assert record["hyperVGeneration"] == "V2"
    text = cli("image", "show", "uefi", "--store", str(store)).out.splitlines()
    assert text[0] == f"image uefi: Windows, Generalized, Hyper-V generation V2, captured {record['capturedAt']}"
    listing = cli("image", "list", "--store", str(store)).out.splitlines()
    assert listing[0].split()[:4] == ["NAME", "OS", "STATE", "GEN"]
    assert listing[1].split()[:4] == ["uefi", "Windows", "Generalized", "V2"]
    assert [r["hyperVGeneration"] for r in json.loads(cli("image", "list", "--store", str(store), "--json").out)] == ["V2"]

    deployed = cli("image", "deploy", "uefi", "--vm", "vm1", "--store", str(store), "--json")
    assert deployed.code == 0, deployed.err
    vm = json.loads(deployed.out)
    assert vm["hyperVGeneration"] == "V2" == json.loads((store / "vms" / "vm1.json").read_text())["hyperVGeneration"]
    text = cli("image", "deploy", "uefi", "--vm", "vm2", "--store", str(store)).out.splitlines()
    assert text[0] == f"VM vm2 deployed from image uefi in {store}, Hyper-V generation V2"


@pytest.mark.parametrize("fixture, given", [("gpt-esp-windows", "V1"), ("gpt-esp-linux", "v1"),
                                            ("mbr-windows", "V2"), ("mbr-linux", "v2")])
def test_a_generation_the_disk_cannot_boot_with_is_refused(fixture, given, images, cli, tmp_path) -> None:
    store = tmp_path / "store"
    why = contradiction(layout_of(images[fixture]), given.upper())
    assert why is not None and why.startswith(f"--hyper-v-generation {given.upper()} contradicts the disk: ")
    done = capture(cli, "img", images[fixture], store, "--hyper-v-generation", given)
    one_line_refusal(done, store, re.escape(f"{images[fixture]}: {why}"))


@pytest.mark.parametrize("fixture, given", [("gpt-esp-linux", "V2"), ("mbr-windows", "v1"),
                                            ("gpt-bios-esp-linux", "V1"),  # its BIOS boot partition
                                            ("gpt-no-esp", "V1"), ("gpt-no-esp", "V2"),  # the disk cannot tell
                                            ("no-table", "V2")])
def test_a_generation_the_disk_allows_is_recorded(fixture, given, images, cli, tmp_path) -> None:
    done = capture(cli, "img", images[fixture], tmp_path / "store", "--hyper-v-generation", given, "--os-type", "linux")
    assert done.code == 0 and "generation" not in done.err, done.err
    assert json.loads(done.out)["hyperVGeneration"] == given.upper()


def test_a_disk_without_a_partition_table(images, cli, tmp_path) -> None:
    """Neither OS nor generation can be told: the OS type is asked for; the generation is
    recorded unknown, with a warning saying how to record it."""
    store = tmp_path / "store"
    asked = capture(cli, "raw", images["no-table"], store)
    one_line_refusal(asked, store, re.escape(f"{images['no-table']}: the OS type cannot be told from the partition "
                                             "types (no Windows or Linux partition type): pass --os-type windows or linux"))
    done = capture(cli, "raw", images["no-table"], store, "--os-type", "linux")
    assert done.code == 0
    record = json.loads(done.out)
    assert (record["osType"], record["hyperVGeneration"]) == ("Linux", None)
    assert done.err.count("\n") == 1 and done.err.startswith(f"vhdtool: warning: {images['no-table']}: the Hyper-V "
                                                             "generation cannot be told from the partition table")
    assert done.err.endswith("recorded as unknown: pass --hyper-v-generation V1 or V2 to record it\n")
    assert "Hyper-V generation unknown" in cli("image", "show", "raw", "--store", str(store)).out
    assert cli("image", "list", "--store", str(store)).out.splitlines()[1].split()[3] == "-"


def test_gpt_without_esp_warns_too(images, cli, tmp_path) -> None:
    done = capture(cli, "data", images["gpt-no-esp"], tmp_path / "store")  # Linux types: the OS is told
    assert done.code == 0
    assert (json.loads(done.out)["osType"], json.loads(done.out)["hyperVGeneration"]) == ("Linux", None)
    assert "GPT without an EFI system partition or BIOS boot partition" in done.err
    assert "pass --hyper-v-generation V1 or V2" in done.err


def test_partition_table_problems_are_warned_about(images, cli, tmp_path) -> None:
    """fdisk -b 4096 wrote this GPT for 4096-byte sectors; Azure's disks have 512-byte ones."""
    done = capture(cli, "k4", images["gpt-4k-sectors"], tmp_path / "store")
    assert done.code == 0 and json.loads(done.out)["hyperVGeneration"] == "V2"
    assert done.err == (f"vhdtool: warning: {images['gpt-4k-sectors']}: partition table problem: the GPT is laid out "
                        "for 4096-byte sectors but the disk has 512-byte sectors: firmware reading it as it is finds "
                        "no GPT\n")


def test_os_type_against_the_partition_types_is_a_warning(images, cli, tmp_path) -> None:
    done = capture(cli, "img", images["gpt-esp-windows"], tmp_path / "store", "--os-type", "LINUX")
    assert done.code == 0
    record = json.loads(done.out)
    assert (record["osType"], record["hyperVGeneration"]) == ("Linux", "V2")  # as given: types are a hint
    assert done.err == (f"vhdtool: warning: {images['gpt-esp-windows']}: --os-type Linux, but the partition types say "
                        "Windows: 2 Microsoft reserved, 3 Microsoft basic data, 4 Windows recovery environment; "
                        "captured as Linux, as given\n")
    agreeing = capture(cli, "img2", images["gpt-esp-windows"], tmp_path / "store", "--os-type", "windows")
    assert agreeing.code == 0 and agreeing.err == ""


def test_partition_types_of_two_systems_ask_for_os_type(images, cli, tmp_path, monkeypatch) -> None:
    """A dual-boot disk (sgdisk: ESP, Windows basic data, Linux root): no single OS."""
    monkeypatch.setitem(make_partition_fixtures.SGDISK, "dual-boot", [
        "-n", "1:2048:+2M", "-t", "1:EF00", "-n", "2:0:+6M", "-t", "2:0700", "-n", "3:0:0", "-t", "3:8304"])
    img, vhd = tmp_path / "dual-boot.img", tmp_path / "dual-boot.vhd"
    make_partition_fixtures.partition("dual-boot", img)
    make_partition_fixtures.as_fixed_vhd(img, vhd, 99)
    store = tmp_path / "store"
    done = capture(cli, "dual", vhd, store)
    one_line_refusal(done, store, r"dual-boot\.vhd: the OS type cannot be told from the partition types \(partition "
                                  r"types of both Windows and Linux \(.*\): no single OS\): pass --os-type windows or linux")
    chosen = capture(cli, "dual", vhd, store, "--os-type", "windows")
    assert chosen.code == 0 and chosen.err == "", chosen.err
    assert (json.loads(chosen.out)["osType"], json.loads(chosen.out)["hyperVGeneration"]) == ("Windows", "V2")


def test_bad_generation_value_is_a_usage_error(images, cli, tmp_path) -> None:
    store = tmp_path / "store"
    done = capture(cli, "img", images["mbr-linux"], store, "--hyper-v-generation", "2")
    one_line_refusal(done, store, r"--hyper-v-generation: '2' is not one of V1, V2$")


def test_old_records_without_the_field_load(images, cli, tmp_path) -> None:
    """A record written before hyperVGeneration existed: listed, shown and deployed as null."""
    store = tmp_path / "store"
    assert capture(cli, "old", images["mbr-linux"], store).code == 0
    path = store / "images" / "old.json"
    record = json.loads(path.read_text())
    del record["hyperVGeneration"]
    path.write_text(json.dumps(record))
    assert shown(cli, store, "old") == record | {"hyperVGeneration": None}
    assert "Hyper-V generation unknown" in cli("image", "show", "old", "--store", str(store)).out
    assert json.loads(cli("image", "list", "--store", str(store), "--json").out)[0]["hyperVGeneration"] is None
    deployed = cli("image", "deploy", "old", "--vm", "vm1", "--store", str(store), "--json")
    assert deployed.code == 0, deployed.err
    assert json.loads(deployed.out)["hyperVGeneration"] is None
    assert json.loads(path.read_text()) == record  # reading never rewrites the record


@pytest.mark.parametrize("value", [2, ["V2"], True])
def test_generation_of_the_wrong_type_is_a_one_line_error(value, images, cli, tmp_path) -> None:
    store = tmp_path / "store"
    assert capture(cli, "bad", images["mbr-linux"], store).code == 0
    path = store / "images" / "bad.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"hyperVGeneration": value}))
    before = everything(store)
    for args in (("image", "list"), ("image", "show", "bad"), ("image", "deploy", "bad", "--vm", "vm1")):
        done = cli(*args, "--store", str(store))
        message = f"the image record 'bad' is malformed ('hyperVGeneration' is a {type(value).__name__})"
        assert done.code == 2 and message in done.err and done.err.count("\n") == 1, done.err
    assert everything(store) == before


def test_blob_os_disk_in_an_azure_store(images, azurite, container, cli) -> None:
    """An OS disk captured server-side from a page blob: its table read by ranged GETs."""
    from azure.storage.blob import ContainerClient

    sources = ContainerClient.from_connection_string(azurite.connection_string, container.container_name + "src")
    sources.create_container()
    blob = put_disk(sources, "vm-os.vhd", images["gpt-esp-windows"])
    done = cli("image", "capture", "web", "--os-disk", blob.url, "--os-state", "generalized",
               *store_args(container), "--json", env=conn_env(azurite))
    assert done.code == 0 and done.err == "", done.err
    record = json.loads(done.out)
    assert (record["osType"], record["hyperVGeneration"]) == ("Windows", "V2")
    refused = cli("image", "capture", "web2", "--os-disk", blob.url, "--os-state", "generalized",
                  "--hyper-v-generation", "V1", *store_args(container), env=conn_env(azurite))
    assert refused.code == 2 and refused.err.count("\n") == 1, refused.err
    assert "--hyper-v-generation V1 contradicts the disk: GPT with an EFI system partition (1)" in refused.err
    assert {b.name for b in container.list_blobs()} == {record["osDisk"]["name"], "images/web.json"}
    assert record["osDisk"]["sizeBytes"] == 16 * MiB + 512


def test_a_local_os_disk_is_parsed_once_for_check_and_table(images, cli, tmp_path, monkeypatch) -> None:
    """The check and the partition table come from one open disk (vhdtool.disk.inspect)."""
    import vhdtool.disk.image
    import vhdtool.workflows.check.run

    parsed = []
    for module in (vhdtool.disk.image, vhdtool.workflows.check.run):
        def counted(path, *a, real=module.inspect_open):
            parsed.append(path)
            return real(path, *a)

        monkeypatch.setattr(module, "inspect_open", counted)
    done = capture(cli, "once", images["gpt-esp-linux"], tmp_path / "store")
    assert done.code == 0 and json.loads(done.out)["hyperVGeneration"] == "V2"
    assert parsed.count(images["gpt-esp-linux"]) == 1, parsed
