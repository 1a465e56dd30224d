"""`vhdtool image` on an Azure store (a container in Azurite, real HTTP on loopback): capture by
server-side Copy Blob from blobs and by upload from files, the metadata Azure sets, exact
names and bytes, deploy, delete, orphans, leases, SAS stores and secrets, races."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from conftest import race
from helpers import AZURE_KEYS, blobs, conn_env, dated, found, md5_b64, MiB, put_disk, scattered_vhd, three_disks
from vhdtool.azure.location import BlobLocation, ContainerLocation
from vhdtool.workflows.create import create
from vhdtool.format.vhd.footer import DiskType
from vhdtool.workflows.store.azure import AzureStore


def content(client, name: str) -> bytes:
    return client.get_blob_client(name).download_blob().readall()


def store_args(client) -> list[str]:
    return ["--container", client.container_name]


def test_capture_deploy_delete_orphans(azurite, container, sources, cli, tmp_path) -> None:
    """The acceptance path: OS disk copied server-side from a blob, data disks uploaded."""
    env = conn_env(azurite)
    disks = three_disks(tmp_path)
    os_blob = put_disk(sources, "vm-os.vhd", disks["os"])
    assert os_blob.get_blob_properties().content_settings.content_md5 is None  # so capture computes it
    args = ["image", "capture", "web", "--os-disk", os_blob.url, "--os-type", "windows", "--os-state",
            "generalized", "--data-disk", f"0={disks['data0']},caching=ReadWrite", "--data-disk",
            f"1={disks['data1']}", "--source-vm", "vm", *store_args(container), "--json"]
    started = datetime.now(timezone.utc).replace(microsecond=0)
    done = cli(*args, env=env)
    assert done.code == 0, done.err
    record = json.loads(done.out)
    entries = [record["osDisk"], *record["dataDisks"]]
    names = [d["name"] for d in entries]
    for name, pattern in zip(names, [r"web-os-DATE\.vhd", r"web-datadisk-0-DATE\.vhd", r"web-datadisk-1-DATE\.vhd"]):
        assert dated(pattern).match(name), name
    stored = blobs(container)
    assert set(stored) == set(names) | {"images/web.json"}
    base = f"{azurite.blob_endpoint}/{container.container_name}"
    for entry, role, lun, caching, kind in zip(entries, ("os", "data0", "data1"), (None, 0, 1),
                                               ("ReadWrite", "ReadWrite", "None"), ("OSDisk", "DataDisk", "DataDisk")):
        data = disks[role].read_bytes()
        props = container.get_blob_client(entry["name"]).get_blob_properties()
        assert content(container, entry["name"]) == data
        assert str(props.blob_type.value) == "PageBlob"
        wanted = dict(zip(AZURE_KEYS, (kind, "Generalized", "Windows", "vm")))
        assert {k: props.metadata[k] for k in AZURE_KEYS} == wanted == entry["metadata"]
        assert base64.b64encode(bytes(props.content_settings.content_md5)).decode() == md5_b64(data)
        assert entry["contentMd5"] == md5_b64(data) and entry["sizeBytes"] == len(data)
        assert entry.get("lun") == lun and entry["hostCaching"] == caching
        assert entry["location"] == f"{base}/{entry['name']}"
        copy = entry["copy"]
        assert copy["status"] == "success" and copy["progress"] == f"{len(data)}/{len(data)}"
        assert copy["bytesCopied"] == copy["bytesTotal"] == len(data)
        assert started <= datetime.fromisoformat(copy["completionTime"].replace("Z", "+00:00"))
    os_copy = record["osDisk"]["copy"]
    props = container.get_blob_client(names[0]).get_blob_properties()
    assert os_copy["method"] == "copy-blob" and os_copy["id"] == props.copy.id and props.copy.status == "success"
    assert os_copy["source"] == os_blob.url
    assert [d["copy"]["method"] for d in record["dataDisks"]] == ["upload", "upload"]
    assert record["dataDisks"][0]["copy"]["source"] == str(disks["data0"])
    assert (record["osType"], record["osState"], record["capturedVmKey"]) == ("Windows", "Generalized", "vm")
    assert record["store"] == base
    assert json.loads(content(container, "images/web.json")) == record
    assert stored["images/web.json"].metadata["vhdtool_kind"] == "vmimage"
    assert stored["images/web.json"].metadata["microsoftazurecompute_osstate"] == "Generalized"

    listed = cli("image", "list", *store_args(container), "--json", env=env)
    assert [(r["name"], r["disks"]) for r in json.loads(listed.out)] == [("web", 3)]

    deployed = cli("image", "deploy", "web", "--vm", "vm1", *store_args(container), "--json", env=env)
    assert deployed.code == 0, deployed.err
    vm = json.loads(deployed.out)
    assert json.loads(content(container, "vms/vm1.json")) == vm
    profile = vm["storageProfile"]
    assert profile["osDisk"]["vhd"]["uri"] == f"{base}/vm1-os.vhd"
    assert profile["osDisk"]["image"]["uri"] == record["osDisk"]["location"]
    assert [(d["lun"], d["name"], d["createOption"], d["caching"]) for d in profile["dataDisks"]] == [
        (0, "vm1-datadisk-0", "FromImage", "ReadWrite"), (1, "vm1-datadisk-1", "FromImage", "None")]
    assert vm["provisioningRequired"] is True
    vm_blobs = ["vm1-os.vhd", "vm1-datadisk-0.vhd", "vm1-datadisk-1.vhd"]
    for vm_blob, image_blob in zip(vm_blobs, names):
        assert content(container, vm_blob) == content(container, image_blob)
    copied_from = container.get_blob_client("vm1-os.vhd").get_blob_properties().copy.source
    assert copied_from == f"{base}/{names[0]}"  # the store's key authorizes it: no credential kept in it
    vm_meta = container.get_blob_client("vm1-datadisk-1.vhd").get_blob_properties().metadata
    assert (vm_meta["microsoftazurecompute_vmname"], vm_meta["microsoftazurecompute_disktype"]) == ("vm1", "DataDisk")

    deleted = cli("image", "delete", "web", *store_args(container), "--json", env=env)
    assert deleted.code == 0, deleted.err
    result = json.loads(deleted.out)
    assert result["deletedDisks"] == [] and [d["name"] for d in result["leftBehind"]] == names
    assert set(blobs(container)) == set(names) | set(vm_blobs) | {"vms/vm1.json"}
    orphans = json.loads(cli("image", "orphans", *store_args(container), "--json", env=env).out)
    assert {o["name"]: o["size"] for o in orphans} == {n: 10 * MiB + 512 for n in names}

    again = cli(*args, env=env)
    assert again.code == 0, again.err
    second = json.loads(again.out)
    renamed = [d["name"] for d in [second["osDisk"], *second["dataDisks"]]]
    assert renamed == [f"{n[:-4]}-01.vhd" for n in names]
    removed = cli("image", "delete", "web", "--delete-disks", *store_args(container), "--json", env=env)
    assert [d["name"] for d in json.loads(removed.out)["deletedDisks"]] == renamed
    assert set(blobs(container)) == set(names) | set(vm_blobs) | {"vms/vm1.json"}
    assert set(blobs(sources)) == {"vm-os.vhd"}  # a source is only ever read


def test_leased_source_generalized_refused_specialized_warned(azurite, container, sources, cli, tmp_path) -> None:
    env = conn_env(azurite)
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 2, 3)
    attached = put_disk(sources, "attached.vhd", disk)
    attached.acquire_lease(-1)  # an attached VM disk: infinite lease
    args = ["image", "capture", "img", "--os-disk", attached.url, "--os-type", "linux", *store_args(container)]
    refused = cli(*args, "--os-state", "generalized", env=env)
    assert refused.code == 2
    assert ("attached.vhd: is in use, under an infinite lease (a disk attached to a VM?): a generalized image "
            "is captured from a stopped VM; shut the VM down first") in refused.err
    assert blobs(container) == {}
    done = cli(*args, "--os-state", "specialized", "--json", env=env)
    assert done.code == 0, done.err
    assert "warning:" in done.err and "crash-consistent" in done.err
    record = json.loads(done.out)
    assert record["osDisk"]["crashConsistent"] is True
    assert content(container, record["osDisk"]["name"]) == disk.read_bytes()


def test_delete_disks_never_deletes_a_leased_disk(azurite, container, cli, tmp_path) -> None:
    env = conn_env(azurite)
    disks = three_disks(tmp_path)
    done = cli("image", "capture", "web", "--os-disk", str(disks["os"]), "--data-disk", f"3={disks['data0']}",
               "--os-type", "linux", "--os-state", "specialized", *store_args(container), "--json", env=env)
    assert done.code == 0, done.err
    record = json.loads(done.out)
    os_name, data_name = record["osDisk"]["name"], record["dataDisks"][0]["name"]
    container.get_blob_client(data_name).acquire_lease(-1)
    result = json.loads(cli("image", "delete", "web", "--delete-disks", *store_args(container), "--json", env=env).out)
    assert [d["name"] for d in result["deletedDisks"]] == [os_name]
    assert [(d["name"], d["reason"]) for d in result["leftBehind"]] == [
        (data_name, "under an infinite lease (a disk attached to a VM?)")]
    assert set(blobs(container)) == {data_name}
    orphans = json.loads(cli("image", "orphans", *store_args(container), "--json", env=env).out)
    assert [(o["name"], o["busy"]) for o in orphans] == [(data_name, "under an infinite lease (a disk attached to a VM?)")]


def test_sas_store_never_shows_or_stores_the_secret(azurite, container, cli, tmp_path) -> None:
    """A container URL with a SAS token as the store; a source blob of that container given
    without a SAS is reached with the store's."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    token = generate_container_sas(azurite.account_name, container.container_name, account_key=azurite.account_key,
                                   permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                      delete=True, list=True),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    signature = found(r"sig=([^&]+)", token).group(1)
    store = f"{azurite.blob_endpoint}/{container.container_name}?{token}"
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 2, 9)
    source = put_disk(container, "src.vhd", disk)
    done = cli("image", "capture", "web", "--os-disk", source.url, "--data-disk", f"0={disk}", "--os-type", "linux",
               "--os-state", "generalized", "--store", store, "--json")
    assert done.code == 0, done.err
    record = json.loads(done.out)
    assert record["store"] == f"{azurite.blob_endpoint}/{container.container_name}"
    deployed = cli("image", "deploy", "web", "--vm", "v", "--store", store)
    assert deployed.code == 0, deployed.err
    assert content(container, "v-os.vhd") == content(container, "v-datadisk-0.vhd") == disk.read_bytes()
    missing = cli("image", "capture", "x", "--os-disk", f"{source.url}-gone", "--os-type", "linux", "--os-state",
                  "generalized", "--store", store)
    assert missing.code == 2 and "BlobNotFound" in missing.err and len(missing.err.splitlines()) == 1
    listing = cli("image", "orphans", "--store", store)
    shown = "".join(o.out + o.err for o in (done, deployed, missing, listing))
    stored = content(container, "images/web.json").decode() + content(container, "vms/v.json").decode()
    stored += json.dumps({n: b.metadata for n, b in blobs(container).items()})
    for text in (shown, stored):
        assert signature not in text and signature.replace("%2B", "+").replace("%2F", "/") not in text
        assert azurite.account_key not in text


