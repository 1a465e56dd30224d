"""Where a blob lives and how to authenticate to it, parsed without touching the network.

Kept free of the Azure SDK at import time so the CLI starts fast and local-only commands never
pay for it. Every user-visible rendering goes through redaction: account keys and SAS
signatures must never reach logs, error messages or reprs.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, quote, unquote, urlsplit

from vhdtool.errors import VhdError
from vhdtool.redaction import redact

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from azure.storage.blob import BlobClient, ContainerClient

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

# Azurite's documented well-known development account (public by design).
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEV_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{DEV_ACCOUNT_NAME}"

_CONTAINER_RE = re.compile(r"^(?:\$root|\$logs|\$web|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_MAX_BLOB_NAME = 1024
# Keys Azure tools write into storage connection strings (compared lower-case).
_CONNECTION_KEYS = frozenset(
    k.lower()
    for k in (
        "DefaultEndpointsProtocol AccountName AccountKey EndpointSuffix SharedAccessSignature"
        " UseDevelopmentStorage DevelopmentStorageProxyUri BlobEndpoint BlobSecondaryEndpoint"
        " QueueEndpoint QueueSecondaryEndpoint TableEndpoint TableSecondaryEndpoint FileEndpoint"
        " FileSecondaryEndpoint DfsEndpoint DfsSecondaryEndpoint"
    ).split()
)

AUTH_MODES = ("auto", "login", "anonymous")


@dataclass(frozen=True)
class Access:
    """How to reach Azure beyond what a URL or connection string carries (--auth, --allow-http).

    ``auth``: "auto" uses the SAS or key given, else signs in with Azure AD over https (as
    AzCopy does for a URL without a SAS); "login" always signs in; "anonymous" never does
    (public containers). ``credential``: any azure-core ``TokenCredential`` (library callers,
    tests); it implies "login". Default sign-in is azure-identity's DefaultAzureCredential.
    """

    auth: str = "auto"
    allow_http: bool = False
    credential: TokenCredential | None = None

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise VhdError(f"--auth: '{self.auth}' is not one of {', '.join(AUTH_MODES)}")

    @property
    def login(self) -> bool:
        return self.auth == "login" or self.credential is not None


class DefaultLogin:
    """azure-identity's DefaultAzureCredential (environment service principal, workload or
    managed identity, Azure CLI login...), imported and built on first use: importing
    azure.identity costs start-up time that local commands must not pay.

    One instance per process (``default_login``), so its token cache serves every client.
    A failed sign-in becomes a one-line VhdError (the SDK's message lists every credential
    it tried, over several lines).
    """

    def __init__(self) -> None:
        self._credential: TokenCredential | None = None
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.exceptions import ClientAuthenticationError

        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                # Its failure is also logged as a multi-line WARNING, which Python's last-resort
                # handler would print to stderr beside our one-line error.
                logging.getLogger("azure.identity").addHandler(logging.NullHandler())
                self._credential = DefaultAzureCredential()
        try:
            return self._credential.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as exc:
            first = (str(exc.message or exc).strip().splitlines() or ["no detail"])[0]
            raise VhdError(
                f"Azure AD sign-in failed ({redact(first)}): sign in with `az login`, set"
                " AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or run with a managed"
                " identity; for a public container use --auth anonymous"
            ) from None

    def __repr__(self) -> str:
        return "DefaultLogin()"


_DEFAULT_LOGIN = DefaultLogin()


def default_login() -> DefaultLogin:
    """The process's one DefaultAzureCredential, built when a token is first asked for."""
    return _DEFAULT_LOGIN


