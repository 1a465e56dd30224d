"""The structural rules of a VHD file: each finding `check` reports and the reader acts on, written once."""