@pytest.mark.parametrize("kind", ["blob", "file"])
def test_concurrent_copies_never_share_a_name(kind, azurite, container, sources, tmp_path) -> None:
    """Six copies to one name at once, server-side (conditional Copy Blob) or uploaded
    (conditional create): the base name and -01..-05, each a complete copy."""
    disk = scattered_vhd(tmp_path / "d.vhd", 4 * MiB, 2, 11)
    store = AzureStore(ContainerLocation.from_connection_string(azurite.connection_string, container.container_name))
    source = BlobLocation.from_url(put_disk(sources, "d.vhd", disk).url) if kind == "blob" else disk
    results = race(lambda: store.copy_in(source, "r-os-2030-01-01", metadata={"k": "v"}, md5=True, log=print).name, 6)
    expected = {"r-os-2030-01-01"} | {f"r-os-2030-01-01-{n:02d}" for n in range(1, 6)}
    assert sorted(results) == sorted(expected) and set(blobs(container)) == expected
    for name in expected:
        assert content(container, name) == disk.read_bytes()
        assert blobs(container)[name].metadata["k"] == "v"


def test_refused_blobs_leave_nothing_behind(azurite, container, sources, cli, tmp_path) -> None:
    env = conn_env(azurite)
    good = put_disk(sources, "good.vhd", scattered_vhd(tmp_path / "g.vhd", 10 * MiB, 1, 1))
    dyn = tmp_path / "dyn.vhd"
    create(dyn, 10 * MiB, DiskType.DYNAMIC)
    dynamic = put_disk(sources, "dyn.vhd", dyn)
    block = sources.get_blob_client("block.vhd")
    block.upload_blob((tmp_path / "g.vhd").read_bytes())
    cases = [
        (dynamic.url, 1, r"dyn\.vhd: fails check --target azure: .*\[azure\.not-fixed\]; fix: download it"),
        (block.url, 2, r"block\.vhd: cannot be captured: it is a BlockBlob; a VM disk is a page blob"),
        (f"{good.url}.missing", 2, r"good\.vhd\.missing: .*404 BlobNotFound"),
    ]
    for url, code, message in cases:
        done = cli("image", "capture", "web", "--os-disk", good.url, "--data-disk", f"0={url}", "--os-type",
                   "linux", "--os-state", "generalized", *store_args(container), env=env)
        assert done.code == code and re.search(message, done.err), done.err
        assert len(done.err.splitlines()) == 1
        assert blobs(container) == {}


def test_local_store_takes_only_files(azurite, sources, cli, tmp_path) -> None:
    blob = put_disk(sources, "a.vhd", scattered_vhd(tmp_path / "a.vhd", 10 * MiB, 1, 1))
    store = tmp_path / "store"
    done = cli("image", "capture", "web", "--os-disk", blob.url, "--os-type", "linux", "--os-state", "specialized",
               "--store", str(store), env=conn_env(azurite))
    assert done.code == 2 and "a local store takes local VHD files" in done.err, done.err
    assert not store.exists()
