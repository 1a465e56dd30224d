"""Pure VHD on-disk structures: bytes in, objects out, objects to bytes."""
