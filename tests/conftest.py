"""Shared test set-up: fixture locations."""

import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
sys.path.insert(0, str(FIXTURES))  # the fixture generator's ground truth (make_fixtures)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
