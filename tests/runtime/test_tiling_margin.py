"""The receptive radius the tiler relies on (micronet.runtime.tiling.RECEPTIVE_RADIUS),
measured on an exported model by the same script that measured the bundled one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from micronet.runtime.tiling import RECEPTIVE_RADIUS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_measured_receptive_radius_of_a_tiny_micronet_is_the_tilers(tmp_path, make_tiny_model):
    # Another width than the bundled model (micronet_tiny): the radius is the depth's.
    _, onnx_path = make_tiny_model(tmp_path)
    spec = importlib.util.spec_from_file_location("measure_receptive_field", REPO / "tools" / "measure_receptive_field.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "rf.json"
    assert script.main([str(onnx_path), "--size", "256", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["radius"] == RECEPTIVE_RADIUS["micronet"] == max(result["up"], result["left"])
    # No side reaches farther than the bundled model's (a random model may leave a
    # contribution exactly zero at the very edge of its field, never add one beyond it).
    assert max(result["up"], result["left"]) <= 76 and max(result["down"], result["right"]) <= 69


def test_the_published_measurement_matches_the_tiler():
    result = json.loads((REPO / "benchmarks" / "results" / "receptive_field.json").read_text())
    assert result["model"] == "micronet_crchisto.onnx" and result["radius"] == RECEPTIVE_RADIUS["micronet"]


@pytest.mark.parametrize("scale,depth", [(1, 0), (4, 0), (4, 1)])
def test_the_class_logits_read_no_farther_than_the_margin_allows(scale, depth):
    """The structural field of the class logits (autograd, float64, ELU: every weight
    live), over every output position modulo the stride: at full resolution within the
    map's radius; at 1/4 exactly CLASS_QUARTER_RADIUS (+ CLASS_BLOCK_RADIUS per residual
    block of the head), which the tiler then uses."""
    torch = pytest.importorskip("torch")
    from micronet.runtime.tiling import CLASS_BLOCK_RADIUS, CLASS_QUARTER_RADIUS, default_margin, receptive_radius
    from micronet.trainer.models import create_model

    torch.manual_seed(0)
    model = create_model("micronet_tiny", classes=("a", "b"), class_context=2, class_scale=scale, class_depth=depth).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    logits = model.forward_all(x)[1][0].sum(0)  # (H, W)
    reach = 0
    for i in range(8):  # the field's rows depend on the row modulo 8 alone, its columns on the column's
        cy, cx = 112 + i, 115 + i
        (grad,) = torch.autograd.grad(logits[cy, cx], x, retain_graph=True)
        ys, xs = torch.nonzero(grad[0].abs().sum(0), as_tuple=True)
        reach = max(reach, cy - int(ys.min()), int(ys.max()) - cy, cx - int(xs.min()), int(xs.max()) - cx)
    architecture = model.config_dict()
    assert reach <= receptive_radius(architecture)
    if scale == 4:
        assert reach == receptive_radius(architecture) == CLASS_QUARTER_RADIUS + CLASS_BLOCK_RADIUS * depth
        assert default_margin(architecture, 3) == (88 if depth == 0 else 96)
    else:
        assert receptive_radius(architecture) == RECEPTIVE_RADIUS["micronet"]
