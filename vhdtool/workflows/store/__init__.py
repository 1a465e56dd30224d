"""Where VM images live: a local folder (the default) or an Azure container, one interface.

Which store a command uses, first match wins:
1. ``--store URL`` (a container URL, with a SAS token unless public) or ``--container NAME``
   with a connection string (``--connection-string`` or $AZURE_STORAGE_CONNECTION_STRING);
2. ``--store PATH``: a local folder;
3. $VHDTOOL_STORE (a path or a container URL);
4. the per-user data folder: $XDG_DATA_HOME/vhdtool/store, by default
   ~/.local/share/vhdtool/store.
Importing this package is cheap: the back ends (and the Azure SDK) load when a store opens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from vhdtool.errors import VhdError
from vhdtool.workflows.store.base import IMAGE, VM, CopyTrail, DiskEntry, Store, StoredDisk

if TYPE_CHECKING:
    from vhdtool.azure.location import Access

STORE_ENV = "VHDTOOL_STORE"

__all__ = ["IMAGE", "VM", "STORE_ENV", "CopyTrail", "DiskEntry", "Store", "StoredDisk", "default_store",
           "open_store"]


def default_store() -> Path:
    """The per-user data folder (XDG base directory convention)."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "vhdtool" / "store"


def open_store(spec: str | None = None, *, container: str | None = None,
               connection_string: str | None = None, access: Access | None = None) -> Store:
    """The store named by the options and environment (see the module docstring)."""
    from vhdtool.azure import is_blob_url

    if container is not None:
        if spec is not None:
            raise VhdError("give either --store or --container (with a connection string), not both")
        from vhdtool.azure.location import Access, ContainerLocation, resolve_connection_string
        from vhdtool.workflows.store.azure import AzureStore

        return AzureStore(ContainerLocation.from_connection_string(resolve_connection_string(connection_string),
                                                                   container, access or Access()))
    if connection_string is not None:
        raise VhdError("--connection-string needs --container")
    spec = spec or os.environ.get(STORE_ENV) or str(default_store())
    if is_blob_url(spec):
        from vhdtool.azure.location import Access, ContainerLocation
        from vhdtool.workflows.store.azure import AzureStore

        return AzureStore(ContainerLocation.from_url(spec, access or Access()))
    from vhdtool.workflows.store.local import LocalStore

    path = Path(spec).expanduser()
    if path.exists() and not path.is_dir():
        raise VhdError("the store is not a folder", path)
    return LocalStore(path)
