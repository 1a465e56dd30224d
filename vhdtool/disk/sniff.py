"""Tell a disk image's format by its bytes, and say how to convert what we cannot read.

Signatures: VHDX "vhdxfile" at 0 (MS-VHDX 2.2.1); VHD "conectix" footer at the end, at
end-511 (old Virtual PC) or its copy at 0 (VHD spec); qcow2 "QFI\\xfb" (QEMU docs/interop/
qcow2.txt); VMDK sparse extent "KDMV" (VMware VMDK spec) or a text descriptor starting
"# Disk DescriptorFile"; VDI signature 0xbeda107f at offset 64 (VirtualBox VDICore.h).
Anything else is taken as raw.
"""

from __future__ import annotations

import os
from pathlib import Path

from vhdtool.disk.file import locate_footer, naming, open_readonly
from vhdtool.disk.vhdx import VhdxDisk, open_vhdx
from vhdtool.errors import UnsupportedFormatError
from vhdtool.format.sector import SECTOR
from vhdtool.format.vhdx.identifier import SIGNATURE as VHDX_SIGNATURE

__all__ = ["sniff", "readable_format", "open_vhdx", "VhdxDisk", "unsupported"]

VDI_SIGNATURE = (0xBEDA107F).to_bytes(4, "little")
READABLE = ("vhd", "vhdx", "raw")  # the others are named as qemu-img -f names them


def sniff_bytes(head: bytes, size: int, fd: int) -> str:
    """The format from the VHD footer, else the first 512 bytes. The footer first, as
    open_disk looks for it: a fixed VHD's first bytes are its guest's, whatever they hold."""
    if locate_footer(fd, size) is not None:
        return "vhd"
    if head.startswith(VHDX_SIGNATURE):
        return "vhdx"
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head[64:68] == VDI_SIGNATURE:
        return "vdi"
    return "raw"


def sniff_fd(path: Path, fd: int, size: int) -> str:
    """`sniff_bytes` of the open file at `path`, whose read errors name it."""
    with naming(path):
        return sniff_bytes(os.pread(fd, SECTOR, 0), size, fd)


def sniff(path: str | os.PathLike) -> str:
    """The format of the file at `path`: "vhd", "vhdx", "qcow2", "vmdk", "vdi" or "raw"."""
    fd, st = open_readonly(Path(path))
    try:
        return sniff_fd(Path(path), fd, st.st_size)
    finally:
        os.close(fd)


def readable_format(path: str | os.PathLike) -> str:
    """The format, if vhdtool reads it ("vhd", "vhdx", "raw"); otherwise a FormatError that
    says how to convert the file."""
    fmt = sniff(path)
    if fmt not in READABLE:
        raise unsupported(path, fmt)
    return fmt


def unsupported(path: str | os.PathLike, fmt: str) -> UnsupportedFormatError:
    """The one-line error for a format we recognise but do not read."""
    return UnsupportedFormatError(
        f"is a {fmt} image, which vhdtool does not read: convert it first with "
        f"`qemu-img convert -f {fmt} -O vpc -o subformat=fixed,force_size=on "
        f"{path} OUT.vhd`",
        path,
    )
