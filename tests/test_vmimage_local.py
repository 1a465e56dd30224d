"""`vhdtool image` on a local store: capture, list, show, deploy, delete, orphans; exact names
(today's UTC date, -NN on conflict, never shared in a race), exact bytes, every record field,
refusals that leave nothing behind, and disks in use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import FIXTURES, race
from oracles import vhdtool
from helpers import AZURE_KEYS, capture_args, dated, md5_b64, MiB, scattered_vhd, shown, three_disks, vhd_names
from vhdtool.workflows.create import create
from vhdtool.errors import VhdError
from vhdtool.format.vhd.footer import DiskType
from vhdtool.workflows.store import open_store
from vhdtool.workflows.store.local import LocalStore
from vhdtool.workflows.vmimage.capture import CaptureRequest, capture
from vhdtool.workflows.vmimage.disks import DiskSpec

def everything(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*")} if store.exists() else set()


def test_capture_deploy_delete_orphans(cli, tmp_path) -> None:
    """The issue's acceptance path on a local store, with every field checked."""
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    started = datetime.now(timezone.utc).replace(microsecond=0)
    done = cli(*capture_args("web", disks, store, "--label", "front end", "--os-caching", "readonly", "--md5"))
    assert done.code == 0, done.err
    assert "image web \"front end\": Linux, Generalized" in done.out

    record = shown(cli, store, "web")
    names = {"os": record["osDisk"]["name"], "data0": record["dataDisks"][0]["name"],
             "data1": record["dataDisks"][1]["name"]}
    assert dated(r"web-os-DATE\.vhd").match(names["os"])
    assert dated(r"web-datadisk-0-DATE\.vhd").match(names["data0"])
    assert dated(r"web-datadisk-1-DATE\.vhd").match(names["data1"])
    assert vhd_names(store) == set(names.values())
    for role, name in names.items():
        assert (store / "vhds" / name).read_bytes() == disks[role].read_bytes()

    assert record["kind"] == "vmimage" and record["name"] == "web" and record["label"] == "front end"
    assert (record["osType"], record["osState"]) == ("Linux", "Generalized")
    captured = datetime.fromisoformat(record["capturedAt"].replace("Z", "+00:00"))
    assert started <= captured <= datetime.now(timezone.utc)
    assert record["store"] == str(store)
    assert re.fullmatch(r"diskset-[0-9a-f]{16}", record["capturedVmKey"])
    expected = [("os", None, "ReadOnly", "OSDisk"), ("data0", 0, "None", "DataDisk"),
                ("data1", 1, "ReadOnly", "DataDisk")]
    for (role, lun, caching, kind), disk in zip(expected, [record["osDisk"], *record["dataDisks"]]):
        data = disks[role].read_bytes()
        assert disk.get("lun") == lun and disk["hostCaching"] == caching
        assert disk["sizeBytes"] == len(data) and disk["contentMd5"] == md5_b64(data)
        assert disk["location"] == (store / "vhds" / names[role]).as_uri()
        assert disk["metadata"] == dict(zip(AZURE_KEYS, (kind, "Generalized", "Linux", record["capturedVmKey"])))
        assert disk["crashConsistent"] is False
        copy = disk["copy"]
        assert uuid.UUID(copy["id"]) and copy["source"] == str(disks[role])
        assert copy["method"] in ("reflink", "sparse-copy") and copy["status"] == "success"
        assert copy["progress"] == f"{len(data)}/{len(data)}"
        assert copy["bytesCopied"] == copy["bytesTotal"] == len(data)
        assert started <= datetime.fromisoformat(copy["completionTime"].replace("Z", "+00:00"))
    on_disk = json.loads((store / "images" / "web.json").read_text())
    assert on_disk == record  # the record is a plain JSON file other tools can read

    listed = cli("image", "list", "--store", str(store), "--json")
    assert json.loads(listed.out) == [{"name": "web", "label": "front end", "osType": "Linux",
                                       "osState": "Generalized", "hyperVGeneration": None,
                                       "capturedAt": record["capturedAt"],
                                       "disks": 3, "sizeBytes": 3 * (10 * MiB + 512)}]

    deployed = cli("image", "deploy", "web", "--vm", "vm1", "--store", str(store), "--json")
    assert deployed.code == 0, deployed.err
    vm = json.loads(deployed.out)
    assert vm == json.loads((store / "vms" / "vm1.json").read_text())
    assert vm["image"] == "web" and vm["provisioningRequired"] is True and "provisioned" in vm["note"]
    os_disk, data_disks = vm["storageProfile"]["osDisk"], vm["storageProfile"]["dataDisks"]
    assert os_disk == {"osType": "Linux", "name": "vm1-os", "caching": "ReadOnly", "createOption": "FromImage",
                       "image": {"uri": record["osDisk"]["location"]},
                       "vhd": {"uri": (store / "vhds" / "vm1-os.vhd").as_uri()}, "diskSizeGB": 1}
    assert [(d["lun"], d["name"], d["caching"], d["createOption"]) for d in data_disks] == [
        (0, "vm1-datadisk-0", "None", "FromImage"), (1, "vm1-datadisk-1", "ReadOnly", "FromImage")]
    for vm_name, image_name in (("vm1-os.vhd", names["os"]), ("vm1-datadisk-0.vhd", names["data0"]),
                                ("vm1-datadisk-1.vhd", names["data1"])):
        assert (store / "vhds" / vm_name).read_bytes() == (store / "vhds" / image_name).read_bytes()

    deleted = cli("image", "delete", "web", "--store", str(store))
    assert deleted.code == 0, deleted.err
    assert all(name in deleted.out for name in names.values())
    assert not (store / "images" / "web.json").exists()
    assert vhd_names(store) == set(names.values()) | {"vm1-os.vhd", "vm1-datadisk-0.vhd", "vm1-datadisk-1.vhd"}
    orphans = json.loads(cli("image", "orphans", "--store", str(store), "--json").out)
    assert {o["name"]: o["size"] for o in orphans} == {name: 10 * MiB + 512 for name in names.values()}

    again = cli(*capture_args("web", disks, store))  # same day, names taken: -01
    assert again.code == 0, again.err
    second = shown(cli, store, "web")
    assert dated(r"web-os-DATE-01\.vhd").match(second["osDisk"]["name"])
    assert [dated(rf"web-datadisk-{lun}-DATE-01\.vhd").match(d["name"]) is not None
            for lun, d in enumerate(second["dataDisks"])] == [True, True]
    removed = cli("image", "delete", "web", "--delete-disks", "--store", str(store), "--json")
    assert removed.code == 0, removed.err
    result = json.loads(removed.out)
    assert {d["name"] for d in result["deletedDisks"]} == {d["name"] for d in [second["osDisk"], *second["dataDisks"]]}
    assert result["leftBehind"] == []
    assert vhd_names(store) == set(names.values()) | {"vm1-os.vhd", "vm1-datadisk-0.vhd", "vm1-datadisk-1.vhd"}


