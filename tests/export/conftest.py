"""Fixtures shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random ``micronet_tiny`` checkpoint with non-trivial batch-norm statistics."""
    torch = pytest.importorskip("torch")
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model("micronet_tiny").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    info = ModelInfo(architecture=model.config_dict(), mean=[180.0, 130.0, 170.0], std=[40.0, 45.0, 35.0], mpp=0.55, threshold=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, model, info)
    return path
