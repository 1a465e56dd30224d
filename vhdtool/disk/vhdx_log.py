"""Replay a VHDX log in memory, read-only (MS-VHDX 2.3.3), as an overlay on the file's bytes.

The active sequence is found as QEMU's vhdx_log_search does: try every 4 KiB log sector as the
start of a run of valid entries with consecutive sequence numbers, keep the run whose last
entry has the highest sequence number. The spec adds that the last entry's Tail must point at
an entry of the run: replay starts there. Nothing is written to the source: the overlay keeps
where each sector's new bytes lie in the log, and reads of the file are patched through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from construct import Container

from vhdtool.disk.image import zero
from vhdtool.disk.vhdx_errors import VhdxLogError
from vhdtool.format.vhdx.checksum import vhdx_checksum
from vhdtool.format.vhdx.fields import MiB
from vhdtool.format.vhdx.header import LOG_VERSION
from vhdtool.format.vhdx.log import (
    DATA_DESCRIPTOR,
    DATA_SIGNATURE,
    DESCRIPTOR_SIZE,
    ENTRY_SIGNATURE,
    LOG_SECTOR,
    ZERO_DESCRIPTOR,
    DataSector,
    Descriptor,
    LogEntryHeader,
    descriptor_sectors,
)

# Hyper-V and QEMU write 1 MiB logs. These bound the memory and work of a replay: an entry is
# read whole to check its CRC, and every write it holds is kept for the overlay.
MAX_LOG_LENGTH = 16 * MiB
MAX_WRITES = 16384
MAX_FILE_SIZE = 2**63 - 1  # off_t is signed 64-bit: no file grows past this, a log saying so is damaged


@dataclass
class Write:
    """One logged write: `length` bytes at `file_offset`, zeros or one sector from the log."""

    file_offset: int
    length: int
    data_at: int | None = None  # file offset of the log's data sector, None for zeros
    leading: bytes = b""  # the sector's first 8 bytes (kept in the descriptor)
    trailing: bytes = b""  # and its last 4


@dataclass
class Entry:
    start: int  # log sector index
    sectors: int
    header: Container
    writes: list[Write] = field(default_factory=list)


@dataclass
class Overlay:
    """The file as it reads after replay: `writes` applied in order over the file's bytes."""

    fd: int
    writes: list[Write]
    file_size: int  # after replay (the log may extend the file)
    entries: int

    def patch(self, buf: memoryview, offset: int) -> None:
        """Apply the logged writes that overlap [offset, offset + len(buf))."""
        end = offset + len(buf)
        for w in self.writes:
            s, e = max(offset, w.file_offset), min(end, w.file_offset + w.length)
            if s >= e:
                continue
            if w.data_at is None:
                zero(buf[s - offset : e - offset])
                continue
            sector = w.leading + os.pread(self.fd, LOG_SECTOR, w.data_at)[8:4092] + w.trailing
            buf[s - offset : e - offset] = sector[s - w.file_offset : e - w.file_offset]


