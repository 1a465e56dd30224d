"""The partition table of a virtual disk, read as Azure will boot it.

MBR, or GPT behind a protective MBR (UEFI 5.2.3), read from any `Disk` (`read(offset,
length)`) in its logical sectors: 512 bytes, or what its optional `logical_sector_size` says;
a GPT written for the other size (512 or 4096) is found too, and that mismatch reported.
From the partition types: how the disk boots (BIOS: Hyper-V Generation 1; an EFI system
partition, UEFI: Generation 2) and which OS it holds.

Every number in the table is untrusted: reads are bounded (entry array, EBR chain) and stay
inside the disk; what does not add up is reported in `problems`, never raised.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from vhdtool.errors import VhdError
from vhdtool.format.partition import gpt, mbr
from vhdtool.format.sector import SECTOR
from vhdtool.units import format_size

# A GPT entry array is 16 KiB in practice (128 entries of 128 bytes); beyond 1 MiB it is
# hostile, not a table (util-linux libfdisk also refuses absurd entry counts).
MAX_ENTRY_ARRAY = 1024 * 1024
MAX_ENTRY_SIZE = 4096  # 128 * 2**n, at most a 4 KiB block in any real table
MAX_LOGICAL = 128  # EBRs followed down the chain (the kernel stops at 256 partition ids)

V1, V2 = "V1", "V2"  # az --hyper-v-generation values
WINDOWS, LINUX = "windows", "linux"

# What each partition type says: boot firmware or OS (None: says nothing).
MBR_ROLES = {
    mbr.EFI_SYSTEM: "esp",
    mbr.NTFS: WINDOWS,
    mbr.WINDOWS_RECOVERY: WINDOWS,
    mbr.LINUX: LINUX,
    mbr.LINUX_SWAP: LINUX,
    mbr.LINUX_LVM: LINUX,
    mbr.LINUX_RAID: LINUX,
}
GPT_ROLES = {
    gpt.EFI_SYSTEM: "esp",
    gpt.BIOS_BOOT: "bios-boot",
    gpt.MICROSOFT_BASIC_DATA: WINDOWS,
    gpt.MICROSOFT_RESERVED: WINDOWS,
    gpt.WINDOWS_RECOVERY: WINDOWS,
    gpt.LINUX_FILESYSTEM: LINUX,
    gpt.LINUX_SWAP: LINUX,
    gpt.LINUX_LVM: LINUX,
    gpt.LINUX_RAID: LINUX,
    gpt.LINUX_HOME: LINUX,
    gpt.LINUX_EXTENDED_BOOT: LINUX,
    **{root: LINUX for root in gpt.LINUX_ROOTS},
}


@dataclass(frozen=True)
class Partition:
    index: int  # as fdisk/sfdisk number it: MBR 1-4 primary, 5.. logical; GPT the entry slot
    start: int  # bytes
    size: int  # bytes
    type: str  # MBR "0x83", GPT type GUID in capitals (as sfdisk shows them)
    type_name: str
    role: str | None  # "esp", "bios-boot", "windows", "linux" or None
    bootable: bool = False  # MBR boot indicator 0x80 ("active")
    name: str = ""  # GPT partition name

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "size": self.size, "type": self.type,
                "type_name": self.type_name, "bootable": self.bootable, "name": self.name}


@dataclass(frozen=True)
class Layout:
    scheme: str | None  # "mbr", "gpt", or None: no partition table
    sector_size: int
    partitions: tuple[Partition, ...] = ()
    problems: tuple[str, ...] = ()

    @cached_property
    def _boot(self) -> tuple[tuple[str, ...], str]:
        return boot_generations(self)

    @cached_property
    def _os(self) -> tuple[str | None, str]:
        return os_from_types(self.partitions)

    @property
    def generations(self) -> tuple[str, ...]:
        """The Hyper-V generations that can boot the disk, preferred first."""
        return self._boot[0]

    @property
    def generation(self) -> str | None:
        return self.generations[0] if self.generations else None

    @property
    def os_hint(self) -> str | None:
        return self._os[0]

    @property
    def reasons(self) -> tuple[str, str]:
        """Why the generation, why the OS hint."""
        return self._boot[1], self._os[1]


class Reader:
    """Reads inside the disk only; a read the disk's own reader refuses becomes a problem."""

    def __init__(self, disk: Any):
        self.disk, self.size = disk, disk.virtual_size

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0 or offset < 0:
            return b""
        try:
            return self.disk.read(offset, length)
        except VhdError as exc:
            raise TableError(f"cannot read {length:,} bytes at offset {offset:,}: {exc.detail}") from None


