"""Azure AD sign-in (issue #14 item 2) and the plain-http refusal (issue #13).

The sign-in tests run against Azurite's OAuth mode: HTTPS with a certificate made for the run
and ``--oauth basic``, which decodes each bearer JWT and checks its issuer, audience and
lifetime (not its signature). The CLI tests reach DefaultAzureCredential's managed-identity
path through a loopback token endpoint (IDENTITY_ENDPOINT, as App Service provides), so the
real azure-identity code runs; library tests pass their own TokenCredential.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vhdtool.azure.address import blob_from_args
from vhdtool.azure.location import (
    Access,
    BlobLocation,
    ContainerLocation,
    blob_client,
    container_client,
    default_login,
)
from vhdtool.errors import VhdError
from vhdtool.workflows.download import DownloadOptions, download
from vhdtool.workflows.upload import UploadOptions, upload

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXED = FIXTURES / "windows-fixed-10m.vhd"
REPO = Path(__file__).resolve().parent.parent
SIG = "Qm9ndXNTaWduYXR1cmVWYWx1ZTEyMzQ1Njc4OTA%3D"
SAS = f"sv=2022-11-02&sp=rw&se=2030-01-01T00:00:00Z&sig={SIG}"
KEY = "q3V8lL1Yx0bS2mJ7Gk9tE4wZcN6rP5uD8aF1hI3oK7sQ2vX9yB4nM6eT0gR5jW8zC1pL3dH7fA9kU2iO4xY6bV0w=="
# Azure AD environment variables DefaultAzureCredential would use before managed identity.
AAD_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
           "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
           "MSI_ENDPOINT", "MSI_SECRET", "AZURE_STORAGE_CONNECTION_STRING")


def jwt(**claims: object) -> str:
    """An unsigned JWT with Azure AD's storage claims (Azurite basic OAuth checks no signature)."""
    now = int(time.time())
    body = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{uuid.uuid4()}/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": str(uuid.uuid4()), **claims}

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(body)}."


class StaticToken:
    """A TokenCredential handing out one token, counting the calls."""

    def __init__(self, token: str):
        self.token, self.calls = token, 0

    def get_token(self, *scopes: str, **kwargs: object):
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite over HTTPS with basic OAuth, for this module."""
    try:
        from tests.azurite import install_azurite, running_azurite
    except ImportError:
        from azurite import install_azurite, running_azurite  # type: ignore[no-redef]

    install_azurite()
    with running_azurite(tmp_path_factory.mktemp("azurite-oauth"), oauth=True) as server:
        yield server


@pytest.fixture
def oauth_container(oauth_azurite, monkeypatch):
    """A fresh container (made with the account key), the test trusting Azurite's CA."""
    from azure.storage.blob import ContainerClient

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", oauth_azurite.ca_file)
    client = ContainerClient.from_connection_string(oauth_azurite.connection_string, f"t{uuid.uuid4().hex[:20]}")
    client.create_container()
    return client


def blob_url(azurite, container, name: str) -> str:
    return f"{azurite.blob_endpoint}/{container.container_name}/{name}"


