"""The GPU extras of pyproject.toml: each names one CUDA major for every package that
links CUDA (ONNX Runtime's CUDA build, TensorRT, CuPy, the CUDA bindings) and one
TensorRT major; the review's mixed extra is caught (``tools/cuda_majors.py``, which
``tools/check_gpu_extra.sh`` also runs on what it installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import cuda_majors  # noqa: E402


def test_each_gpu_extra_names_one_cuda_major():
    assert cuda_majors.check_pyproject() == []
    extras = __import__("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(cuda_majors.extra_majors(extras["gpu"]).values()) == {12}
    assert set(cuda_majors.extra_majors(extras["gpu-cu13"]).values()) == {13}


@pytest.mark.parametrize(
    "requirement, major",
    [
        ("onnxruntime-gpu>=1.21,<1.27", 12),
        ("onnxruntime-gpu>=1.27,<2", 13),
        ("onnxruntime-gpu>=1.20", -1),  # resolves to a CUDA 13 build today
        ("tensorrt-cu12>=10.3,<11", 12),
        ("cupy-cuda13x[ctk]>=14,<15", 13),
        ("cuda-python>=12.6,<13", 12),
        ("cuda-python<13", -1),
        ("onnx>=1.16", None),
    ],
)
def test_the_cuda_major_of_a_requirement(requirement, major):
    assert cuda_majors.requirement_major(requirement)[1] == major


def test_the_reviewed_mixed_extra_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[project.optional-dependencies]\n'
        'gpu = ["onnxruntime-gpu>=1.20", "tensorrt-cu12>=10.3", "cupy-cuda12x>=13", "cuda-python>=12.6,<13", "onnx>=1.16"]\n'
        'gpu-cu13 = ["onnxruntime-gpu>=1.27,<2", "tensorrt-cu13>=10.13.2,<11", "cupy-cuda13x[ctk]>=14,<15", "cuda-python>=13,<14"]\n'
    )
    problems = " ".join(cuda_majors.check_pyproject(tmp_path / "pyproject.toml"))
    assert "[gpu] mixes CUDA majors" in problems and "pin one TensorRT major" in problems
