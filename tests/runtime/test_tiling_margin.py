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