def test_specialized_image_deploys_without_provisioning(cli, tmp_path) -> None:
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 3, 7)
    store = tmp_path / "store"
    done = cli("image", "capture", "dev", "--os-disk", str(disk), "--os-type", "Windows", "--os-state",
               "SPECIALIZED", "--source-vm", "devbox", "--store", str(store), "--json")
    assert done.code == 0, done.err
    record = json.loads(done.out)
    assert (record["osType"], record["osState"], record["dataDisks"]) == ("Windows", "Specialized", [])
    assert record["capturedVmKey"] == "devbox" == record["osDisk"]["metadata"]["microsoftazurecompute_capturedvmkey"]
    vm = cli("image", "deploy", "dev", "--vm", "box2", "--store", str(store))
    assert vm.code == 0, vm.err
    assert "no provisioning" in vm.out
    assert json.loads((store / "vms" / "box2.json").read_text())["provisioningRequired"] is False
    assert (store / "vhds" / "box2-os.vhd").read_bytes() == disk.read_bytes()


@pytest.mark.parametrize("flag", [None, "--no-md5"])
def test_a_local_capture_hashes_only_when_asked(cli, tmp_path, flag) -> None:
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 1, 3)
    done = cli("image", "capture", "q", "--os-disk", str(disk), "--os-type", "linux", "--os-state", "specialized",
               *filter(None, [flag]), "--store", str(tmp_path / "s"), "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out)["osDisk"]["contentMd5"] is None


def test_default_store_is_the_user_data_folder_or_vhdtool_store(cli, tmp_path) -> None:
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 1, 4)
    args = ("image", "capture", "d", "--os-disk", str(disk), "--os-type", "linux", "--os-state", "specialized")
    data_home = tmp_path / "xdg"
    assert cli(*args, env={"XDG_DATA_HOME": str(data_home), "VHDTOOL_STORE": ""}).code == 0
    assert (data_home / "vhdtool" / "store" / "images" / "d.json").is_file()
    chosen = tmp_path / "chosen"
    assert cli(*args, env={"VHDTOOL_STORE": str(chosen)}).code == 0
    assert (chosen / "images" / "d.json").is_file()
    listed = cli("image", "list", "--json", env={"VHDTOOL_STORE": str(chosen)})
    assert [r["name"] for r in json.loads(listed.out)] == ["d"]


