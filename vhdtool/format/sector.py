"""The sector: the unit every VHD offset and size counts in (VHD spec: 512 bytes)."""

SECTOR = 512