class TableError(VhdError):
    """The table cannot be read on: the message says why (reported, never raised out)."""


def read_layout(disk: Any) -> Layout:
    """The partition table of `disk` (anything with `virtual_size` and `read`)."""
    own = getattr(disk, "logical_sector_size", SECTOR)
    sizes = (own, 4096 if own == SECTOR else SECTOR)  # a table written for the other size: said so
    reader = Reader(disk)
    try:
        raw = reader.read(0, mbr.MBR_SIZE)
    except TableError as exc:
        return Layout(None, SECTOR, problems=(str(exc),))
    if len(raw) < mbr.MBR_SIZE or raw[-2:] != mbr.BOOT_SIGNATURE:
        return Layout(None, SECTOR)
    records = mbr.parse_mbr(raw).partition_records
    if any(r.os_type == mbr.GPT_PROTECTIVE for r in records):
        return read_gpt(reader, sizes)
    return read_mbr(reader, records, sizes[0])


def read_mbr(reader: Reader, records: list, sector: int) -> Layout:
    found: list[Partition] = []
    problems: list[str] = []
    for index, record in enumerate(records, 1):
        if record.os_type == mbr.EMPTY or record.size_in_lba == 0:
            continue
        found.append(mbr_partition(index, record, 0, sector))
        if record.os_type in mbr.EXTENDED:
            try:
                found += logical_partitions(reader, record.starting_lba, sector, problems)
            except TableError as exc:
                problems.append(f"extended partition {index}: {exc}")
        if record.boot_indicator not in (0, mbr.ACTIVE):
            problems.append(f"partition {index} has boot indicator 0x{record.boot_indicator:02x} "
                            "(only 0x00 and 0x80 are valid)")
    problems += past_the_end(found, reader.size)
    return Layout("mbr", sector, tuple(found), tuple(problems))


def mbr_partition(index: int, record: Any, base_lba: int, sector: int) -> Partition:
    return Partition(
        index, (base_lba + record.starting_lba) * sector, record.size_in_lba * sector,
        f"0x{record.os_type:02x}", mbr.type_name(record.os_type), MBR_ROLES.get(record.os_type),
        bootable=record.boot_indicator == mbr.ACTIVE,
    )


def logical_partitions(reader: Reader, extended_lba: int, sector: int, problems: list[str]) -> list[Partition]:
    """Follow the EBR chain: each EBR's first record is a logical partition (relative to that
    EBR), its second the next EBR (relative to the extended partition's start)."""
    found: list[Partition] = []
    ebr_lba, seen = extended_lba, set()
    for _ in range(MAX_LOGICAL):  # EBRs, not partitions: an empty EBR still costs a read
        if ebr_lba in seen:
            problems.append(f"the extended boot record chain loops back to sector {ebr_lba:,}")
            return found
        seen.add(ebr_lba)
        raw = reader.read(ebr_lba * sector, mbr.MBR_SIZE)
        if len(raw) < mbr.MBR_SIZE or raw[-2:] != mbr.BOOT_SIGNATURE:
            problems.append(f"no extended boot record at sector {ebr_lba:,}")
            return found
        this, following = mbr.parse_mbr(raw).partition_records[:2]
        if this.os_type != mbr.EMPTY and this.size_in_lba:
            found.append(mbr_partition(5 + len(found), this, ebr_lba, sector))
        if following.os_type not in mbr.EXTENDED or following.size_in_lba == 0:
            return found
        ebr_lba = extended_lba + following.starting_lba
    problems.append(f"more than {MAX_LOGICAL} extended boot records: the rest are not read")
    return found


