"""The project's own error type and its documented exit codes."""

from vhdtool.redaction import redact

EXIT_OK = 0
EXIT_PROBLEMS = 1  # check found problems
EXIT_UNUSABLE = 2  # unusable input or usage


class VhdError(Exception):
    """A failure the user can act on: one line, naming the file and the problem.

    Every parse of untrusted bytes raises this (or a subclass), never anything else.
    """

    exit_code = EXIT_UNUSABLE

    def __init__(self, message: str, path: object | None = None):
        # Redacted here, where every message passes: a path may be a blob URL with its SAS.
        self.path = None if path is None else redact(str(path))
        self.detail = redact(message)
        super().__init__(f"{self.path}: {self.detail}" if self.path else self.detail)


class FormatError(VhdError):
    """The bytes are not a VHD structure we can use (bad cookie, checksum, bounds)."""


class NotVhdError(FormatError):
    """No VHD footer anywhere: the file may be a raw image."""


class UnsupportedFormatError(FormatError):
    """Another tool's format (qcow2, VMDK, VDI): the message says how to convert it."""


class DamagedImageError(FormatError):
    """The image has structural damage that changes what its virtual disk reads."""


class WriterError(VhdError, ValueError):
    """A writer (VHD writer, MD5 feed, Put Page) was used against its contract: unaligned, out
    of order, past the end. Also a ValueError, which these raised before."""
