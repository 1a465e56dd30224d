"""Pure partition-table structures (MBR, GPT): bytes in, objects out. Little-endian throughout."""
