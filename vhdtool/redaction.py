"""Secrets out of text: SAS signatures, account keys and tokens never reach output, logs or errors.

At the bottom of the layers, so that every error message can pass through it (VhdError does),
whichever layer raised it: a blob URL given where a local file was expected still names the
file in the error, without its signature.
"""

from __future__ import annotations

import re

_REDACTIONS = (
    # SAS signature, plain or percent-encoded inside another URL.
    (re.compile(r"(?i)((?<![a-z_])sig(?:=|%3D))[^&\s'\"<>]+"), r"\1REDACTED"),
    # Connection-string account key.
    (re.compile(r"(?i)(\bAccountKey=)[^;\s'\"<>]+"), r"\1REDACTED"),
    # Key in a credential dict/kwarg repr: account_key='...'.
    (re.compile(r"(?i)(\baccount_key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,;})]+"), r"\1REDACTED"),
    # Shared Key Authorization header: SharedKey account:signature.
    (re.compile(r"(\bSharedKey\s+[^:\s]+:)[A-Za-z0-9+/=]+"), r"\1REDACTED"),
    # Azure AD bearer token (a JWT) in an Authorization header; 20+ characters, so that prose
    # such as "Bearer token authentication is not permitted" (azure-core) stays readable.
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9\-_.~+/]{20,}=*"), r"\1REDACTED"),
)


def redact(text: str) -> str:
    """Scrub SAS signatures and account keys out of arbitrary text (e.g. SDK error messages)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown(name: object) -> str:
    """A file name or URL as one piece of a line of output: redacted, and in double quotes
    with C escapes (as git shows such paths) when it holds a control character, so that it
    can neither break the line nor forge another ("x.vhd\\nverdict: OK ...")."""
    text = redact(str(name))
    return f'"{c_escaped(text, chr(34))}"' if has_control(text) else text


def one_line(text: str) -> str:
    """A line of a text report, whatever the image or the file names put in it: redacted, and
    any control character as a C escape (a parent path stored as "x\\nverdict: OK" in an
    image would otherwise print as two lines; an escape sequence would drive the terminal)."""
    return _CONTROL.sub(_escape, redact(text))


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def c_escaped(text: str, quote: str) -> str:
    """`text` with its backslashes, `quote` characters and control characters as C escapes."""
    return _CONTROL.sub(_escape, text.replace("\\", "\\\\").replace(quote, "\\" + quote))


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
