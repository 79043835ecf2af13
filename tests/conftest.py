"""Shared test helpers: where the real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$MICRONET_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("MICRONET_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "crchisto" / "images").is_dir():
        pytest.skip(f"real data not found at {root} (set MICRONET_DATA to the shared data folder)")
    return root
