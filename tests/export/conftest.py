"""Fixtures shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, make_tiny_model) -> Path:
    """A random ``micronet_tiny`` checkpoint with randomised batch-norm statistics."""
    return make_tiny_model(tmp_path_factory.mktemp("ckpt"))[0]
