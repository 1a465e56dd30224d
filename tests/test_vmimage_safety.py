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
import time
from pathlib import Path

import pytest

from test_vmimage_local import MiB, capture_args, shown, three_disks, vhd_names


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
