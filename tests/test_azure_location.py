"""Azure addressing: URL / connection-string parsing, secret redaction, SDK clients (Azurite)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from vhdtool.azure.location import (
    CONNECTION_STRING_ENV,
    Access,
    DEV_ACCOUNT_KEY,
    BlobLocation,
    ContainerLocation,
    blob_client,
    container_client,
    redact,
    resolve_connection_string,
)
from vhdtool.errors import VhdError

# Realistic-looking secrets; each test asserts these exact substrings never leak.
KEY = "q3V8lL1Yx0bS2mJ7Gk9tE4wZcN6rP5uD8aF1hI3oK7sQ2vX9yB4nM6eT0gR5jW8zC1pL3dH7fA9kU2iO4xY6bV0w=="
SIG = "Qm9ndXNTaWduYXR1cmVWYWx1ZTEyMzQ1Njc4OTA%3D"
SAS = f"sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&st=2024-01-01T00:00:00Z&spr=https&sig={SIG}"
AZURE_CONN = (
    f"DefaultEndpointsProtocol=https;AccountName=mystorageacct;AccountKey={KEY};"
    "EndpointSuffix=core.windows.net"
)
AZURITE_CONN = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, text


# --- URLs -------------------------------------------------------------------------------------


def test_azure_url_with_sas() -> None:
    loc = BlobLocation.from_url(f"https://mystorageacct.blob.core.windows.net/vhds/os/disk0.vhd?{SAS}")
    assert loc.account_url == "https://mystorageacct.blob.core.windows.net"
    assert loc.account_name == "mystorageacct"
    assert loc.container == "vhds"
    assert loc.name == "os/disk0.vhd"
    assert loc.sas_token == SAS
    assert loc.account_key is None
    assert loc.credential_kind == "sas"
    assert loc.url == "https://mystorageacct.blob.core.windows.net/vhds/os/disk0.vhd"
    assert loc.container_location == ContainerLocation(
        "https://mystorageacct.blob.core.windows.net", "vhds", "mystorageacct", SAS, None
    )


def test_azurite_path_style_url() -> None:
    loc = BlobLocation.from_url("http://127.0.0.1:41234/devstoreaccount1/images/base%20disk.vhd")
    assert loc.account_url == "http://127.0.0.1:41234/devstoreaccount1"
    assert loc.account_name == "devstoreaccount1"
    assert loc.container == "images"
    assert loc.name == "base disk.vhd"
    assert loc.sas_token is None and loc.credential_kind is None
    assert loc.url == "http://127.0.0.1:41234/devstoreaccount1/images/base%20disk.vhd"


def test_localhost_path_style_and_product_style() -> None:
    path = BlobLocation.from_url("http://localhost:10000/devstoreaccount1/c01/b")
    assert (path.account_url, path.account_name, path.container, path.name) == (
        "http://localhost:10000/devstoreaccount1", "devstoreaccount1", "c01", "b")
    host = BlobLocation.from_url("http://devstoreaccount1.blob.localhost:10000/c01/b")
    assert (host.account_url, host.account_name, host.container, host.name) == (
        "http://devstoreaccount1.blob.localhost:10000", "devstoreaccount1", "c01", "b")


def test_custom_domain_has_no_account_name() -> None:
    loc = BlobLocation.from_url(f"https://disks.example.com/vhds/a.vhd?{SAS}")
    assert loc.account_url == "https://disks.example.com"
    assert loc.account_name is None
    assert (loc.container, loc.name) == ("vhds", "a.vhd")


def test_container_url() -> None:
    for url in ("https://acct.blob.core.windows.net/vhds", "https://acct.blob.core.windows.net/vhds/"):
        loc = ContainerLocation.from_url(url)
        assert loc == ContainerLocation("https://acct.blob.core.windows.net", "vhds", "acct")
    loc = ContainerLocation.from_url(f"http://127.0.0.1:10000/devstoreaccount1/vhds?{SAS}")
    assert (loc.account_url, loc.container, loc.sas_token) == (
        "http://127.0.0.1:10000/devstoreaccount1", "vhds", SAS)
    blob = loc.blob("x/y.vhd")
    assert blob.container_location is loc
    assert blob.url == "http://127.0.0.1:10000/devstoreaccount1/vhds/x/y.vhd"


@pytest.mark.parametrize(
    "url, words",
    [
        ("not a url", "not a blob URL"),
        ("vhds/disk.vhd", "not a blob URL"),
        ("ftp://acct.blob.core.windows.net/vhds/a.vhd", "not a blob URL"),
        ("https:///vhds/a.vhd", "not a blob URL"),
        ("http://[::1/devstoreaccount1/vhds/a.vhd", "cannot be parsed"),
        ("https://acct.blob.core.windows.net/", "expected /<container>/<blob>"),
        ("https://acct.blob.core.windows.net/vhds", "expected /<container>/<blob>"),
        ("https://acct.blob.core.windows.net/vhds/", "no blob name"),
        ("https://acct.blob.core.windows.net/Vhds/a.vhd", "invalid container name 'Vhds'"),
        ("https://acct.blob.core.windows.net/ab/a.vhd", "invalid container name 'ab'"),
        ("https://acct.blob.core.windows.net/a--b/a.vhd", "invalid container name 'a--b'"),
        ("https://acct.blob.core.windows.net/vhds/a#1.vhd", "fragment"),
        ("https://acct.blob.core.windows.net/vhds/a.vhd?snapshot=2024", "not a SAS token"),
        ("http://127.0.0.1:10000/", "no account name"),
        ("http://127.0.0.1:10000/devstoreaccount1/vhds", "expected /<container>/<blob>"),
        ("https://acct.blob.core.windows.net/vhds/" + "n" * 1025, "longer than 1024"),
    ],
)
def test_bad_blob_urls(url: str, words: str) -> None:
    with pytest.raises(VhdError) as err:
        BlobLocation.from_url(url)
    assert words in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_bad_container_url() -> None:
    with pytest.raises(VhdError, match="expected exactly a container"):
        ContainerLocation.from_url("https://acct.blob.core.windows.net/vhds/a.vhd")


def test_bad_url_errors_hide_secrets() -> None:
    for url in (
        f"https://acct.blob.core.windows.net/vhds?{SAS}",  # no blob
        f"https://acct.blob.core.windows.net/BAD/a.vhd?{SAS}",
        f"https://acct.blob.core.windows.net/vhds/a#x?{SAS}",
        f"https://user:{KEY}@acct.blob.core.windows.net/vhds/a.vhd",
        f"ftp://user:{KEY}@acct.blob.core.windows.net/vhds/a.vhd",
        AZURE_CONN,  # a connection string pasted where a URL belongs
        f"BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature={SAS}",
    ):
        with pytest.raises(VhdError) as err:
            BlobLocation.from_url(url)
        assert_hidden(KEY, str(err.value), repr(err.value))
        assert_hidden(SIG, str(err.value), repr(err.value))


# --- connection strings -----------------------------------------------------------------------


def test_azure_connection_string() -> None:
    loc = BlobLocation.from_connection_string(AZURE_CONN, "vhds", "os.vhd")
    assert loc.account_url == "https://mystorageacct.blob.core.windows.net"
    assert loc.account_name == "mystorageacct"
    assert loc.account_key == KEY
    assert loc.sas_token is None
    assert (loc.container, loc.name, loc.credential_kind) == ("vhds", "os.vhd", "account key")


def test_connection_string_protocol_suffix_and_case() -> None:
    conn = f"accountname=acct;ACCOUNTKEY={KEY};DefaultEndpointsProtocol=HTTP;EndpointSuffix=core.chinacloudapi.cn;"
    loc = ContainerLocation.from_connection_string(conn, "vhds", Access(allow_http=True))  # http: see test_aad
    assert loc.account_url == "http://acct.blob.core.chinacloudapi.cn"
    assert loc.account_key == KEY


def test_azurite_connection_string() -> None:
    loc = BlobLocation.from_connection_string(AZURITE_CONN, "vhds", "a.vhd")
    assert loc.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert (loc.account_name, loc.account_key) == ("devstoreaccount1", DEV_ACCOUNT_KEY)
    assert loc.url == "http://127.0.0.1:10000/devstoreaccount1/vhds/a.vhd"


def test_use_development_storage() -> None:
    loc = ContainerLocation.from_connection_string("UseDevelopmentStorage=true", "vhds")
    assert loc == ContainerLocation(
        "http://127.0.0.1:10000/devstoreaccount1", "vhds", "devstoreaccount1", None, DEV_ACCOUNT_KEY
    )
    moved = ContainerLocation.from_connection_string(
        "UseDevelopmentStorage=true;BlobEndpoint=http://127.0.0.1:20000/devstoreaccount1", "vhds")
    assert moved.account_url == "http://127.0.0.1:20000/devstoreaccount1"


def test_sas_connection_string() -> None:
    conn = f"BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?{SAS}"
    loc = BlobLocation.from_connection_string(conn, "vhds", "a.vhd")
    assert loc.account_url == "https://acct.blob.core.windows.net"
    assert loc.account_name == "acct"
    assert loc.sas_token == SAS and loc.account_key is None


def test_key_wins_over_sas_like_the_sdk() -> None:
    loc = ContainerLocation.from_connection_string(f"{AZURE_CONN};SharedAccessSignature={SAS}", "vhds")
    assert (loc.account_key, loc.sas_token) == (KEY, None)


@pytest.mark.parametrize(
    "conn, words",
    [
        ("", "empty"),
        (";;", "empty"),
        ("garbage", "part 1 is not Key=Value"),
        (f"AccountName=acct;{KEY}", "part 2 has an unknown key"),  # a bare key (ends in '=')
        (f"AccountName=acct;{KEY[:-2]}", "part 2 is not Key=Value"),
        (f"AccountName=acct;AccountKey={KEY};Sig={SIG}", "part 3 has an unknown key"),
        (f"AccountName=a;accountname=b;AccountKey={KEY}", "'accountname' given twice"),
        (f"AccountKey={KEY};EndpointSuffix=core.windows.net", "AccountKey needs AccountName"),
        ("EndpointSuffix=core.windows.net", "needs AccountName or BlobEndpoint"),
        (f"DefaultEndpointsProtocol=ftp;AccountName=acct;AccountKey={KEY}", "DefaultEndpointsProtocol"),
        (f"AccountName=acct;AccountKey={KEY[:-3]}!!", "AccountKey is not base64"),
        (f"AccountName=acct;AccountKey={KEY};BlobEndpoint=acct.blob.core.windows.net", "BlobEndpoint"),
        (f"BlobEndpoint=https://acct.blob.core.windows.net?{SAS}", "BlobEndpoint must not have"),
        ("BlobEndpoint=http://[::1:10000/devstoreaccount1", "BlobEndpoint is not an http(s) URL"),
        ("BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=2022&sp=r",
         "SharedAccessSignature has no sig="),
    ],
)
def test_bad_connection_strings(conn: str, words: str) -> None:
    with pytest.raises(VhdError) as err:
        ContainerLocation.from_connection_string(conn, "vhds")
    message = str(err.value)
    assert words in message
    assert "\n" not in message
    assert_hidden(KEY, message, repr(err.value))
    assert_hidden(KEY[:-3], message)
    assert_hidden(SIG, message)


def test_bad_container_name_with_connection_string() -> None:
    with pytest.raises(VhdError, match="invalid container name 'My_Disks'") as err:
        BlobLocation.from_connection_string(AZURE_CONN, "My_Disks", "a.vhd")
    assert_hidden(KEY, str(err.value))
    with pytest.raises(VhdError, match="no blob name"):
        BlobLocation.from_connection_string(AZURE_CONN, "vhds", "")


def test_both_credentials_rejected() -> None:
    with pytest.raises(VhdError, match="not both"):
        ContainerLocation("https://a.blob.core.windows.net", "vhds", "a", SAS, KEY)


# --- environment fallback ---------------------------------------------------------------------


def test_explicit_connection_string_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, AZURITE_CONN)
    assert resolve_connection_string(AZURE_CONN) == AZURE_CONN


def test_connection_string_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECTION_STRING_ENV, AZURE_CONN)
    assert CONNECTION_STRING_ENV == "AZURE_STORAGE_CONNECTION_STRING"
    assert resolve_connection_string() == AZURE_CONN
    assert resolve_connection_string(None) == AZURE_CONN


@pytest.mark.parametrize("env", [None, ""])
def test_no_connection_string(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv(CONNECTION_STRING_ENV, raising=False)
    else:
        monkeypatch.setenv(CONNECTION_STRING_ENV, env)
    with pytest.raises(VhdError, match="AZURE_STORAGE_CONNECTION_STRING") as err:
        resolve_connection_string()
    assert err.value.exit_code == 2


# --- redaction --------------------------------------------------------------------------------


def test_sas_location_renderings_hide_signature() -> None:
    loc = BlobLocation.from_url(f"https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}")
    shown = SAS.replace(SIG, "REDACTED")
    assert loc.redacted() == f"https://acct.blob.core.windows.net/vhds/a.vhd?{shown}"
    assert str(loc) == loc.redacted()
    assert repr(loc) == f"BlobLocation('https://acct.blob.core.windows.net/vhds/a.vhd?{shown}', credential='sas')"
    assert repr(loc.container_location) == (
        f"ContainerLocation('https://acct.blob.core.windows.net/vhds?{shown}', credential='sas')")
    assert_hidden(SIG, str(loc), repr(loc), loc.redacted(), f"{loc}", f"{loc!r}",
                  str(loc.container_location), repr(loc.container_location), repr([loc]))


def test_key_location_renderings_hide_key() -> None:
    loc = BlobLocation.from_connection_string(AZURE_CONN, "vhds", "a.vhd")
    assert loc.redacted() == "https://mystorageacct.blob.core.windows.net/vhds/a.vhd"
    assert repr(loc) == (
        "BlobLocation('https://mystorageacct.blob.core.windows.net/vhds/a.vhd', credential='account key')")
    assert_hidden(KEY, str(loc), repr(loc), loc.redacted(), repr(loc.container_location),
                  str(loc.container_location), repr({"dest": loc}))


def test_redact_text() -> None:
    sdk_error = (
        f"Server failed to authenticate the request.\nURL: https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}\n"
        f"x-ms-copy-source: https%3A%2F%2Fsrc.blob.core.windows.net%2Fv%2Fb%3Fsv%3D2022%26sig%3D{SIG}\n"
        f"conn: {AZURE_CONN}\n"
        "Authorization: SharedKey mystorageacct:Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==\n"
        f"credential={{'account_name': 'mystorageacct', 'account_key': '{KEY}'}}"
    )
    out = redact(sdk_error)
    assert_hidden(SIG, out)
    assert_hidden(KEY, out)
    assert_hidden("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==", out)
    assert "se=2030-01-01T00:00:00Z&st=2024-01-01T00:00:00Z&spr=https&sig=REDACTED\n" in out
    assert "AccountKey=REDACTED;EndpointSuffix=core.windows.net" in out
    assert "sig%3DREDACTED" in out
    assert "SharedKey mystorageacct:REDACTED" in out
    assert "'account_key': 'REDACTED'" in out
    assert redact("no secrets: signature=ok, sigma=1") == "no secrets: signature=ok, sigma=1"


# --- SDK boundary -----------------------------------------------------------------------------


def test_import_does_not_load_sdk() -> None:
    code = (
        "import sys, vhdtool.azure, vhdtool.azure.location\n"
        "loaded = sorted(m for m in sys.modules if m == 'azure' or m.startswith('azure.'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_clients_without_network() -> None:
    keyed = blob_client(BlobLocation.from_connection_string(AZURE_CONN, "vhds", "os/a b.vhd"))
    assert keyed.url == "https://mystorageacct.blob.core.windows.net/vhds/os/a%20b.vhd"
    assert (keyed.account_name, keyed.container_name, keyed.blob_name) == ("mystorageacct", "vhds", "os/a b.vhd")
    assert keyed.credential.account_name == "mystorageacct"
    assert keyed.credential.account_key == KEY
    sas = blob_client(BlobLocation.from_url(f"https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}"))
    assert sas.url == f"https://acct.blob.core.windows.net/vhds/a.vhd?{SAS}"
    cont = container_client(ContainerLocation.from_url("http://127.0.0.1:9/devstoreaccount1/vhds"))
    assert cont.url == "http://127.0.0.1:9/devstoreaccount1/vhds"
    assert cont.credential is None


# --- Azurite integration (real HTTP on loopback) ----------------------------------------------


@pytest.mark.filterwarnings("ignore:get_page_ranges is deprecated:DeprecationWarning")
def test_page_blob_roundtrip_on_azurite(azurite) -> None:
    loc = BlobLocation.from_connection_string(azurite.connection_string, "vhds", "disk.vhd")
    assert loc.account_url == azurite.blob_endpoint
    container_client(loc).create_container()
    blob = blob_client(loc)
    blob.create_page_blob(size=1024 * 1024)
    blob.upload_page(b"\xab" * 512, offset=0, length=512)

    assert blob.get_page_ranges() == ([{"start": 0, "end": 511}], [])
    ranges = [(r.start, r.end, r.cleared) for r in blob.list_page_ranges()]
    assert ranges == [(0, 511, False)]
    props = blob.get_blob_properties()
    assert (props.blob_type, props.size) == ("PageBlob", 1024 * 1024)
    assert blob.download_blob(offset=0, length=1024).readall() == b"\xab" * 512 + b"\0" * 512


@pytest.mark.filterwarnings("ignore:get_page_ranges is deprecated:DeprecationWarning")
def test_sas_url_works_on_azurite(azurite) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    keyed = BlobLocation.from_connection_string(azurite.connection_string, "sascont", "s.vhd")
    container_client(keyed).create_container()
    token = generate_blob_sas(
        azurite.account_name, "sascont", "s.vhd", account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True, write=True, create=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    loc = BlobLocation.from_url(f"{azurite.blob_endpoint}/sascont/s.vhd?{token}")
    assert (loc.credential_kind, loc.account_name) == ("sas", "devstoreaccount1")
    blob = blob_client(loc)
    blob.create_page_blob(size=4096)
    blob.upload_page(b"\x01" * 1024, offset=2048, length=1024)
    assert blob.get_page_ranges() == ([{"start": 2048, "end": 3071}], [])
    names = [b.name for b in container_client(keyed).list_blobs()]
    assert names == ["s.vhd"]


@pytest.mark.parametrize("args", [["check"], ["check", "--json"], ["map"], ["snapshot"], ["convert", "--to", "fixed"]])
def test_blob_url_given_as_a_file_keeps_its_signature_out(tmp_path, args):
    """Local-file commands name what they could not open; a SAS signature in it is redacted."""
    from oracles import vhdtool

    url = "https://acct.blob.core.windows.net/vhds/a.vhd?sv=2024-01-01&sig=TOPSECRETSIG"
    extra = [str(tmp_path / "out.vhd")] if args[0] == "convert" else []
    proc = vhdtool(args[0], url, *extra, *args[1:])
    assert proc.returncode == 2
    assert "TOPSECRETSIG" not in proc.stdout + proc.stderr
    assert "sig=REDACTED" in proc.stdout + proc.stderr
