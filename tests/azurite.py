"""Azurite (the Azure Storage emulator) for tests: a pinned project-local install and a runner.

Tests talk real HTTP to a throwaway Azurite blob service on loopback, so the page-blob code is
exercised against the same REST surface as Azure without network access or an account.
Run ``python tests/azurite.py install`` to install it ahead of the tests (idempotent).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AZURITE_VERSION = "3.37.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_PREFIX = REPO_ROOT / ".azurite"

# Azurite's documented well-known development account (public, not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
STARTUP_TIMEOUT = 30.0


def azurite_bin() -> Path:
    """Path of the project-local ``azurite-blob`` launcher (may not exist yet)."""
    return AZURITE_PREFIX / "node_modules" / ".bin" / "azurite-blob"


def install_azurite() -> Path:
    """Install the pinned Azurite under ``<repo>/.azurite`` unless already there; return the binary.

    A file lock serialises concurrent callers (parallel test workers, the runner script).
    """
    binary = azurite_bin()
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH: install Node.js (Azurite declares 22+) to run Azurite tests")
    AZURITE_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(AZURITE_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():  # another process installed it while we waited
            return binary
        cmd = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
               "--prefix", str(AZURITE_PREFIX), f"azurite@{AZURITE_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not binary.exists():
            raise RuntimeError(
                f"installing azurite@{AZURITE_VERSION} failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
    return binary


@dataclass(frozen=True)
class Azurite:
    """Coordinates of a running Azurite blob service."""

    port: int
    blob_endpoint: str
    account_name: str
    account_key: str
    connection_string: str


def _free_port() -> int:
    """A loopback port free right now (Azurite binds it moments later; a race is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM Azurite if the test process dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_azurite(tmpdir: str | os.PathLike[str]) -> Iterator[Azurite]:
    """Run an in-memory Azurite blob service on a free loopback port for the ``with`` body.

    Data lives in memory (``--inMemoryPersistence``) so startup and teardown are fast; Azurite
    3.37 refuses ``--location`` together with it, so ``tmpdir`` is its working directory instead
    (its default workspace). The process is always stopped on exit, even if the body raises.
    """
    binary = azurite_bin()
    if not binary.exists():
        raise RuntimeError(f"Azurite is not installed at {binary}: run `python tests/azurite.py install`")
    port = _free_port()
    cmd = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
           "--inMemoryPersistence", "--silent",
           "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=tmpdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _port_answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    _stop(proc)
                    log.seek(0)
                    output = log.read().decode(errors="replace").strip()
                    state = (f"exited with code {proc.returncode}" if proc.returncode is not None
                             else f"did not listen within {STARTUP_TIMEOUT:.0f} s")
                    raise RuntimeError(f"Azurite on 127.0.0.1:{port} {state}; output:\n{output}")
                time.sleep(0.05)
            endpoint = f"http://127.0.0.1:{port}/{ACCOUNT_NAME}"
            yield Azurite(
                port=port,
                blob_endpoint=endpoint,
                account_name=ACCOUNT_NAME,
                account_key=ACCOUNT_KEY,
                connection_string=(
                    f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
                    f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
                ),
            )
        finally:
            _stop(proc)


def _main(argv: list[str]) -> int:
    if argv == ["install"]:
        print(install_azurite())
        return 0
    print("usage: python tests/azurite.py install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
