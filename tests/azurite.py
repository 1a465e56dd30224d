"""Azurite (the Azure Storage emulator) for tests: a pinned project-local install and a runner.

Tests talk real HTTP to a throwaway Azurite blob service on loopback, so the page-blob code is
exercised against the same REST surface as Azure without network access or an account.
Run ``python tests/azurite.py install`` to install it ahead of the tests (idempotent).
With ``oauth=True`` it serves HTTPS with a certificate made for the run and accepts Azure AD
bearer tokens (``--oauth basic``: Azurite decodes the JWT and checks iss, aud, nbf, exp and
iat, not its signature; see Azurite's BlobTokenAuthenticator).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
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
from datetime import datetime, timedelta, timezone
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
    ca_file: str | None = None  # HTTPS: the CA that signed Azurite's certificate (REQUESTS_CA_BUNDLE)


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


def make_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signs for 127.0.0.1 and localhost:
    (CA file, certificate file, key file). A CA rather than one self-signed leaf, because
    OpenSSL trusts a bundle entry as an anchor only when it is a CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.now(timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def build(subject: str, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("vhdtool test CA"))
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    ca = build("vhdtool test CA", ca_key.public_key(), True).sign(ca_key, hashes.SHA256())
    server = (build("127.0.0.1", key.public_key(), False)
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    files = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


@contextlib.contextmanager
def running_azurite(tmpdir: str | os.PathLike[str], *, oauth: bool = False) -> Iterator[Azurite]:
    """Run an in-memory Azurite blob service on a free loopback port for the ``with`` body.

    Data lives in memory (``--inMemoryPersistence``) so startup and teardown are fast; Azurite
    3.37 refuses ``--location`` together with it, so ``tmpdir`` is its working directory instead
    (its default workspace). The process is always stopped on exit, even if the body raises.
    With `oauth`: HTTPS (certificate files made in `tmpdir`) and ``--oauth basic``.
    """
    binary = azurite_bin()
    if not binary.exists():
        raise RuntimeError(f"Azurite is not installed at {binary}: run `python tests/azurite.py install`")
    port = _free_port()
    cmd = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port),
           "--inMemoryPersistence", "--silent",
           "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    ca_file, scheme = None, "http"
    if oauth:
        ca, cert, key = make_certificate(Path(tmpdir))
        cmd += ["--cert", str(cert), "--key", str(key), "--oauth", "basic"]
        ca_file, scheme = str(ca), "https"
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
            endpoint = f"{scheme}://127.0.0.1:{port}/{ACCOUNT_NAME}"
            yield Azurite(
                port=port,
                blob_endpoint=endpoint,
                account_name=ACCOUNT_NAME,
                account_key=ACCOUNT_KEY,
                connection_string=(
                    f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT_NAME};"
                    f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
                ),
                ca_file=ca_file,
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