def is_loopback(host: str) -> bool:
    """localhost, *.localhost (Azurite's product-style URLs) or a loopback IP literal."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure(
    account_url: str, sas: str | None, key: str | None, access: Access, shown: str
) -> tuple[TokenCredential | None, bool]:
    """Check `access` against what the URL or connection string carries: (token credential, anonymous).

    Refuses to send a SAS or key over plain http to another machine unless allowed (issue
    #13): only loopback (Azurite) is exempt. A token never goes over http.
    """
    parts = urlsplit(account_url)
    secret = "a SAS token" if sas else "an account key" if key else None  # a token: https only, below
    if access.login:
        if sas or key:
            raise VhdError(f"--auth login signs in with Azure AD: drop the SAS token or account key: {shown}")
        if parts.scheme != "https":  # the storage SDK and azure-core refuse bearer tokens over http
            raise VhdError(f"Azure AD sign-in needs https: {shown}")
    if access.auth == "anonymous" and (sas or key):
        raise VhdError(f"--auth anonymous, but a SAS token or account key was given: {shown}")
    if parts.scheme == "http" and secret and not access.allow_http and not is_loopback(parts.hostname or ""):
        raise VhdError(
            f"plain http would send {secret} in clear to {parts.hostname}: use https"
            f" (or --allow-http if the network is trusted): {shown}"
        )
    token = access.credential or (default_login() if access.login else None)
    return token, access.auth == "anonymous"


def resolve_connection_string(explicit: str | None = None) -> str:
    """The explicit connection string, else ``$AZURE_STORAGE_CONNECTION_STRING`` (Azure's convention)."""
    if explicit:
        return explicit
    from_env = os.environ.get(CONNECTION_STRING_ENV)
    if from_env:
        return from_env
    raise VhdError(
        f"no Azure credentials: pass a connection string or set {CONNECTION_STRING_ENV}"
    )


def _is_path_style_host(host: str) -> bool:
    """Emulator-style hosts (IP literal or bare localhost) carry the account in the URL path."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _account_from_host(host: str) -> str | None:
    """``acct`` from ``acct.blob.core.windows.net`` (or Azurite's ``acct.blob.localhost``)."""
    label, dot, rest = host.partition(".")
    return label if dot and ".blob." in f".{rest}" else None


def _urlsplit(url: str, problem: str) -> SplitResult:
    try:
        return urlsplit(url.strip())
    except ValueError:  # e.g. an unbalanced '[' in an IPv6 host
        raise VhdError(problem) from None


def _split_url(url: str) -> tuple[str, str | None, list[str], str | None]:
    """Split a storage URL into (account URL, account name, remaining path segments, SAS)."""
    if not isinstance(url, str):
        raise VhdError("not a blob URL: expected https://<account>.blob.core.windows.net/...")
    parts = _urlsplit(url, "not a blob URL: the host part cannot be parsed")
    if "@" in parts.netloc:  # checked first: the userinfo may hold a password we must not echo
        raise VhdError("blob URL must not carry user:password@ credentials")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise VhdError("not a blob URL: expected https://<account>.blob.core.windows.net/...")
    shown = redact(url.strip())
    if parts.fragment:
        raise VhdError(f"blob URL has a '#' fragment (write '#' in names as %23): {shown}")
    sas = parts.query or None
    if sas is not None and "sig" not in parse_qs(sas):
        raise VhdError(f"blob URL query is not a SAS token (it has no sig= parameter): {shown}")
    segments = parts.path.split("/")[1:] if parts.path else []
    base = f"{parts.scheme.lower()}://{parts.netloc}"
    if _is_path_style_host(parts.hostname):
        if not segments or not segments[0]:
            raise VhdError(f"emulator URL has no account name in its path: {shown}")
        return f"{base}/{segments[0]}", unquote(segments[0]), segments[1:], sas
    return base, _account_from_host(parts.hostname), segments, sas


def _parse_endpoint(endpoint: str) -> tuple[str, str | None]:
    """A connection string's BlobEndpoint: (account URL, account name if the URL shows it)."""
    parts = _urlsplit(endpoint, "malformed connection string: BlobEndpoint is not an http(s) URL")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise VhdError("malformed connection string: BlobEndpoint is not an http(s) URL")
    if parts.query or parts.fragment:
        raise VhdError("malformed connection string: BlobEndpoint must not have ?query or #fragment")
    account_url = f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"
    if _is_path_style_host(parts.hostname):
        first = parts.path.strip("/").split("/", 1)[0]
        if not first:
            raise VhdError("malformed connection string: emulator BlobEndpoint lacks the account path")
        return account_url, unquote(first)
    return account_url, _account_from_host(parts.hostname)


def _check_container(container: str, shown: str) -> str:
    if not _CONTAINER_RE.match(container):
        raise VhdError(
            f"invalid container name {container!r} (3-63 lowercase letters, digits, single"
            f" hyphens): {shown}"
        )
    return container


def _check_blob_name(name: str, shown: str) -> str:
    if not name:
        raise VhdError(f"no blob name: {shown}")
    if len(name) > _MAX_BLOB_NAME:
        raise VhdError(f"blob name longer than {_MAX_BLOB_NAME} characters: {shown}")
    return name


def _parse_connection_string(conn_str: str) -> tuple[str, str | None, str | None, str | None]:
    """Parse ``Key=Value;...`` into (account URL, account name, account key, SAS).

    Errors name the offending key, never a value: any value may be a secret.
    """
    settings: dict[str, str] = {}
    for index, segment in enumerate(conn_str.strip().split(";"), start=1):
        if not segment.strip():
            continue
        key, sep, value = segment.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise VhdError(f"malformed connection string: part {index} is not Key=Value")
        if key not in _CONNECTION_KEYS:  # not echoed: a stray pasted key would be the secret
            raise VhdError(f"malformed connection string: part {index} has an unknown key")
        if key in settings:
            raise VhdError(f"malformed connection string: {key!r} given twice")
        settings[key] = value.strip()
    if not settings:
        raise VhdError("malformed connection string: it is empty")

    if settings.get("usedevelopmentstorage", "").lower() == "true":
        settings.setdefault("accountname", DEV_ACCOUNT_NAME)
        settings.setdefault("accountkey", DEV_ACCOUNT_KEY)
        settings.setdefault("blobendpoint", DEV_BLOB_ENDPOINT)

    name = settings.get("accountname") or None
    key = settings.get("accountkey") or None
    sas = (settings.get("sharedaccesssignature") or "").lstrip("?") or None
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise VhdError("malformed connection string: AccountKey is not base64") from None
        if name is None:
            raise VhdError("malformed connection string: AccountKey needs AccountName")
        sas = None  # the SDK prefers the key too
    if sas is not None and "sig" not in parse_qs(sas):
        raise VhdError("malformed connection string: SharedAccessSignature has no sig=")

    endpoint = settings.get("blobendpoint")
    if endpoint:
        account_url, url_account = _parse_endpoint(endpoint)
        return account_url, name or url_account, key, sas
    if name is None:
        raise VhdError("malformed connection string: needs AccountName or BlobEndpoint")
    protocol = settings.get("defaultendpointsprotocol", "https").lower()
    if protocol not in ("http", "https"):
        raise VhdError("malformed connection string: DefaultEndpointsProtocol must be https or http")
    suffix = settings.get("endpointsuffix") or "core.windows.net"
    return f"{protocol}://{name}.blob.{suffix}", name, key, sas


def _redact_url(url: str, sas: str | None) -> str:
    return f"{url}?{redact(sas)}" if sas else url


@dataclass(frozen=True, repr=False)
class ContainerLocation:
    """A container plus the credential to reach it; the unit a container-level store works on.

    At most one of ``sas_token`` / ``account_key`` / ``token_credential`` is set. With none,
    an https location signs in with Azure AD (DefaultAzureCredential) when a client is built,
    unless ``anonymous`` (public access); a plain-http one (Azurite) goes anonymous.
    """

    account_url: str  # no trailing slash, no query; includes the account path on emulators
    container: str
    account_name: str | None = None
    sas_token: str | None = None  # without leading '?'
    account_key: str | None = None
    token_credential: TokenCredential | None = field(default=None, compare=False)
    anonymous: bool = False

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.sas_token or None, self.account_key, self.token_credential)) > 1:
            raise VhdError("give either a SAS token or an account key (or a token credential), not both")
        if self.account_key and not self.account_name:
            raise VhdError("an account key needs the account name")

    @classmethod
    def from_url(cls, url: str, access: Access = Access()) -> ContainerLocation:
        """Parse ``https://acct.blob.core.windows.net/container[?SAS]`` (or the emulator form)."""
        account_url, account, rest, sas = _split_url(url)
        shown = redact(url)
        if rest and rest[-1] == "":
            rest = rest[:-1]
        if len(rest) != 1:
            raise VhdError(f"expected exactly a container in the URL path: {shown}")
        container = _check_container(unquote(rest[0]), shown)
        return cls(account_url, container, account, sas, None, *_secure(account_url, sas, None, access, shown))

    @classmethod
    def from_connection_string(cls, conn_str: str, container: str, access: Access = Access()) -> ContainerLocation:
        """Parse a ``Key=Value;...`` Azure connection string and attach a container name."""
        account_url, account, key, sas = _parse_connection_string(conn_str)
        secured = _secure(account_url, sas, key, access, account_url)
        return cls(account_url, _check_container(container, account_url), account, sas, key, *secured)

    @property
    def url(self) -> str:
        """Container URL without any credential."""
        return f"{self.account_url}/{quote(self.container)}"

    @property
    def credential_kind(self) -> str | None:
        """``"sas"``, ``"account key"``, ``"token"`` or None (none given): safe to show."""
        if self.sas_token:
            return "sas"
        return "account key" if self.account_key else "token" if self.token_credential is not None else None

    def blob(self, name: str) -> BlobLocation:
        """A blob in this container, sharing its credential."""
        return BlobLocation(self, _check_blob_name(name, self.redacted()))

    def redacted(self) -> str:
        """The URL with any SAS signature replaced by REDACTED; never the account key."""
        return _redact_url(self.url, self.sas_token)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"ContainerLocation({self.redacted()!r}, credential={self.credential_kind!r})"


@dataclass(frozen=True, repr=False)
class BlobLocation:
    """One blob: its container location (account URL, container, credential) plus its name."""

    container_location: ContainerLocation
    name: str

    @classmethod
    def from_url(cls, url: str, access: Access = Access()) -> BlobLocation:
        """Parse ``https://acct.blob.core.windows.net/container/blob[?SAS]`` or
        ``http://127.0.0.1:PORT/devstoreaccount1/container/blob`` (Azurite)."""
        account_url, account, rest, sas = _split_url(url)
        shown = redact(url)
        if len(rest) < 2:
            raise VhdError(f"expected /<container>/<blob> in the URL path: {shown}")
        container = _check_container(unquote(rest[0]), shown)
        name = _check_blob_name(unquote("/".join(rest[1:])), shown)
        secured = _secure(account_url, sas, None, access, shown)
        return cls(ContainerLocation(account_url, container, account, sas, None, *secured), name)

    @classmethod
    def from_connection_string(
        cls, conn_str: str, container: str, name: str, access: Access = Access()
    ) -> BlobLocation:
        """Parse a ``Key=Value;...`` Azure connection string and attach container and blob names."""
        return ContainerLocation.from_connection_string(conn_str, container, access).blob(name)

    @property
    def account_url(self) -> str:
        return self.container_location.account_url

    @property
    def container(self) -> str:
        return self.container_location.container

    @property
    def account_name(self) -> str | None:
        return self.container_location.account_name

    @property
    def sas_token(self) -> str | None:
        return self.container_location.sas_token

    @property
    def account_key(self) -> str | None:
        return self.container_location.account_key

    @property
    def credential_kind(self) -> str | None:
        return self.container_location.credential_kind

    @property
    def url(self) -> str:
        """Blob URL without any credential."""
        return f"{self.container_location.url}/{quote(self.name, safe='/~')}"

    def redacted(self) -> str:
        """The URL with any SAS signature replaced by REDACTED; never the account key."""
        return _redact_url(self.url, self.sas_token)

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"BlobLocation({self.redacted()!r}, credential={self.credential_kind!r})"


def _credential(location: ContainerLocation) -> object | None:
    """What the SDK client authenticates with: key, SAS, token credential, else Azure AD
    sign-in over https (as AzCopy does for a URL without a SAS) or nothing (public, Azurite)."""
    if location.account_key is not None:
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(location.account_name or "", location.account_key)
    if location.sas_token or location.token_credential is not None:
        return location.sas_token or location.token_credential
    if location.anonymous or not location.account_url.startswith("https://"):
        return None
    return default_login()


def container_client(location: ContainerLocation | BlobLocation, **kwargs: object) -> ContainerClient:
    """An SDK ``ContainerClient`` for the location (SDK imported only now); kwargs pass through."""
    from azure.storage.blob import ContainerClient

    where = location.container_location if isinstance(location, BlobLocation) else location
    return ContainerClient(where.account_url, where.container, credential=_credential(where), **kwargs)


def blob_client(location: BlobLocation, **kwargs: object) -> BlobClient:
    """An SDK ``BlobClient`` for the location (SDK imported only now); kwargs pass through."""
    from azure.storage.blob import BlobClient

    where = location.container_location
    return BlobClient(
        where.account_url, where.container, location.name, credential=_credential(where), **kwargs
    )