@pytest.mark.parametrize("case, code, message", [
    ("dynamic", 1, r"fails check --target azure: .*\[azure\.not-fixed\]; fix: vhdtool prepare .*dyn\.vhd, "
                   r"then capture .*dyn-azure\.vhd"),
    ("non-mib", 1, r"fails check --target azure: .*\[azure\.size-not-mib\]; fix: vhdtool prepare .*odd\.vhd"),
    ("missing", 2, r"gone\.vhd: cannot be captured: no such file"),
    ("not-a-vhd", 2, r"raw-3m\.img: cannot be captured: no VHD footer"),
    ("duplicate-lun", 2, r"LUN 0 is given twice"),
    ("same-disk-twice", 2, r"os\.vhd: is given twice"),
    ("bad-caching", 2, r"caching: 'Fast' is not one of ReadOnly, ReadWrite, None"),
    ("bad-os-caching", 2, r"--os-caching: 'always' is not one of"),
    ("bad-lun", 2, r"the LUN must be a number from 0 to 63"),
    ("bad-os-type", 2, r"--os-type: 'bsd' is not one of Windows, Linux"),
])
def test_refused_disks_leave_nothing_behind(case, code, message, cli, tmp_path) -> None:
    good = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 2, 1)
    data = scattered_vhd(tmp_path / "data.vhd", 10 * MiB, 2, 2)
    dyn = tmp_path / "dyn.vhd"
    create(dyn, 10 * MiB, DiskType.DYNAMIC)
    odd = tmp_path / "odd.vhd"
    create(odd, 10 * MiB + 512, DiskType.FIXED)
    data_disks = {
        "dynamic": [f"0={data}", f"1={dyn}"],
        "non-mib": [f"0={odd}"],
        "missing": [f"0={data}", f"1={tmp_path / 'gone.vhd'}"],
        "not-a-vhd": [f"0={FIXTURES / 'raw-3m.img'}"],
        "duplicate-lun": [f"0={data}", f"0={dyn}"],
        "same-disk-twice": [f"0={data}", f"1={tmp_path / '.' / 'os.vhd'}"],
        "bad-caching": [f"0={data},caching=Fast"],
        "bad-os-caching": [],
        "bad-lun": [f"64={data}"],
        "bad-os-type": [],
    }[case]
    store = tmp_path / "store"
    extra = ["--os-caching", "always"] if case == "bad-os-caching" else []
    os_type = "bsd" if case == "bad-os-type" else "linux"
    args = ["image", "capture", "web", "--os-disk", str(good), "--os-type", os_type, "--os-state", "generalized",
            "--store", str(store), *extra]
    for spec in data_disks:
        args += ["--data-disk", spec]
    done = cli(*args)
    assert done.code == code, done.err
    assert re.search(message, done.err), done.err
    assert done.err.count("\n") == 1 and "Traceback" not in done.err
    assert not store.exists()


