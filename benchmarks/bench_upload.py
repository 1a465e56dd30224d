#!/usr/bin/env python3
"""upload through a slow link: vhdtool, 4 MiB chunks (AzCopy's way) and BlobClient.upload_blob.

Issues 6 and 14 acceptance: a fixed VHD with ~10% data in scattered 64 KiB pieces (seeded,
unaligned offsets) is uploaded to Azurite through a loopback proxy that is a link of
`--link-mbs` MB/s each way (tests/faultproxy.py), by `vhdtool upload`, by a client sending
every 4 MiB chunk that is not all zero (as AzCopy does into a managed disk) and by the SDK's
upload_blob, same parallelism, in turns, `--repeats` rounds, each on a fresh Azurite
(medians). On such a link the floor is the non-zero bytes / link rate: target vhdtool's wall
time <= 1.15x that. Also reported: page-data bytes sent vs the non-zero bytes (target <=
1.01x) and what 2 MiB and 4 MiB chunks send; peak RSS (target <= 150 MiB); bytes read from the
source (read once: ~1x its allocated bytes). Azurite itself must outrun the link (it holds
blobs in memory: ~25 MB/s on a loaded 2-core machine; lower --link-mbs there). Then a
dynamic copy of the image is uploaded (no link) while the disk is watched (no temporary file)
and downloaded back, compared with the fixed VHD it represents.
Usage: python benchmarks/bench_upload.py [--size-gib 32] [--link-mbs 50] [--workers 16] [--repeats 3]
                                         [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from azurite import install_azurite, running_azurite  # noqa: E402
from faultproxy import FaultProxy, Faults  # noqa: E402
from common import (  # noqa: E402
    GiB,
    MiB,
    Samples,
    add_json_option,
    byte_compile,
    check,
    finish,
    interleaved,
    print_table,
    run_measured,
)

from vhdtool.workflows.create import create  # noqa: E402
from vhdtool.engine.pipeline import nonzero_runs, scan  # noqa: E402
from vhdtool.format.vhd.footer import DiskType  # noqa: E402
from vhdtool.disk.image import open_disk  # noqa: E402
from vhdtool.ranges import total  # noqa: E402
from vhdtool.workflows.upload import fixed_image  # noqa: E402

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

PIECE = 64 * 1024
CONTAINER = "bench"
# Runs the CLI and, at exit, writes what the process read and wrote (/proc/self/io: rchar and
# wchar count read/write calls, write_bytes what reached the storage layer), counted once the
# CLI's modules are imported so that only the command's own I/O counts.
IO_PROBE = (
    "import atexit, json, os, sys, runpy\n"
    "import vhdtool.cli, vhdtool.workflows.upload, vhdtool.workflows.download, azure.storage.blob\n"
    "def io():\n"
    "    return {k: int(v) for k, v in (l.split(': ') for l in open('/proc/self/io').read().splitlines())}\n"
    "start = io()\n"
    "def dump():\n"
    "    end = io()\n"
    "    open(os.environ['IO_PROBE_OUT'], 'w').write(json.dumps({k: end[k] - start[k] for k in end}))\n"
    "atexit.register(dump)\n"
    "sys.argv = ['vhdtool', *sys.argv[1:]]\n"
    "runpy.run_module('vhdtool.cli', run_name='__main__')\n"
)
UPLOAD_BLOB = (
    "import os, sys\n"
    "from azure.storage.blob import BlobClient\n"
    "container, name, path, workers = sys.argv[1:]\n"
    "client = BlobClient.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING'], container, name)\n"
    "with open(path, 'rb') as f:\n"
    "    client.upload_blob(f, blob_type='PageBlob', length=os.fstat(f.fileno()).st_size,\n"
    "                       max_concurrency=int(workers), overwrite=True)\n"
)
# AzCopy's way into a managed disk: every 4 MiB chunk of the file that is not all zero.
CHUNKED = (
    "import os, sys\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "from azure.storage.blob import BlobClient\n"
    "container, name, path, workers = sys.argv[1:]\n"
    "client = BlobClient.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING'], container, name)\n"
    "size = os.path.getsize(path)\n"
    "client.create_page_blob(size)\n"
    "fd = os.open(path, os.O_RDONLY)\n"
    "zero = bytes(4 << 20)\n"
    "def send(offset):\n"
    "    data = os.pread(fd, 4 << 20, offset)\n"
    "    if data != zero[:len(data)]:\n"
    "        client.upload_page(data, offset, len(data))\n"
    "with ThreadPoolExecutor(int(workers)) as pool:\n"
    "    list(pool.map(send, range(0, size, 4 << 20)))\n"
)


def make_image(path: Path, size: int, fraction: float, seed: int = 1) -> int:
    """A sparse fixed VHD: one 64 KiB piece of random bytes at a random unaligned offset in
    each slot of PIECE/fraction bytes. Returns the bytes of data written."""
    create(path, size, DiskType.FIXED)
    rng = np.random.default_rng(seed)
    slot = int(PIECE / fraction)
    written = 0
    with open(path, "r+b") as f:
        for start in range(0, size - slot + 1, slot):
            f.seek(start + int(rng.integers(0, slot - PIECE)))
            f.write(rng.integers(1, 256, PIECE, dtype=np.uint8).tobytes())  # no zero byte in a piece
            written += PIECE
    return written


def chunked_bytes(path: Path, chunk: int) -> int:
    """What a tool sending every chunk of `chunk` bytes that is not entirely zero sends."""
    with open_disk(path) as disk:
        image = fixed_image(disk, False)
        return total(nonzero_runs(scan(image, granularity=chunk, chunk_size=max(chunk, 4 * MiB))))


def image_md5(path: Path) -> str:
    """MD5 of the fixed VHD `path` represents, streamed (for a dynamic source)."""
    md5 = hashlib.md5()
    with open_disk(path) as disk:
        image = fixed_image(disk, False)
        for offset in range(0, image.virtual_size, 16 * MiB):
            md5.update(image.read(offset, min(16 * MiB, image.virtual_size - offset)))
    return md5.hexdigest()


def file_md5(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(16 * MiB):
            md5.update(block)
    return md5.hexdigest()


class DiskWatch:
    """Samples free space of the filesystems given and the files a process has open for
    writing, while an upload runs."""

    def __init__(self, folders: list[Path]):
        self.folders = folders
        self.lowest = {f: self._free(f) for f in folders}
        self.start = dict(self.lowest)
        self.written_files: set[str] = set()
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _free(folder: Path) -> int:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize

    def _open_for_writing(self) -> None:
        fd_dir = Path(f"/proc/{self.pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
                flags = int(Path(f"/proc/{self.pid}/fdinfo/{fd.name}").read_text().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if target.startswith("/") and flags & (os.O_WRONLY | os.O_RDWR) and os.path.isfile(target):
                self.written_files.add(target)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for f in self.folders:
                self.lowest[f] = min(self.lowest[f], self._free(f))
            if self.pid is not None:
                self._open_for_writing()

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max_drop(self) -> int:
        return max(self.start[f] - self.lowest[f] for f in self.folders)


@contextlib.contextmanager
def azurite_container(tmp: Path, link_rate: float = 0.0) -> Iterator[ContainerClient]:
    """A fresh Azurite with the benchmark's container; the connection string the measured
    commands find in the environment leads through a link of `link_rate` bytes/s if given."""
    from azure.storage.blob import BlobServiceClient

    with running_azurite(tmp) as az, FaultProxy(az.port, Faults(link_rate=link_rate), lifetime=24 * 3600) as link:
        linked = az.connection_string.replace(az.blob_endpoint, link.endpoint(az.account_name))
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = linked if link_rate else az.connection_string
        yield BlobServiceClient.from_connection_string(az.connection_string).create_container(CONTAINER)


def page_bytes(blob) -> int:
    """Page data on a blob, as the server lists it: on a fresh blob, what the uploader sent."""
    return sum(r.end + 1 - r.start for r in blob.list_page_ranges())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=32)
    ap.add_argument("--link-mbs", type=float, default=50, help="link rate in MB/s (10^6 bytes) each way")
    ap.add_argument("--workers", type=int, default=16, help="vhdtool --workers and upload_blob max_concurrency")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each upload")
    ap.add_argument("--dir", type=Path, default=None)
    add_json_option(ap)
    args = ap.parse_args()
    byte_compile()
    size = int(args.size_gib * GiB)
    install_azurite()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vhdtool-bench-") as tmp:
        tmp = Path(tmp)
        src = tmp / "fixed.vhd"
        data = make_image(src, size, 0.10)
        allocated = src.stat().st_blocks * 512
        print(f"source: {args.size_gib:g} GiB fixed VHD, {data / MiB:.0f} MiB of data in {data // PIECE} "
              f"scattered 64 KiB pieces, {allocated / MiB:.0f} MiB allocated")

        # the three uploads: same image, link, server and parallelism, in turns, each round on
        # a fresh Azurite (it frees a deleted blob's memory only later, and the whole-chunk
        # uploads leave most of the image there: rounds would pile up gigabytes).
        os.environ["IO_PROBE_OUT"] = str(tmp / "io")
        rate = args.link_mbs * 1e6
        ours, chunks, sdk = "vhdtool upload", "4 MiB chunks (AzCopy)", "BlobClient.upload_blob"
        commands = {
            ours: [sys.executable, "-c", IO_PROBE, "upload", str(src), "--container", CONTAINER, "--name", "ours.vhd",
                   "--workers", str(args.workers)],
            chunks: [sys.executable, "-c", CHUNKED, CONTAINER, "chunks.vhd", str(src), str(args.workers)],
            sdk: [sys.executable, "-c", UPLOAD_BLOB, CONTAINER, "sdk.vhd", str(src), str(args.workers)],
        }
        blobs = {ours: "ours.vhd", chunks: "chunks.vhd", sdk: "sdk.vhd"}
        results = {name: Samples() for name in commands}
        for round_no in range(args.repeats):
            with azurite_container(tmp, rate) as container:
                turn = round_no % len(commands)
                order = list(commands)[turn:] + list(commands)[:turn]
                for name, samples in interleaved({n: commands[n] for n in order}, 1, warmup=0).items():
                    results[name].walls += samples.walls
                    results[name].rss += samples.rss
                if round_no == 0:  # what each left on its blob
                    sent = {name: page_bytes(container.get_blob_client(blob)) for name, blob in blobs.items()}
                    metadata = container.get_blob_client(blobs[ours]).get_blob_properties().metadata
        print_table(f"through a {args.link_mbs:g} MB/s link: {args.repeats} runs each, in turns", results)
        ours_wall, ours_rss = results[ours].wall, results[ours].peak_rss
        read = json.loads((tmp / "io").read_text())["rchar"]  # the last vhdtool run's

        two, four = chunked_bytes(src, 2 * MiB), chunked_bytes(src, 4 * MiB)
        nonzero = data + 512  # the pieces (no zero byte in them) and the footer
        floor = nonzero / rate
        print(f"\nbytes of page data sent for {nonzero:,} non-zero bytes:")
        print(f"  vhdtool upload (512 B pages)        {sent[ours]:>15,}  {sent[ours] / nonzero:6.3f}x")
        print(f"  2 MiB chunks (azure-vhd-utils)      {two:>15,}  {two / nonzero:6.3f}x")
        print(f"  4 MiB chunks (AzCopy)               {four:>15,}  {four / nonzero:6.3f}x  (measured {sent[chunks]:,})")
        print(f"  upload_blob (measured page ranges)  {sent[sdk]:>15,}  {sent[sdk] / nonzero:6.3f}x")
        print(f"\nmedian wall time against the link's floor (non-zero bytes / link rate = {floor:.2f} s):")
        for name in commands:
            print(f"  {name:<28} {results[name].wall:8.2f} s  {results[name].wall / floor:6.2f}x")
        print(f"bytes read by vhdtool from files: {read:,} ({read / allocated:.3f}x the source's allocated bytes)")
        check("bytes sent / non-zero bytes", sent[ours] / nonzero, 1.01)
        check("vhdtool wall time / (non-zero bytes / link rate)", ours_wall / floor, 1.15)
        check("vhdtool peak RSS", ours_rss / MiB, 150, " MiB")
        check("source bytes read / allocated bytes (read once)", read / allocated, 1.05)
        check("sparse digest recorded by vhdtool", float("vhdtool_sparse_sha256" in metadata), 1, "",
              higher_is_better=True)

        # a dynamic source: no temporary file while uploading, identical when downloaded back
        dynamic_round_trip(src, tmp, args.workers)
    return finish(args.json)


def dynamic_round_trip(src: Path, tmp: Path, workers: int) -> None:
    """Upload a dynamic copy of `src` while watching the disk, download it back and compare."""
    with azurite_container(tmp):
        dyn = tmp / "dynamic.vhd"
        subprocess.run([sys.executable, "-m", "vhdtool.cli", "convert", str(src), str(dyn), "--to", "dynamic"],
                       check=True, capture_output=True)
        src.unlink()
        folders = sorted({tmp, Path(tempfile.gettempdir()), Path.home()}, key=str)
        with DiskWatch([f for f in folders if f.exists()]) as watch:
            child = subprocess.Popen([sys.executable, "-c", IO_PROBE, "upload", str(dyn), "--container", CONTAINER,
                                      "--name", "dyn.vhd", "--workers", str(workers)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            watch.pid = child.pid
            out, err = child.communicate()
        if child.returncode:
            raise SystemExit(f"dynamic upload failed:\n{err}")
        io = json.loads((tmp / "io").read_text())
        back = tmp / "back.vhd"
        dl_wall, dl_rss = run_measured([sys.executable, "-m", "vhdtool.cli", "download", "--container", CONTAINER,
                                        "--name", "dyn.vhd", str(back)])
        identical = file_md5(back) == image_md5(dyn)
        print(f"\ndynamic source ({dyn.stat().st_blocks * 512 / MiB:.0f} MiB allocated) uploaded: the process wrote "
              f"{io['wchar']:,} bytes by write calls (stdout included), {io['write_bytes']:,} bytes to storage; "
              f"files it had open for writing: {sorted(watch.written_files) or 'none'}; free space on "
              f"{', '.join(map(str, watch.folders))} dropped by at most {watch.max_drop / MiB:.1f} MiB "
              "(any process on that disk)")
        print(f"downloaded back in {dl_wall:.2f} s (peak RSS {dl_rss / MiB:.0f} MiB), "
              f"{back.stat().st_blocks * 512 / MiB:.0f} MiB allocated; "
              f"identical to the fixed VHD it represents: {identical}")
    check("files written during the dynamic upload", len(watch.written_files), 0, "")
    check("bytes written to storage by the dynamic upload", io["write_bytes"], 0, "")
    check("download identical", float(identical), 1, "", higher_is_better=True)


if __name__ == "__main__":
    sys.exit(main())
