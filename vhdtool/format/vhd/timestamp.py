"""VHD timestamps: unsigned seconds since 2000-01-01 00:00:00 UTC."""

from datetime import datetime, timedelta, timezone

VHD_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)  # Unix 946684800


def to_datetime(seconds: int) -> datetime:
    return VHD_EPOCH + timedelta(seconds=seconds)


def to_iso(seconds: int) -> str:
    """ISO-8601 UTC with a Z, as info and check print timestamps."""
    return to_datetime(seconds).isoformat().replace("+00:00", "Z")


def from_datetime(moment: datetime) -> int:
    """Seconds since the VHD epoch, clamped to the u32 field (dates before 2000 give 0)."""
    seconds = int((moment - VHD_EPOCH).total_seconds())
    return min(max(seconds, 0), 0xFFFFFFFF)


def now() -> int:
    return from_datetime(datetime.now(timezone.utc))