@pytest.mark.parametrize("name", ["../web", "a/b", "..", ".hidden", "web..1", "-web", "x" * 81, "c:d", "", "web\n"])
def test_unsafe_names_are_refused(name, cli, tmp_path) -> None:
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 1, 1)
    store = tmp_path / "store"
    done = cli("image", "capture", "--os-disk", str(disk), "--os-type", "linux", "--os-state", "specialized",
               "--store", str(store), "--", name)
    assert done.code == 2 and "image name" in done.err and "is not usable" in done.err, done.err
    assert not store.exists()
    assert not (tmp_path / "web").exists() and not (tmp_path / "store" / ".." / "web.json").exists()
    good = cli("image", "capture", "ok", "--os-disk", str(disk), "--os-type", "linux", "--os-state",
               "specialized", "--store", str(store))
    assert good.code == 0, good.err
    deploy = cli("image", "deploy", "ok", f"--vm={name}", "--store", str(store))
    assert deploy.code == 2 and "VM name" in deploy.err, deploy.err
    assert not (store / "vms").exists()


def test_existing_image_or_vm_names_are_refused(cli, tmp_path) -> None:
    disk = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 1, 1)
    store = tmp_path / "store"
    args = ("image", "capture", "web", "--os-disk", str(disk), "--os-type", "linux", "--os-state", "specialized",
            "--store", str(store))
    assert cli(*args).code == 0
    before = everything(store)
    again = cli(*args)
    assert again.code == 2 and "image 'web' already exists" in again.err
    assert cli("image", "deploy", "web", "--vm", "v", "--store", str(store)).code == 0
    before = everything(store)
    twice = cli("image", "deploy", "web", "--vm", "v", "--store", str(store))
    assert twice.code == 2 and "VM 'v' already exists" in twice.err
    (store / "vms" / "v.json").unlink()  # the record gone, its disks are not overwritten
    clash = cli("image", "deploy", "web", "--vm", "v", "--store", str(store))
    assert clash.code == 2 and "v-os.vhd already exists in the store" in clash.err
    assert everything(store) == before - {"vms/v.json"}
    missing = cli("image", "show", "nope", "--store", str(store))
    assert missing.code == 2 and "no image 'nope' in the store" in missing.err
    assert cli("image", "deploy", "nope", "--vm", "w", "--store", str(store)).code == 2
    assert cli("image", "delete", "nope", "--store", str(store)).code == 2


@pytest.fixture
def writer(tmp_path):
    """Hold a file open for writing in another process (as a running hypervisor would)."""
    procs = []

    def hold(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'r+b'); "
                                 "print('ready', flush=True); sys.stdin.read()", str(path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_disk_in_use_generalized_refused_specialized_warned(cli, tmp_path, writer) -> None:
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    holder = writer(disks["data1"])
    refused = cli(*capture_args("gen", disks, store))
    assert refused.code == 2
    assert f"data1.vhd: is in use, open for writing by process {holder.pid} (python" in refused.err
    assert "a generalized image is captured from a stopped VM" in refused.err
    assert not store.exists()

    args = capture_args("spec", disks, store, "--json")
    args[args.index("generalized")] = "specialized"
    done = cli(*args)
    assert done.code == 0, done.err
    assert f"warning: {disks['data1']} is in use, open for writing by process {holder.pid}" in done.err
    assert "crash-consistent" in done.err
    record = json.loads(done.out)
    assert [d["crashConsistent"] for d in [record["osDisk"], *record["dataDisks"]]] == [False, False, True]


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()  # "python" or "python3", as started


def test_delete_disks_keeps_disks_in_use_or_used_by_a_vm(cli, tmp_path, writer) -> None:
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    assert cli(*capture_args("web", disks, store)).code == 0
    record = shown(cli, store, "web")
    os_name, data0, data1 = (d["name"] for d in [record["osDisk"], *record["dataDisks"]])
    # a VM record written by another tool that uses the image's OS disk directly
    other = {"name": "hand", "storageProfile": {"osDisk": {"vhd": {"uri": record["osDisk"]["location"]}},
                                                "dataDisks": []}}
    (store / "vms").mkdir()
    (store / "vms" / "hand.json").write_text(json.dumps(other))
    holder = writer(store / "vhds" / data1)
    done = cli("image", "delete", "web", "--delete-disks", "--store", str(store), "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert [d["name"] for d in result["deletedDisks"]] == [data0]
    assert {d["name"]: d["reason"] for d in result["leftBehind"]} == {
        os_name: "used by VM hand", data1: f"open for writing by process {holder.pid} ({process_name(holder.pid)})"}
    assert vhd_names(store) == {os_name, data1}
    assert [o["name"] for o in json.loads(cli("image", "orphans", "--store", str(store), "--json").out)] == [data1]


def test_concurrent_copies_never_share_a_name(tmp_path) -> None:
    """Eight copies to one name at once: the base name and -01..-07, each a complete copy."""
    source = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 3, 5)
    store = LocalStore(tmp_path / "store")
    results = race(lambda: store.copy_in(source, "r-os-2030-01-01.vhd", metadata={}, md5=False, log=print).name, 8)
    expected = {"r-os-2030-01-01.vhd"} | {f"r-os-2030-01-01-{n:02d}.vhd" for n in range(1, 8)}
    assert sorted(results) == sorted(expected)
    assert vhd_names(store.root) == expected
    for name in expected:
        assert (store.vhd_dir / name).read_bytes() == source.read_bytes()


def test_two_captures_at_once(tmp_path) -> None:
    """Two processes capture one image name together: one wins, the other is refused (the
    winner's journal or record is there) or fails and removes its copies; the winner's disks
    are the only ones left, under distinct names."""
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "vhdtool.cli", *capture_args("web", disks, store)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=60), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "already exists" in outcomes[1][1] or "a capture of image 'web' is in progress" in outcomes[1][1]
    record = json.loads((store / "images" / "web.json").read_text())
    names = {d["name"] for d in [record["osDisk"], *record["dataDisks"]]}
    assert len(names) == 3 and vhd_names(store) == names