class LogReader:
    """Sectors of the circular log, and the valid entries in it (each parsed once)."""

    def __init__(self, fd: int, header: Container, path: Path):
        self.fd, self.path, self.guid = fd, path, header.log_guid
        self.offset, self.sectors = header.log_offset, header.log_length // LOG_SECTOR
        self._entries: dict[int, Entry | None] = {}

    def sector_offset(self, index: int) -> int:
        return self.offset + (index % self.sectors) * LOG_SECTOR

    def read(self, index: int, count: int) -> bytes:
        return b"".join(
            os.pread(self.fd, LOG_SECTOR, self.sector_offset(index + i)) for i in range(count)
        )

    def entry(self, index: int) -> Entry | None:
        index %= self.sectors
        if index not in self._entries:
            self._entries[index] = self._parse_entry(index)
        return self._entries[index]

    def _parse_entry(self, index: int) -> Entry | None:
        first = self.read(index, 1)
        if len(first) < LOG_SECTOR:
            return None
        head = LogEntryHeader.parse(first)
        sectors = head.entry_length // LOG_SECTOR
        # QEMU vhdx_log_hdr_is_valid: signature, whole sectors, not longer than the log,
        # sequence number > 0, the header's log GUID.
        if (
            head.signature != ENTRY_SIGNATURE
            or head.entry_length % LOG_SECTOR
            or not 0 < sectors <= self.sectors
            or head.sequence_number == 0
            or head.log_guid != self.guid
            or descriptor_sectors(head.descriptor_count) > sectors
        ):
            return None
        raw = self.read(index, sectors)
        if len(raw) < sectors * LOG_SECTOR or vhdx_checksum(raw) != head.checksum:
            return None
        if head.descriptor_count > MAX_WRITES:
            raise VhdxLogError(f"a log entry holds {head.descriptor_count} writes", self.path)
        entry = Entry(index, sectors, head)
        data_sector = index + descriptor_sectors(head.descriptor_count)
        for i in range(head.descriptor_count):
            at = 64 + i * DESCRIPTOR_SIZE
            desc = Descriptor.parse(raw[at : at + DESCRIPTOR_SIZE])
            if desc.sequence_number != head.sequence_number or desc.file_offset % LOG_SECTOR:
                return None
            if desc.signature == ZERO_DESCRIPTOR:
                length = int.from_bytes(desc.leading_bytes, "little")
                if length % LOG_SECTOR:
                    return None
                entry.writes.append(Write(desc.file_offset, length))
            elif desc.signature == DATA_DESCRIPTOR:
                if data_sector >= index + sectors:
                    return None
                sector = DataSector.parse(raw[(data_sector - index) * LOG_SECTOR :][:LOG_SECTOR])
                seq = sector.sequence_high << 32 | sector.sequence_low
                if sector.signature != DATA_SIGNATURE or seq != head.sequence_number:
                    return None
                entry.writes.append(
                    Write(
                        desc.file_offset,
                        LOG_SECTOR,
                        self.sector_offset(data_sector),
                        desc.leading_bytes,
                        desc.trailing_bytes,
                    )
                )
                data_sector += 1
            else:
                return None
        return entry

    def run_from(self, index: int) -> list[Entry]:
        """Valid entries with consecutive sequence numbers starting at sector `index`."""
        run: list[Entry] = []
        used = 0
        entry = self.entry(index)
        while entry is not None and used + entry.sectors <= self.sectors:
            if run and entry.header.sequence_number != run[-1].header.sequence_number + 1:
                break
            run.append(entry)
            used += entry.sectors
            entry = self.entry(entry.start + entry.sectors)
        return run

    def active_sequence(self) -> list[Entry]:
        best: list[Entry] = []
        for index in range(self.sectors):
            run = self.run_from(index)
            if not run:
                continue
            tail = run[-1].header.tail
            starts = [e.start * LOG_SECTOR for e in run]
            if tail not in starts:  # spec 2.3.3: the head's Tail names the sequence's first entry
                continue
            run = run[starts.index(tail) :]
            if not best or run[-1].header.sequence_number > best[-1].header.sequence_number:
                best = run
        return best


def replay(fd: int, file_size: int, header: Container, path: Path) -> Overlay | None:
    """The overlay of the header's log, or None when the log holds no active sequence."""
    offset, length = header.log_offset, header.log_length
    if header.log_version != LOG_VERSION:
        raise VhdxLogError(f"log version {header.log_version}, only {LOG_VERSION} is defined", path)
    if length == 0 or length % MiB or offset < MiB or offset % MiB:
        raise VhdxLogError(f"log of {length} bytes at offset {offset} is not 1 MiB aligned", path)
    if offset + length > file_size:
        raise VhdxLogError(f"log at {offset} (+{length}) ends past the {file_size}-byte file", path)
    if length > MAX_LOG_LENGTH:
        raise VhdxLogError(f"log of {length} bytes is larger than {MAX_LOG_LENGTH}", path)
    entries = LogReader(fd, header, path).active_sequence()
    if not entries:
        return None
    size = file_size
    writes: list[Write] = []
    for entry in entries:
        if entry.header.flushed_file_offset > file_size:
            # QEMU vhdx_log_flush: the file was truncated after the entry was written.
            raise VhdxLogError(
                f"log entry {entry.header.sequence_number} needs a file of at least "
                f"{entry.header.flushed_file_offset} bytes, the file has {file_size}",
                path,
            )
        writes.extend(entry.writes)
        if len(writes) > MAX_WRITES:
            raise VhdxLogError(f"the log holds more than {MAX_WRITES} writes", path)
        size = max(
            size, entry.header.last_file_offset, *(w.file_offset + w.length for w in entry.writes)
        )
    if size > MAX_FILE_SIZE:
        raise VhdxLogError(f"the log would grow the file to {size} bytes, past the largest possible file", path)
    return Overlay(fd, writes, size, len(entries))
