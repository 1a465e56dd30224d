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