def read_gpt(reader: Reader, sizes: tuple[int, ...]) -> Layout:
    problems: list[str] = []
    for sector in sizes:
        try:
            header = gpt_header(reader, sector, 1, problems)
            if header is None:  # the primary is damaged: the backup at the last LBA (UEFI 5.3.2)
                header = gpt_header(reader, sector, reader.size // sector - 1, problems)
                if header is not None:
                    problems.append("the primary GPT header is damaged: read the backup")
            if header is not None:
                if sector != sizes[0]:
                    problems.append(f"the GPT is laid out for {sector}-byte sectors but the disk has "
                                    f"{sizes[0]}-byte sectors: firmware reading it as it is finds no GPT")
                found = tuple(gpt_entries(reader, header, sector, problems))
                return Layout("gpt", sector, found, tuple(problems + past_the_end(found, reader.size)))
        except TableError as exc:
            problems.append(f"GPT with {sector}-byte sectors: {exc}")
    problems.insert(0, "protective MBR (type 0xee) but no valid GPT header")
    return Layout(None, sizes[0], problems=tuple(problems))


def gpt_header(reader: Reader, sector: int, lba: int, problems: list[str]) -> Any | None:
    """The header at `lba` if its signature, size, CRC and own LBA hold; else None (reported
    unless there is no signature at all)."""
    block = reader.read(lba * sector, sector)
    if len(block) < gpt.HEADER_FIELDS_SIZE or block[:8] != gpt.SIGNATURE:
        return None
    header = gpt.parse_header(block)
    where = f"GPT header at LBA {lba:,} ({sector}-byte sectors)"
    if not gpt.HEADER_FIELDS_SIZE <= header.header_size <= sector:
        problems.append(f"{where}: header size {header.header_size:,} is not between 92 and {sector}")
    elif gpt.header_crc(block, header.header_size) != header.header_crc32:
        problems.append(f"{where}: CRC-32 mismatch")
    elif header.my_lba != lba:
        problems.append(f"{where} says it is at LBA {header.my_lba:,}")
    else:
        return header
    return None


def gpt_entries(reader: Reader, header: Any, sector: int, problems: list[str]) -> list[Partition]:
    size, count = header.size_of_partition_entry, header.number_of_partition_entries
    if size < gpt.ENTRY_SIZE or size > MAX_ENTRY_SIZE or size & (size - 1):
        raise TableError(f"partition entry size {size:,} is not 128 * 2**n up to {MAX_ENTRY_SIZE}")
    if count * size > MAX_ENTRY_ARRAY:
        problems.append(f"{count:,} partition entries of {size} bytes: only the first "
                        f"{MAX_ENTRY_ARRAY // size:,} ({format_size(MAX_ENTRY_ARRAY)}) are read")
        count = MAX_ENTRY_ARRAY // size
    offset = header.partition_entry_lba * sector
    array = reader.read(offset, count * size)
    if len(array) < count * size:
        raise TableError(f"the partition entry array at LBA {header.partition_entry_lba:,} ends past the disk")
    if zlib.crc32(array) != header.partition_entry_array_crc32:
        problems.append("partition entry array: CRC-32 mismatch")
    found = []
    for slot in range(count):
        entry = gpt.parse_entry(array[slot * size : (slot + 1) * size])
        type_guid = gpt.guid(entry.partition_type_guid)
        if type_guid == gpt.UNUSED:
            continue
        if entry.ending_lba < entry.starting_lba:
            problems.append(f"partition {slot + 1} ends (LBA {entry.ending_lba:,}) before it starts "
                            f"(LBA {entry.starting_lba:,})")
            continue
        found.append(Partition(
            slot + 1, entry.starting_lba * sector, (entry.ending_lba - entry.starting_lba + 1) * sector,
            str(type_guid).upper(), gpt.type_name(type_guid), GPT_ROLES.get(type_guid),
            name=gpt.partition_name(entry.partition_name),
        ))
    return found


def past_the_end(partitions: tuple[Partition, ...] | list[Partition], disk_size: int) -> list[str]:
    return [f"partition {p.index} ends at byte {p.start + p.size:,}, past the disk's end ({disk_size:,})"
            for p in partitions if p.start + p.size > disk_size]


def numbers(partitions: list[Partition]) -> str:
    return ", ".join(str(p.index) for p in partitions)


def boot_generations(layout: Layout) -> tuple[tuple[str, ...], str]:
    """Hyper-V generations that can boot the disk (preferred first), and why."""
    roles = {role: [p for p in layout.partitions if p.role == role] for role in ("esp", "bios-boot")}
    if layout.scheme is None:
        return (), "no partition table: the boot firmware cannot be told"
    if layout.scheme == "gpt":
        esp, bios = roles["esp"], roles["bios-boot"]
        if esp and bios:
            return (V2, V1), (f"GPT with an EFI system partition ({numbers(esp)}): boots through UEFI "
                              f"(Generation 2); its BIOS boot partition ({numbers(bios)}) boots "
                              "through BIOS too (Generation 1)")
        if esp:
            return (V2,), f"GPT with an EFI system partition ({numbers(esp)}): boots through UEFI (Generation 2)"
        if bios:
            return (V1,), (f"GPT with a BIOS boot partition ({numbers(bios)}) and no EFI system "
                           "partition: boots through BIOS (Generation 1)")
        return (), "GPT without an EFI system partition or BIOS boot partition: a data disk, or not bootable"
    active = [p for p in layout.partitions if p.bootable]
    if active:
        return (V1,), f"MBR with active partition {numbers(active)}: boots through BIOS (Generation 1)"
    systems = [p for p in layout.partitions if p.role in (WINDOWS, LINUX)]
    if systems:
        return (V1,), (f"MBR with OS partition{'s' * (len(systems) > 1)} {numbers(systems)}: boots "
                       "through BIOS (Generation 1)")
    return (), "MBR without an active or OS partition: a data disk, or not bootable"


def os_from_types(partitions: tuple[Partition, ...]) -> tuple[str | None, str]:
    """The OS the partition types point to, when they point to one only."""
    by_os = {os: [p for p in partitions if p.role == os] for os in (WINDOWS, LINUX)}
    said = [f"{os.capitalize()}: " + ", ".join(f"{p.index} {p.type_name}" for p in parts)
            for os, parts in by_os.items() if parts]
    if len(said) == 1:
        return (WINDOWS if by_os[WINDOWS] else LINUX), f"partition types say {said[0]}"
    if said:
        return None, "partition types of both Windows and Linux (" + "; ".join(said) + "): no single OS"
    return None, "no Windows or Linux partition type"


def to_dict(layout: Layout) -> dict[str, Any]:
    """For `info --json` / `check --json`."""
    return {
        "scheme": layout.scheme,
        "sector_size": layout.sector_size,
        "partitions": [p.to_dict() for p in layout.partitions],
        "generation": layout.generation,
        "generations": list(layout.generations),
        "os_hint": layout.os_hint,
        "reasons": list(layout.reasons),
        "problems": list(layout.problems),
    }


def render_lines(layout: Layout) -> list[str]:
    """For `info` / `check` text output."""
    return render_dict(to_dict(layout))


def render_dict(layout: dict[str, Any]) -> list[str]:
    """render_lines of what to_dict made (info's text is printed from its JSON-able data)."""
    if layout["scheme"] is None:
        lines = ["partition table: none"]
    else:
        count = len(layout["partitions"])
        lines = [f"partition table: {layout['scheme'].upper()}, {layout['sector_size']}-byte sectors, "
                 f"{count} partition{'s' * (count != 1)}"]
    for p in layout["partitions"]:
        flags = (" active" if p["bootable"] else "") + (f' "{p["name"]}"' if p["name"] else "")
        lines.append(f"  {p['index']:>3}  start {p['start']:>15,}  size {format_size(p['size'])}  "
                     f"{p['type_name']}{flags}")
    boot_reason, os_reason = layout["reasons"]
    lines.append(f"generation: {layout['generation'] or 'unknown'} ({boot_reason})")
    lines.append(f"os: {layout['os_hint'] or 'unknown'} ({os_reason})")
    lines += [f"partition table problem: {problem}" for problem in layout["problems"]]
    return lines


class GenerationFinding(NamedTuple):
    """A finding for `check --target azure*`, as `Report.add(code, message, fix)` takes it."""

    code: str  # "partitions.generation" (info) or "partitions.generation-unknown" (warning)
    severity: str
    message: str
    fix: str | None = None


def generation_findings(layout: Layout) -> list[GenerationFinding]:
    """Which --hyper-v-generation to create the Azure disk or image with, or a warning."""
    if layout.generation is None:
        problems = f"; {'; '.join(layout.problems)}" if layout.problems else ""
        return [GenerationFinding(
            "partitions.generation-unknown", "warning",
            f"the Hyper-V generation cannot be told from the partition table ({layout.reasons[0]}"
            f"{problems}): a disk created with the wrong --hyper-v-generation does not boot",
        )]
    others = f" (or {', '.join(layout.generations[1:])})" if len(layout.generations) > 1 else ""
    return [GenerationFinding(
        "partitions.generation", "info",
        f"create the disk or image with --hyper-v-generation {layout.generation}{others}: {layout.reasons[0]}",
    )]


def contradiction(layout: Layout, requested: str) -> str | None:
    """Why `requested` (V1/V2) cannot boot this disk, or None when it can or cannot be told."""
    if not layout.generations or requested.upper() in layout.generations:
        return None
    return f"--hyper-v-generation {requested} contradicts the disk: {layout.reasons[0]}"
