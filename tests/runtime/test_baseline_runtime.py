"""The baselines (FCN-8s, U-Net, FCRN-A/B, FRCN) run in the runtime as MicroNet does: an
exported fp32 ONNX of each builds a ``Detector`` with the receptive radius and stride
that tools/measure_receptive_field.py measured (micronet.runtime.tiling), its tiled
detection equals a whole-image pass, and ``micronet evaluate --model x.onnx`` works.

The models are the measuring tool's own: a small width (base 4), seeded random weights,
batch-norm statistics from a calibration pass, then jittered (``export_small``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from micronet.runtime.bundled import bundled_sample  # noqa: E402
from micronet.runtime.detector import Detector  # noqa: E402
from micronet.runtime.evaluation.datasets import load_point_folder  # noqa: E402
from micronet.runtime.evaluation.evaluate import evaluate_model_file  # noqa: E402
from micronet.runtime.images import as_rgb_image  # noqa: E402
from micronet.runtime.tiling import ALIGNMENT, RECEPTIVE_RADIUS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NAMES = ["fcn", "unet", "fcrn_a", "fcrn_b", "frcn"]
# The total stride of each network, counted in trainer/baselines.py (2×2 max pools).
POOLS = {"fcn": 5, "unet": 4, "fcrn_a": 3, "fcrn_b": 2, "frcn": 3}
# Larger than a tile of each (FCN-8s's margin alone is 256 px).
IMAGE_HW = {"fcn": (700, 650)}
DEFAULT_HW = (500, 470)


@pytest.fixture(scope="module")
def tool():
    """tools/measure_receptive_field.py as a module."""
    spec = importlib.util.spec_from_file_location("measure_receptive_field", REPO / "tools" / "measure_receptive_field.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def baseline_onnx(tmp_path_factory, tool):
    """``name → path`` of the tiny export of each baseline, built on first use."""
    folder = tmp_path_factory.mktemp("baselines")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tool.export_small(name, folder)[0]
        return built[name]

    return get


def _image(height: int, width: int) -> np.ndarray:
    """The bundled H&E sample, mirrored out or cropped to ``(height, width, 3)`` uint8."""
    sample = as_rgb_image(bundled_sample())
    pad = ((0, max(0, height - sample.shape[0])), (0, max(0, width - sample.shape[1])), (0, 0))
    return np.ascontiguousarray(np.pad(sample, pad, mode="symmetric")[:height, :width])


def test_the_tilers_radii_and_strides_are_the_published_measurement():
    result = json.loads((REPO / "benchmarks" / "results" / "receptive_field.json").read_text())
    measured = result["architectures"]
    assert set(measured) == set(RECEPTIVE_RADIUS) == set(ALIGNMENT) == {"micronet", *NAMES}
    for name, m in measured.items():
        assert (m["radius"], m["alignment"]) == (RECEPTIVE_RADIUS[name], ALIGNMENT[name]), name
    for name in NAMES:
        assert ALIGNMENT[name] == 2 ** POOLS[name], f"{name}: the alignment is the total stride"


@pytest.mark.slow
def test_measured_receptive_field_of_a_baseline_is_the_tilers(tool, tmp_path):
    # FCRN-B, the cheapest to measure (about 8 s), and the one whose stride is not 8.
    out = tmp_path / "rf.json"
    assert tool.main(["--architecture", "fcrn_b", "--seed", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["radius"], result["alignment"]) == (RECEPTIVE_RADIUS["fcrn_b"], ALIGNMENT["fcrn_b"]) == (22, 4)


@pytest.mark.parametrize("name", NAMES)
def test_tiled_detection_of_a_baseline_equals_whole_image(name, baseline_onnx):
    path = baseline_onnx(name)
    image = _image(*IMAGE_HW.get(name, DEFAULT_HW))
    # A threshold that leaves about a tenth of the map above it: many peaks.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    threshold = max(0.0, float(np.quantile(session.run(None, {"image": image[None]})[0], 0.9)))

    whole = Detector(path, device="cpu", threads=2, threshold=threshold)  # the default tile (1024) holds the image
    align = ALIGNMENT[name]
    margin = -(-(RECEPTIVE_RADIUS[name] + whole.min_distance) // align) * align
    assert whole.tile_margin == margin
    assert len(whole.plan_tiles(*image.shape[:2])) == 1
    core = -(-96 // align) * align
    tiled = Detector(path, device="cpu", threads=2, threshold=threshold, tile_size=2 * margin + core)
    plan = tiled.plan_tiles(*image.shape[:2])
    assert len(plan) >= 4 and all(t.y0 % align == 0 and t.x0 % align == 0 for t in plan)

    want, got = whole.detect(image, mpp=whole.info.mpp), tiled.detect(image, mpp=whole.info.mpp)
    assert len(want) > 20
    # The same peaks in the same order; a score may differ in its last bits, because the
    # CPU provider's convolutions block the work differently at other input sizes.
    np.testing.assert_array_equal(got.xy, want.xy)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)


def test_a_baseline_evaluates_through_its_onnx_export(baseline_onnx, shared_data, tmp_path):
    # Two CRCHistoPhenotypes images in a folder of their own (named so, for its pixel size).
    folder = tmp_path / "crchisto"
    for sub, suffix in (("images", ".png"), ("points", ".csv")):
        (folder / sub).mkdir(parents=True)
        for stem in ("img1", "img2"):
            (folder / sub / f"{stem}{suffix}").symlink_to(shared_data / "crchisto" / sub / f"{stem}{suffix}")
    result = evaluate_model_file(baseline_onnx("unet"), folder, progress=False)
    assert result.report.names == ("img1", "img2")
    assert result.threshold == 0.5 and result.threshold_source == "model"  # the export's own ξ
    # A disk classifier's probabilities: ξ is swept over [0.02, 0.9] of its peak 1.
    assert result.sweep.thresholds[0] == pytest.approx(0.02) and result.sweep.thresholds[-1] == pytest.approx(0.9)
    pooled = result.report.pooled
    assert pooled.tp + pooled.fn == sum(len(p) for p in load_point_folder(folder).points)  # every annotation counted