@pytest.fixture
def token_endpoint() -> Iterator[tuple[dict[str, str], list[str]]]:
    """A managed-identity token endpoint on loopback: (environment for vhdtool, tokens to hand
    out: the test appends one; the endpoint serves the last)."""
    tokens: list[str] = []
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps({"access_token": tokens[-1], "expires_on": str(int(time.time()) + 3600),
                               "resource": "https://storage.azure.com", "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{server.server_port}/msi/token", "IDENTITY_HEADER": "h"}
    try:
        yield env, tokens
        assert asked, "vhdtool never asked the managed-identity endpoint for a token"
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (DefaultAzureCredential caches per process), with `env`."""
    base = {k: v for k, v in os.environ.items() if k not in AAD_ENV}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "vhdtool.cli", *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, *secrets: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vhdtool: error: "), proc.stderr
    for secret in secrets:
        assert secret not in proc.stderr
    return lines[0]


# --- sign-in on Azurite's OAuth mode ----------------------------------------------------------


def test_library_upload_and_download_with_a_token_credential(oauth_azurite, oauth_container, tmp_path) -> None:
    token = StaticToken(jwt())
    location = BlobLocation.from_url(blob_url(oauth_azurite, oauth_container, "lib.vhd"), Access(credential=token))
    assert location.credential_kind == "token" and "token" not in repr(location).replace("credential='token'", "")
    done = upload(FIXED, location, UploadOptions(workers=4))
    assert done.sent_bytes > 0
    assert oauth_container.get_blob_client("lib.vhd").download_blob().readall() == FIXED.read_bytes()
    back = download(location, tmp_path / "back.vhd", DownloadOptions(workers=2))
    assert back.path.read_bytes() == FIXED.read_bytes()
    assert token.calls >= 1
    anonymous = BlobLocation.from_url(blob_url(oauth_azurite, oauth_container, "anon.vhd"), Access("anonymous"))
    with pytest.raises(VhdError):  # so the token is what let the upload in
        upload(FIXED, anonymous, UploadOptions(workers=2))


def test_library_wrong_token_is_one_line_exit_2(oauth_azurite, oauth_container) -> None:
    expired = jwt(exp=int(time.time()) - 600, nbf=int(time.time()) - 3600, iat=int(time.time()) - 3600)
    location = BlobLocation.from_url(blob_url(oauth_azurite, oauth_container, "x.vhd"),
                                     Access(credential=StaticToken(expired)))
    with pytest.raises(VhdError) as err:
        upload(FIXED, location, UploadOptions(workers=2))
    assert err.value.exit_code == 2
    assert "\n" not in str(err.value) and expired not in str(err.value)
    assert "403" in str(err.value) and "failed to authenticate" in str(err.value)


def test_cli_signs_in_with_default_azure_credential(oauth_azurite, oauth_container, token_endpoint, tmp_path) -> None:
    """A URL without a SAS signs in (auto), and `--auth login` says so explicitly: upload,
    download, info, and an image store given as a container URL."""
    env, tokens = token_endpoint
    token = jwt()
    tokens.append(token)
    env = {**env, "REQUESTS_CA_BUNDLE": oauth_azurite.ca_file}
    url = blob_url(oauth_azurite, oauth_container, "cli.vhd")
    up = run("upload", str(FIXED), url, "--workers", "4", env=env)
    assert up.returncode == 0, up.stderr
    dest = tmp_path / "back.vhd"
    down = run("download", "--auth", "login", url, str(dest), env=env)
    assert down.returncode == 0, down.stderr
    assert dest.read_bytes() == FIXED.read_bytes()
    info = run("info", "--json", url, env=env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual_size"] == FIXED.stat().st_size - 512
    store = f"{oauth_azurite.blob_endpoint}/{oauth_container.container_name}"
    capture = run("image", "capture", "base", "--os-disk", str(FIXED), "--os-type", "linux",
                  "--os-state", "generalized", "--store", store, env=env)
    assert capture.returncode == 0, capture.stderr
    listed = run("image", "list", "--json", "--store", store, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == ["base"]
    for proc in (up, down, info, capture, listed):
        assert token not in proc.stdout + proc.stderr
        assert token.split(".")[1] not in proc.stdout + proc.stderr


def test_cli_wrong_token_is_one_line_exit_2(oauth_azurite, oauth_container, token_endpoint, tmp_path) -> None:
    """Tokens Azure would refuse (another audience, a foreign issuer): exit 2, one line, no token."""
    env, tokens = token_endpoint
    env = {**env, "REQUESTS_CA_BUNDLE": oauth_azurite.ca_file}
    url = blob_url(oauth_azurite, oauth_container, "wrong.vhd")
    tokens.append(jwt(aud="https://management.azure.com"))
    line = one_line_error(run("upload", "--auth", "login", str(FIXED), url, env=env), tokens[-1], tokens[-1].split(".")[1])
    assert "403" in line and "failed to authenticate" in line, line
    tokens.append(jwt(iss="https://sts.example.invalid/"))
    line = one_line_error(run("download", url, str(tmp_path / "w.vhd"), env=env), tokens[-1], tokens[-1].split(".")[1])
    assert "403" in line and "failed to authenticate" in line, line
    assert list(tmp_path.iterdir()) == []
    assert [b.name for b in oauth_container.list_blobs()] == []


def test_cli_without_any_credential_says_how_to_sign_in(oauth_azurite, oauth_container, tmp_path) -> None:
    url = blob_url(oauth_azurite, oauth_container, "none.vhd")
    line = one_line_error(run("upload", str(FIXED), url, env={"REQUESTS_CA_BUNDLE": oauth_azurite.ca_file}))
    assert "Azure AD sign-in failed" in line and "az login" in line and "--auth anonymous" in line


# --- which credential a location uses (no network) --------------------------------------------


def test_credential_chosen_for_each_kind_of_location() -> None:
    https = "https://acct.blob.core.windows.net/vhds/a.vhd"
    assert blob_client(BlobLocation.from_url(https)).credential is default_login()  # auto: sign in
    assert blob_client(BlobLocation.from_url(https, Access("login"))).credential is default_login()
    assert blob_client(BlobLocation.from_url(https, Access("anonymous"))).credential is None
    mine = StaticToken("t")
    assert blob_client(BlobLocation.from_url(https, Access(credential=mine))).credential is mine
    assert container_client(ContainerLocation.from_url("https://acct.blob.core.windows.net/vhds")).credential \
        is default_login()
    assert blob_client(BlobLocation.from_url("http://127.0.0.1:10000/devstoreaccount1/c01/a")).credential is None
    assert blob_client(BlobLocation.from_url(f"{https}?{SAS}")).url == f"{https}?{SAS}"  # the SDK's way
    # A URL without a SAS has no credential of its own: an image store still lends its own.
    assert BlobLocation.from_url(https).credential_kind is None
    assert BlobLocation.from_url(https, Access(credential=mine)).credential_kind == "token"
    assert repr(BlobLocation.from_url(https, Access(credential=mine))) == f"BlobLocation('{https}', credential='token')"


def test_login_from_a_connection_string_without_key() -> None:
    loc = blob_from_args(None, "vhds", "a.vhd", "BlobEndpoint=https://acct.blob.core.windows.net", Access("login"))
    assert loc.credential_kind == "token" and blob_client(loc).credential is default_login()


@pytest.mark.parametrize(
    "url, access, words",
    [
        (f"https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}", Access("login"), "drop the SAS token"),
        ("http://127.0.0.1:10000/devstoreaccount1/vhds/a.vhd", Access("login"), "needs https"),
        ("http://acct.blob.core.windows.net/vhds/a.vhd", Access(credential=StaticToken("t"), allow_http=True),
         "needs https"),
        (f"https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}", Access("anonymous"), "--auth anonymous"),
    ],
)
def test_conflicting_access_refused(url: str, access: Access, words: str) -> None:
    with pytest.raises(VhdError) as err:
        BlobLocation.from_url(url, access)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert SIG not in str(err.value)


def test_bearer_tokens_are_redacted() -> None:
    from vhdtool.redaction import redact

    token = jwt()
    assert redact(f"Authorization: Bearer {token}\nnext") == "Authorization: Bearer REDACTED\nnext"
    prose = "Bearer token authentication is not permitted for non-TLS protected (non-https) URLs."
    assert redact(prose) == prose
    assert token not in str(VhdError(f"refused: 'Authorization': 'Bearer {token}'"))


def test_unknown_auth_mode(cli) -> None:
    done = cli("download", "--auth", "magic", "https://acct.blob.core.windows.net/vhds/a.vhd", "x.vhd")
    assert done.code == 2 and "--auth: 'magic' is not one of auto, login, anonymous" in done.err


def test_importing_the_cli_does_not_load_azure_identity() -> None:
    code = "import sys, vhdtool.cli, vhdtool.azure.address\nprint([m for m in sys.modules if m.startswith('azure')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# --- plain http (issue #13) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"http://acct.blob.core.windows.net/vhds/a.vhd?{SAS}",
        f"http://10.0.0.5:10000/devstoreaccount1/vhds/a.vhd?{SAS}",
        f"HTTP://disks.example.com/vhds/a.vhd?{SAS}",
    ],
)
def test_plain_http_with_a_sas_is_refused(url: str) -> None:
    with pytest.raises(VhdError) as err:
        BlobLocation.from_url(url)
    message = str(err.value)
    assert "plain http would send a SAS token in clear" in message and "--allow-http" in message
    assert SIG not in message and "\n" not in message and err.value.exit_code == 2
    assert BlobLocation.from_url(url, Access(allow_http=True)).sas_token == SAS
    with pytest.raises(VhdError, match="plain http"):
        ContainerLocation.from_url(url.rsplit("/", 1)[0] + f"?{SAS}")


def test_plain_http_with_a_key_is_refused() -> None:
    conn = f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY}"
    with pytest.raises(VhdError, match="plain http would send an account key in clear to acct.blob.core.windows.net") as err:
        BlobLocation.from_connection_string(conn, "vhds", "a.vhd")
    assert KEY not in str(err.value)
    assert BlobLocation.from_connection_string(conn, "vhds", "a.vhd", Access(allow_http=True)).account_key == KEY
    with pytest.raises(VhdError, match="plain http"):
        ContainerLocation.from_connection_string(f"BlobEndpoint=http://disks.example.com;SharedAccessSignature={SAS}",
                                                 "vhds")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:10000/devstoreaccount1/vhds/a.vhd",
        "http://127.0.0.2:10000/devstoreaccount1/vhds/a.vhd",
        "http://localhost:10000/devstoreaccount1/vhds/a.vhd",
        "http://[::1]:10000/devstoreaccount1/vhds/a.vhd",
        "http://devstoreaccount1.blob.localhost:10000/vhds/a.vhd",
    ],
)
def test_plain_http_to_loopback_stays_allowed(url: str) -> None:
    assert BlobLocation.from_url(f"{url}?{SAS}").sas_token == SAS
    conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint={url.rsplit('/', 2)[0]}"
    assert BlobLocation.from_connection_string(conn, "vhds", "a.vhd").account_key == KEY


def test_plain_http_without_a_secret_is_not_refused() -> None:
    """A public blob over http sends nothing secret (no token either: see the login case)."""
    loc = BlobLocation.from_url("http://acct.blob.core.windows.net/vhds/a.vhd")
    assert loc.credential_kind is None and blob_client(loc).credential is None


@pytest.mark.parametrize("command", ["upload", "download", "info", "image"])
def test_cli_refuses_plain_http_and_names_the_option(command: str, cli, tmp_path) -> None:
    url = f"http://acct.blob.core.windows.net/vhds/a.vhd?{SAS}"
    args = {
        "upload": ["upload", str(FIXED), url],
        "download": ["download", url, str(tmp_path / "a.vhd")],
        "info": ["info", url],
        "image": ["image", "list", "--store", url.replace("/a.vhd", "")],
    }[command]
    done = cli(*args)
    assert done.code == 2, done.err
    assert done.err.count("\n") == 1 and "plain http would send a SAS token in clear" in done.err
    assert SIG not in done.out + done.err
    conn = cli("download", "--container", "vhds", "--name", "a.vhd", str(tmp_path / "b.vhd"),
               env={"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY}"})
    assert conn.code == 2 and "an account key in clear" in conn.err and KEY not in conn.err


def outward_address() -> str:
    """This machine's address on its default route (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached
        address = probe.getsockname()[0]
    assert not ipaddress.ip_address(address).is_loopback
    return address


@contextlib.contextmanager
def relay(host: str, port: int) -> Iterator[int]:
    """A TCP relay listening on `host` (not loopback) to 127.0.0.1:`port`; yields its port."""
    listener = socket.create_server((host, 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_cli_allow_http_lets_a_key_go_to_another_host(azurite, container, cli) -> None:
    """Azurite's plain-http endpoint reached through this machine's outward address: refused
    without --allow-http (nothing sent), uploaded with it."""
    host = outward_address()
    with relay(host, azurite.port) as port:
        endpoint = f"http://{host}:{port}/{azurite.account_name}"
        conn = (f"DefaultEndpointsProtocol=http;AccountName={azurite.account_name};"
                f"AccountKey={azurite.account_key};BlobEndpoint={endpoint}")
        args = ["upload", str(FIXED), "--container", container.container_name, "--name", "h.vhd", "--workers", "2"]
        refused = cli(*args, env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert refused.code == 2 and f"an account key in clear to {host}" in refused.err
        assert [b.name for b in container.list_blobs()] == []
        allowed = cli(*args, "--allow-http", env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert allowed.code == 0, allowed.err
    assert container.get_blob_client("h.vhd").download_blob().readall() == FIXED.read_bytes()
