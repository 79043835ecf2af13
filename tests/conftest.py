"""Shared test helpers: where the real data lives, and a tiny random MicroNet."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def build_tiny_model(folder: Path, threshold_image: np.ndarray | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Saves a random ``micronet_tiny`` checkpoint and its fp32 ONNX export in ``folder``;
    returns ``(checkpoint, onnx)``."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from micronet.export.onnx import export_onnx
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.models import create_model

    torch.manual_seed(seed)
    model = create_model("micronet_tiny").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    mean, std = [180.0, 130.0, 170.0], [40.0, 45.0, 35.0]
    threshold = 0.0
    if threshold_image is not None:
        x = (torch.from_numpy(np.array(threshold_image)).float() - torch.tensor(mean)) / torch.tensor(std)
        with torch.no_grad():
            out = model(x.permute(2, 0, 1)[None])[0, 0].numpy()
        threshold = float(np.quantile(out, 0.9))  # a few hundred peaks on a 500² image
    info = ModelInfo(
        architecture=model.config_dict(),
        mean=mean,
        std=std,
        mpp=0.55,  # CRCHistoPhenotypes at 20×
        threshold=threshold,
        min_distance=3,
        provenance={"note": "random weights, for tests"},
    )
    checkpoint = save_checkpoint(folder / "tiny.safetensors", model, info)
    onnx_path = export_onnx(checkpoint, folder / "tiny.onnx")
    return checkpoint, onnx_path


@pytest.fixture(scope="session")
def make_tiny_model():
    """:func:`build_tiny_model`, for test folders that build their own copy."""
    return build_tiny_model


def assert_same_detections(got_xy: np.ndarray, want_xy: np.ndarray, *, radius: float = 1.0, max_unmatched_share: float = 0.002) -> None:
    """Two detection sets agree up to near-ties: matched one-to-one within ``radius``
    pixels, with at most ``max_unmatched_share`` of either set (and at least one point)
    left over. Kernels on other instruction sets (AVX2, AVX-512, VNNI) round differently,
    and a peak on a near-tie of two pixels may then move by a pixel or two; exact
    equality would make the test depend on the CPU."""
    from micronet.runtime.evaluation.matching import match_points

    got_xy, want_xy = np.asarray(got_xy, np.float64).reshape(-1, 2), np.asarray(want_xy, np.float64).reshape(-1, 2)
    pred_idx, _ = match_points(got_xy, want_xy, radius)
    allowed = max(1, int(np.ceil(max_unmatched_share * max(len(got_xy), len(want_xy)))))
    missing, extra = len(want_xy) - len(pred_idx), len(got_xy) - len(pred_idx)
    assert missing <= allowed and extra <= allowed, (
        f"{missing} of {len(want_xy)} expected and {extra} of {len(got_xy)} found detections unmatched within "
        f"{radius} px (allowed {allowed})"
    )


@pytest.fixture(scope="session")
def detections_agree():
    """:func:`assert_same_detections`, for tests in sub-folders."""
    return assert_same_detections