def test_failed_copy_or_record_removes_every_copy(tmp_path, monkeypatch) -> None:
    disks = three_disks(tmp_path)
    store = LocalStore(tmp_path / "store")
    real = LocalStore.copy_in
    request = CaptureRequest("web", DiskSpec(None, str(disks["os"]), "ReadWrite"),
                             [DiskSpec(0, str(disks["data0"]), "None"), DiskSpec(1, str(disks["data1"]), "None")],
                             "linux", "specialized")

    def flaky(self, source, name, **kw):
        if "datadisk-1" in name:
            raise VhdError("simulated copy failure", source)
        return real(self, source, name, **kw)

    with monkeypatch.context() as m:
        m.setattr(LocalStore, "copy_in", flaky)
        with pytest.raises(VhdError, match="simulated copy failure"):
            capture(store, request)
    assert vhd_names(store.root) == set()

    def refuse(*args, **kw):
        raise VhdError("simulated record failure")

    with monkeypatch.context() as m:
        m.setattr(LocalStore, "create_record", refuse)
        with pytest.raises(VhdError, match="simulated record failure"):
            capture(store, request)
    assert vhd_names(store.root) == set() and not (store.root / "images").exists()
    assert capture(store, request)["name"] == "web"  # and nothing stands in the way afterwards


def test_show_and_list_text(cli, tmp_path) -> None:
    disks = three_disks(tmp_path)
    store = tmp_path / "store"
    assert cli("image", "list", "--store", str(store)).out == "no images\n"
    assert cli("image", "orphans", "--store", str(store)).out == "no orphaned VHDs\n"
    assert cli(*capture_args("web", disks, store, "--label", "L")).code == 0
    record = shown(cli, store, "web")
    text = cli("image", "show", "web", "--store", str(store)).out.splitlines()
    assert text[0] == f"image web \"L\": Linux, Generalized, Hyper-V generation unknown, captured {record['capturedAt']}"
    assert any(line.split()[:2] == ["lun", "1"] and record["dataDisks"][1]["name"] in line for line in text)
    listing = cli("image", "list", "--store", str(store)).out.splitlines()
    assert listing[0].split() == ["NAME", "OS", "STATE", "GEN", "CAPTURED", "DISKS", "SIZE", "LABEL"]
    assert listing[1].split()[:6] == ["web", "Linux", "Generalized", "-", record["capturedAt"], "3"]


