"""Shared test set-up: fixture locations."""

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the fixture generator's ground truth (make_fixtures)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """One Azurite blob service for the session. Installed if missing; never skipped: a test
    that needs it fails loudly when it cannot run."""
    try:
        from tests.azurite import install_azurite, running_azurite
    except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
        from azurite import install_azurite, running_azurite

    install_azurite()
    with running_azurite(tmp_path_factory.mktemp("azurite")) as server:
        yield server
