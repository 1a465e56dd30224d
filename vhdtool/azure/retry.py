"""Bounded retries with exponential backoff for storage calls, and one-line, redacted errors.

The SDK's own retry policy is switched off for our clients (``retry_total=0``): its defaults
wait 15 s and more between tries, and we want to count retries, bound them per request, and
end with a message that says the transfer can be resumed. Every call retried here is
idempotent (Put Page, ranged GET, properties, metadata, and lease calls with a proposed ID).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vhdtool.azure.location import redact
from vhdtool.errors import VhdError

T = TypeVar("T")

EXIT_INTERRUPTED = 3  # the network or the service gave up on us: re-run to resume
TRANSIENT_STATUS = frozenset({408, 500, 502, 503, 504})
# A body the service found corrupted against its transactional checksum (400): the bytes we
# hold are good, so sending them again is the cure (Azure and Azurite both use these codes).
CHECKSUM_MISMATCH = frozenset({"Md5Mismatch", "Crc64Mismatch"})


class ChecksumMismatch(ConnectionError):
    """Data received whose checksum is not the one the service sent with it (corrupted in transit)."""


class TransferError(VhdError):
    """A transfer stopped by transient failures that outlasted the retries; it can be resumed."""

    exit_code = EXIT_INTERRUPTED


def status_of(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """Timeouts, refused or reset connections, truncated or corrupted bodies, 5xx and 408:
    worth a retry."""
    from azure.core.exceptions import (
        HttpResponseError,
        IncompleteReadError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, (ServiceRequestError, ServiceResponseError, IncompleteReadError, ConnectionError, TimeoutError)):
        return True
    if not isinstance(exc, HttpResponseError):
        return False
    return status_of(exc) in TRANSIENT_STATUS or error_code(exc) in CHECKSUM_MISMATCH


def error_code(exc: BaseException) -> str | None:
    """The service's error code (the SDK gives an enum or a string, or none)."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code)) if code else None


def describe(exc: BaseException) -> str:
    """The first line of an SDK error with its status and error code, secrets scrubbed."""
    status = status_of(exc)
    code = getattr(exc, "error_code", None)
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
    head = " ".join(str(part) for part in (status, code) if part)
    text = lines[0] if lines else type(exc).__name__
    return redact(f"{head}: {text}" if head and head not in text else text)


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries per call; the n-th retry waits base * 2**n seconds (capped),
    with jitter so that parallel workers do not retry in lockstep against a busy server."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, retry: int) -> float:
        return min(self.max_delay, self.base_delay * 2**retry) * random.uniform(0.5, 1.0)


class Retrier:
    """Runs calls under a `RetryPolicy`; counts retries across threads for the summary."""

    def __init__(self, policy: RetryPolicy = RetryPolicy()):
        self.policy = policy
        self.retries = 0
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        retry = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or retry + 1 >= self.policy.attempts:
                    raise
            with self._lock:
                self.retries += 1
            time.sleep(self.policy.delay(retry))
            retry += 1
