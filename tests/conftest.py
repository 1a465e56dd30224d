"""Shared test set-up: fixture locations."""

import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the fixture generator's ground truth (make_fixtures)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def vhdx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every VHDX fixture of make_vhdx_fixtures, made once for the session: name -> path."""
    import make_vhdx_fixtures

    return make_vhdx_fixtures.make_all(tmp_path_factory.mktemp("vhdx"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """One Azurite blob service for the session. Installed if missing; never skipped: a test
    that needs it fails loudly when it cannot run."""
    try:
        from tests.azurite import install_azurite, running_azurite
    except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
        from azurite import install_azurite, running_azurite  # type: ignore[no-redef]

    install_azurite()
    with running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `vhdtool ARGS` in this process through the real entry point (exit codes, one-line
    errors), with `env` set for the run; much faster than a fresh interpreter each time."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Outcome:
        with monkeypatch.context() as m:
            m.setattr(sys, "argv", ["vhdtool", *args])
            for name, value in (env or {}).items():
                m.setenv(name, value)
            from vhdtool.cli import main

            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return invoke


def new_container(azurite, prefix: str):
    """A fresh, empty container in Azurite, named `prefix` and random letters."""
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(azurite.connection_string, f"{prefix}{uuid.uuid4().hex[:20]}")
    client.create_container()
    return client


@pytest.fixture
def container(azurite):
    """A fresh, empty container."""
    return new_container(azurite, "t")


@pytest.fixture
def sources(azurite):
    """A second container holding source disks (a VM's attached VHDs)."""
    return new_container(azurite, "s")


def race(task: Callable[[], object], count: int) -> list[object]:
    """Run `task` on `count` threads at once; their results, or the first exception raised."""
    results: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(task())
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
