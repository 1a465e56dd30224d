"""`vhdtool image` against hostile records and interrupted runs: records are untrusted input
(names validated when read, disks deleted only when no record refers to them), deploy says
what is wrong when a disk is missing, and a killed capture leaves nothing behind for good."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import blobs, capture_args, conn_env, MiB, put_disk, scattered_vhd, shown, three_disks, vhd_names


@pytest.fixture
def web(cli, tmp_path) -> tuple[Path, dict]:
    """A local store holding image web (three disks); its record."""
    store = tmp_path / "store"
    done = cli(*capture_args("web", three_disks(tmp_path), store))
    assert done.code == 0, done.err
    return store, shown(cli, store, "web")


@pytest.mark.parametrize("disk_name", ["../../secret.vhd", "/etc/passwd", "x\n", "..", "a/b.vhd"])
def test_record_with_a_disk_name_outside_the_store_is_refused(disk_name, web, cli, tmp_path) -> None:
    store, record = web
    secret = tmp_path / "secret.vhd"
    secret.write_bytes(b"not yours" * 100)
    record["osDisk"]["name"] = disk_name
    (store / "images" / "web.json").write_text(json.dumps(record))
    before = vhd_names(store)
    done = cli("image", "deploy", "web", "--vm", "vm1", "--store", str(store))
    assert done.code == 2 and "the image record 'web' is malformed (disk name" in done.err, done.err
    assert done.err.count("\n") == 1
    assert vhd_names(store) == before and not (store / "vms").exists()


def test_a_record_must_be_stored_under_its_own_name(web, cli) -> None:
    store, record = web
    (store / "images" / "alias.json").write_text(json.dumps(record))  # names itself "web"
    done = cli("image", "show", "alias", "--store", str(store))
    assert done.code == 2 and "it names itself 'web' but is stored as 'alias'" in done.err, done.err
    before = vhd_names(store)
    done = cli("image", "delete", "web", "--delete-disks", "--store", str(store))
    assert done.code == 2 and "'alias' is malformed" in done.err, done.err
    assert vhd_names(store) == before and (store / "images" / "web.json").exists()


def test_delete_disks_keeps_what_a_copied_record_still_uses(web, cli) -> None:
    """alias.json names web's disks: deleting web and its disks keeps every one of them."""
    store, record = web
    (store / "images" / "alias.json").write_text(json.dumps(record | {"name": "alias"}))
    before = vhd_names(store)
    done = cli("image", "delete", "web", "--delete-disks", "--store", str(store), "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result["deletedDisks"] == []
    assert {d["reason"] for d in result["leftBehind"]} == {"used by image alias"}
    assert vhd_names(store) == before


def test_a_vm_record_naming_a_disk_outside_the_store_is_refused(web, cli) -> None:
    store, record = web
    (store / "vms").mkdir()
    vm = {"name": "v", "storageProfile": {"osDisk": {"vhd": {"uri": "file:///x/..%2F..%2Fetc%2Fpasswd"}}}}
    (store / "vms" / "v.json").write_text(json.dumps(vm))
    done = cli("image", "delete", "web", "--delete-disks", "--store", str(store))
    assert done.code == 2 and "the VM record 'v' is malformed (disk name '../../etc/passwd'" in done.err, done.err
    assert (store / "images" / "web.json").exists()


def test_deploy_of_an_image_whose_disk_was_deleted_says_it_is_missing(web, cli, monkeypatch) -> None:
    """Deleted before deploy looks, or while it copies: either way the message says missing."""
    store, record = web
    data0 = record["dataDisks"][0]["name"]
    (store / "vhds" / data0).unlink()
    done = cli("image", "deploy", "web", "--vm", "vm1", "--store", str(store))
    assert done.code == 2 and f"its disk {data0} is missing from the store" in done.err, done.err

    from vhdtool.workflows import snapshot as snapshots

    real = snapshots.copy_nonzero
    os_disk = record["osDisk"]["name"]

    def deleted_meanwhile(source, *args, **kw):  # the source goes while it is being copied
        if source.path.name == os_disk:
            source.path.unlink()
        return real(source, *args, **kw)

    shutil.copy(store / "vhds" / record["dataDisks"][1]["name"], store / "vhds" / data0)
    monkeypatch.setattr(snapshots, "copy_nonzero", deleted_meanwhile)
    done = cli("image", "deploy", "web", "--vm", "vm2", "--store", str(store))
    assert done.code == 2 and f"its disk {os_disk} is missing from the store (deleted while" in done.err, done.err
    assert "modified" not in done.err
    assert not any(n.startswith("vm2") for n in vhd_names(store)) and not (store / "vms").exists()


def killed(args: list[str], patch: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `vhdtool ARGS` in a fresh interpreter where `patch` (Python, with `die()` at hand:
    SIGKILL of the process itself) has replaced a step; it must die of that SIGKILL."""
    program = "\n".join([
        "import os, signal, sys",
        "def die(*args, **kwargs):",
        "    os.kill(os.getpid(), signal.SIGKILL)",
        patch,
        f"sys.argv = ['vhdtool', *{args!r}]",
        "from vhdtool.cli import main",
        "main()",
    ])
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                          env=os.environ | (env or {}))
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    return done


DIE_AT_STAGED_COPY = """
import vhdtool.engine.output as output
real = output.publish
def publish(out, *args):  # the staged copy is complete under its hidden name, about to take its own
    if out.temp is not None and not out.path.name.startswith("."):
        die()
    return real(out, *args)
output.publish = publish
"""
DIE_BEFORE_IMAGE_RECORD = """
from vhdtool.workflows.store.local import LocalStore
real = LocalStore.create_record
def create_record(self, kind, *args, **kwargs):
    if kind == "images":
        die()
    return real(self, kind, *args, **kwargs)
LocalStore.create_record = create_record
"""


@pytest.mark.parametrize("patch, incomplete", [(DIE_AT_STAGED_COPY, True), (DIE_BEFORE_IMAGE_RECORD, False)])
def test_a_killed_local_capture_leaves_no_image_and_the_next_capture_cleans_up(patch, incomplete, cli,
                                                                                tmp_path) -> None:
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    killed(capture_args("web", disks, store), patch)
    assert cli("image", "list", "--store", str(store)).out == "no images\n"
    left = json.loads(cli("image", "orphans", "--store", str(store), "--json").out)
    assert left and all(o["busy"] is None for o in left)
    if incomplete:  # killed as a staged copy was to be named: the hidden file is listed, incomplete
        assert any(o["incomplete"] and o["name"].endswith(".vhdtool-partial") for o in left), left
    else:  # killed after every copy, before the record: three complete VHDs no image refers to
        assert len(left) == 3 and not any(o["incomplete"] for o in left), left
    again = cli(*capture_args("web", disks, store, "--json"))
    assert again.code == 0, again.err
    assert "removed what the interrupted capture of image web left behind" in again.err
    record = json.loads(again.out)
    names = {d["name"] for d in [record["osDisk"], *record["dataDisks"]]}
    assert vhd_names(store) == names and not any("-01" in n for n in names)
    assert cli("image", "orphans", "--store", str(store)).out == "no orphaned VHDs\n"
    assert list((store / "pending" / "images").iterdir()) == []


def test_orphans_clean_removes_what_a_killed_capture_left(cli, tmp_path) -> None:
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    killed(capture_args("web", disks, store), DIE_BEFORE_IMAGE_RECORD)
    killed(capture_args("db", disks, store), DIE_AT_STAGED_COPY)  # its start removed web's copies
    staged = len(vhd_names(store))  # 1 to 3: the copies that reached their naming when one did
    assert staged >= 1 and all(n.startswith(".db-") for n in vhd_names(store))
    (store / "vhds" / ".old-os-2020-01-01.vhd.0123abcd.vhdtool-partial").write_bytes(b"\0" * 512)  # no journal
    shown_text = cli("image", "orphans", "--store", str(store)).out
    assert "[incomplete copy]" in shown_text and "image orphans --clean deletes them" in shown_text
    done = cli("image", "orphans", "--clean", "--store", str(store), "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert result["orphans"] == [] and len(result["deleted"]) == staged + 1
    assert vhd_names(store) == set() and cli("image", "list", "--store", str(store)).out == "no images\n"


def test_a_running_capture_is_not_cleaned_up(cli, tmp_path) -> None:
    """The journal of a live process: its copies are busy, a second capture of the name is
    refused, --clean and --delete leave them alone."""
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    from vhdtool.workflows.store.local import LocalStore
    from vhdtool.workflows.vmimage.pending import journal

    local = LocalStore(store)
    (store / "vhds").mkdir(parents=True)
    (store / "vhds" / "web-os-2030-01-01.vhd").write_bytes(b"\0" * 1024)
    with journal(local, "images", "web", ["web-os-2030-01-01.vhd"]):
        refused = cli(*capture_args("web", disks, store))
        assert refused.code == 2 and "a capture of image 'web' is in progress" in refused.err, refused.err
        left = json.loads(cli("image", "orphans", "--store", str(store), "--json").out)
        assert [(o["name"], o["busy"]) for o in left] == [
            ("web-os-2030-01-01.vhd", f"being written by the capture of image web (process {os.getpid()})")]
        for flags in (["--clean"], ["--delete", "--yes"]):
            assert cli("image", "orphans", *flags, "--store", str(store)).code == 0
        assert vhd_names(store) == {"web-os-2030-01-01.vhd"}
    assert not (store / "pending" / "images" / "web.json").exists()


def test_orphans_delete_needs_yes_and_keeps_what_is_in_use(web, cli) -> None:
    store, record = web
    assert cli("image", "delete", "web", "--store", str(store)).code == 0
    before = vhd_names(store)
    done = cli("image", "orphans", "--delete", "--store", str(store))
    assert done.code == 2 and "add --yes" in done.err and vhd_names(store) == before
    done = cli("image", "orphans", "--delete", "--yes", "--store", str(store), "--json")
    assert done.code == 0 and len(json.loads(done.out)["deleted"]) == 3 and vhd_names(store) == set()


def test_vms_lists_and_vm_delete_removes_a_vm(web, cli) -> None:
    store, record = web
    assert cli("image", "deploy", "web", "--vm", "vm1", "--store", str(store)).code == 0
    rows = json.loads(cli("image", "vms", "--store", str(store), "--json").out)
    assert [(r["name"], r["image"], r["vhds"]) for r in rows] == [
        ("vm1", "web", ["vm1-os.vhd", "vm1-datadisk-0.vhd", "vm1-datadisk-1.vhd"])]
    assert cli("image", "vms", "--store", str(store)).out.startswith("VM vm1  from image web")
    done = cli("image", "vm-delete", "vm1", "--delete-disks", "--store", str(store), "--json")
    assert done.code == 0, done.err
    assert [d["name"] for d in json.loads(done.out)["deletedDisks"]] == ["vm1-os.vhd", "vm1-datadisk-0.vhd",
                                                                         "vm1-datadisk-1.vhd"]
    assert not any(n.startswith("vm1") for n in vhd_names(store)) and len(vhd_names(store)) == 3
    assert cli("image", "vms", "--store", str(store)).out == "no VMs\n"
    missing = cli("image", "vm-delete", "vm1", "--store", str(store))
    assert missing.code == 2 and "no VM 'vm1' in the store" in missing.err


def azure_capture(name: str, os_disk: str, container, *extra: str) -> list[str]:
    return ["image", "capture", name, "--os-disk", os_disk, "--os-type", "linux", "--os-state", "generalized",
            "--container", container.container_name, *extra]


def test_a_killed_upload_into_an_azure_store_is_cleaned_up_by_the_next_capture(azurite, container, cli,
                                                                             tmp_path) -> None:
    """Killed while uploading: a leased page blob without its footer under the final name.
    The next capture deletes it (the lease of the dead upload is its own) and takes the name."""

    env = conn_env(azurite)
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 3, 7)
    args = azure_capture("web", str(disk), container)
    killed(args, "import vhdtool.workflows.upload as upload\nupload.finish = die", env)
    stored = blobs(container)
    [partial] = [n for n in stored if not n.startswith("pending/")]
    assert stored[partial].lease.state == "leased"
    assert cli("image", "list", "--container", container.container_name, env=env).out == "no images\n"
    [orphan] = json.loads(cli("image", "orphans", "--container", container.container_name, "--json", env=env).out)
    assert (orphan["name"], orphan["incomplete"]) == (partial, True)
    again = cli(*args, "--json", env=env)
    assert again.code == 0, again.err
    assert json.loads(again.out)["osDisk"]["name"] == partial  # the same name: no -01
    assert set(blobs(container)) == {partial, "images/web.json"}
    assert container.get_blob_client(partial).download_blob().readall() == disk.read_bytes()


def test_a_killed_server_side_copy_is_cleaned_up_by_orphans_clean(azurite, container, sources, cli,  # noqa: F811
                                                                   tmp_path) -> None:

    env = conn_env(azurite)
    source = put_disk(sources, "vm-os.vhd", scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 3, 8))
    args = azure_capture("web", source.url, container)
    killed(args, "import vhdtool.workflows.store.azure as azure\nazure.wait_for_copy = die", env)
    assert cli("image", "list", "--container", container.container_name, env=env).out == "no images\n"
    assert any(not n.startswith("pending/") for n in blobs(container))
    done = cli("image", "orphans", "--clean", "--container", container.container_name, "--json", env=env)
    assert done.code == 0, done.err
    assert json.loads(done.out)["orphans"] == [] and blobs(container) == {}
    assert set(blobs(sources)) == {"vm-os.vhd"}


def test_a_killed_deploy_leaves_no_vm_and_the_next_deploy_cleans_up(web, cli) -> None:
    store, record = web
    before = vhd_names(store)
    die_before_vm_record = DIE_BEFORE_IMAGE_RECORD.replace('kind == "images"', 'kind == "vms"')
    killed(["image", "deploy", "web", "--vm", "vm1", "--store", str(store)], die_before_vm_record)
    assert vhd_names(store) - before == {"vm1-os.vhd", "vm1-datadisk-0.vhd", "vm1-datadisk-1.vhd"}
    assert cli("image", "vms", "--store", str(store)).out == "no VMs\n"
    again = cli("image", "deploy", "web", "--vm", "vm1", "--store", str(store))
    assert again.code == 0 and "removed what the interrupted deploy of VM vm1 left behind" in again.err, again.err
    assert [r["name"] for r in json.loads(cli("image", "vms", "--store", str(store), "--json").out)] == ["vm1"]
    assert cli("image", "orphans", "--store", str(store)).out == "no orphaned VHDs\n"