def test_open_store_choices(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("VHDTOOL_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert open_store().describe() == str(tmp_path / "data" / "vhdtool" / "store")
    (tmp_path / "file").write_text("")
    with pytest.raises(VhdError, match="the store is not a folder"):
        open_store(str(tmp_path / "file"))
    with pytest.raises(VhdError, match="--connection-string needs --container"):
        open_store(None, connection_string="UseDevelopmentStorage=true")
    with pytest.raises(VhdError, match="either --store or --container"):
        open_store(str(tmp_path), container="c", connection_string="UseDevelopmentStorage=true")


def test_cli_subprocess_errors_are_one_line(tmp_path) -> None:
    """A fresh process, as a user runs it: exit code and a one-line error, no traceback."""
    done = vhdtool("image", "capture", "web", "--os-disk", str(tmp_path / "none.vhd"), "--os-type", "linux",
                   "--os-state", "generalized", "--store", str(tmp_path / "s"))
    assert done.returncode == 2
    assert done.stderr.startswith("vhdtool: error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text, message", [
    ('{"name": "bad", "osType": "Linux"}', r"the image record 'bad' is malformed \(no 'osState'\)"),
    ('[1, 2]', r"the image record 'bad' is malformed \(not the expected shape\)"),
    ('{not json', r"bad\.json: unreadable record"),
])
def test_malformed_records_are_one_line_errors(text, message, cli, tmp_path) -> None:
    assert_one_line_errors(text, message, cli, tmp_path)


def test_records_with_fields_of_the_wrong_type_are_one_line_errors(cli, tmp_path) -> None:
    """A hand-edited record: each field the commands read has its JSON type checked first."""
    store = tmp_path / "good"
    disks = three_disks(tmp_path)
    assert cli(*capture_args("bad", disks, store)).code == 0
    record = json.loads((store / "images" / "bad.json").read_text())
    for case, (edit, message) in enumerate([
        (lambda r: r["osDisk"].update(sizeBytes="12"), r"\(disk field 'sizeBytes' is a str\)"),
        (lambda r: r["osDisk"].update(copy={}), r"\(no copy field 'method'\)"),
        (lambda r: r.update(dataDisks={}), r"\('dataDisks' is a dict\)"),
        (lambda r: r["dataDisks"][1].update(lun=True), r"\(no 'lun' of a data disk\)"),
    ]):
        edited = json.loads(json.dumps(record))
        edit(edited)
        assert_one_line_errors(json.dumps(edited), r"the image record 'bad' is malformed " + message, cli,
                               tmp_path / f"case{case}")


def assert_one_line_errors(text, message, cli, tmp_path) -> None:
    store = tmp_path / "store"
    (store / "images").mkdir(parents=True)
    (store / "images" / "bad.json").write_text(text)
    for args in (("image", "list"), ("image", "show", "bad"), ("image", "orphans"), ("image", "delete", "bad")):
        done = cli(*args, "--store", str(store))
        assert done.code == 2 and re.search(message, done.err) and done.err.count("\n") == 1, done.err
    assert (store / "images" / "bad.json").read_text() == text  # not deleted by a refused delete


@pytest.mark.parametrize("reflinked", [False, True])
def test_copy_in_hashes_what_it_copied(tmp_path, monkeypatch, reflinked) -> None:
    """Content-MD5 of a local copy: from the copy's own pass, or (a reflink copies no bytes
    through vhdtool) by reading the copy; either way the MD5 of every byte, holes included."""
    import vhdtool.engine.sink

    source = scattered_vhd(tmp_path / "os.vhd", 10 * MiB, 3, 6)
    if reflinked:  # ext4 has no reflink: stand one in that copies the bytes as FICLONE would
        def fake_reflink(out: vhdtool.engine.sink.SparseFile) -> bool:
            os.pwrite(out.fd, source.read_bytes(), 0)
            return True
        monkeypatch.setattr(vhdtool.engine.sink.SparseFile, "reflink", fake_reflink)
    stored = LocalStore(tmp_path / "store").copy_in(source, "h-os.vhd", metadata={}, md5=True, log=print)
    assert stored.md5 == md5_b64(source.read_bytes())
    assert stored.trail.method == ("reflink" if reflinked else "sparse-copy")
