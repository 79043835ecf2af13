"""tools/gpu_check.sh's verdicts (tools/gpu_rows.py): a required row that is skipped
fails, a row whose software the machine lacks is "not provable here" and never a pass,
and the dry run prints its plan on a machine without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import gpu_rows  # noqa: E402

LENT = gpu_rows.LENT_MACHINE


def junit(tmp_path: Path, cases: list[tuple[str, str, str]]) -> Path:
    body = []
    for file, outcome, message in cases:
        inner = {"passed": "", "skipped": f'<skipped message="{message}"/>', "failed": f'<failure message="{message}"/>'}[outcome]
        body.append(f'<testcase classname="tests.runtime.{file[:-3]}" name="t" file="tests/runtime/{file}">{inner}</testcase>')
    path = tmp_path / "pytest.xml"
    path.write_text(f'<testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>')
    return path


def verdicts(path: Path, caps: dict, require: set[str]) -> dict[str, str]:
    return {row: status for row, status, _ in gpu_rows.pytest_verdicts(path, caps, require)}


def test_on_the_lent_machine_tensorrt_and_ort_cuda_are_not_provable_and_not_passes(tmp_path):
    path = junit(tmp_path, [
        ("test_peaks.py", "passed", ""), ("test_torch_backend.py", "passed", ""),
        ("test_tensorrt_backend.py", "skipped", "TensorRT not installed (pip install 'micronet-sdk[gpu]')"),
        ("test_backends.py", "skipped", "this ONNX Runtime has no CUDA provider (pip install 'micronet-sdk[gpu]')"),
    ])
    got = verdicts(path, LENT, {"cupy", "torch"})
    assert got == {"cupy-peaks": "proved", "torch-cuda": "proved", "tensorrt": "not provable here", "ort-cuda": "not provable here"}


def test_a_required_row_that_skips_fails(tmp_path):
    path = junit(tmp_path, [("test_peaks.py", "passed", ""), ("test_torch_backend.py", "skipped", "torch sees no CUDA GPU")])
    assert verdicts(path, LENT, {"cupy", "torch"})["torch-cuda"] == "FAILED"
    # TensorRT installed but its tests skipped: required by what the machine has.
    path = junit(tmp_path, [("test_tensorrt_backend.py", "skipped", "no CUDA device")])
    assert verdicts(path, {**LENT, "tensorrt": "TensorRT 10.3"}, set())["tensorrt"] == "FAILED"
    assert verdicts(path, LENT, {"tensorrt"})["tensorrt"] == "FAILED"  # --require=tensorrt
    path = junit(tmp_path, [("test_peaks.py", "failed", "peaks differ")])
    assert verdicts(path, LENT, set())["cupy-peaks"] == "FAILED"


def test_micronet_check_rows(tmp_path):
    results = [
        {"model": "default", "backend": "onnxruntime-cpu", "status": "agrees"},
        {"model": "default", "backend": "cuda (onnxruntime)", "status": "skipped", "problems": ["no CUDA provider"]},
        {"model": "default", "backend": "cuda (tensorrt)", "status": "skipped", "problems": ["TensorRT not installed"]},
    ]
    path = tmp_path / "check.json"
    path.write_text(json.dumps({"results": results}))
    got = {row: status for row, status, _ in gpu_rows.check_verdicts(path, LENT, set())}
    assert got == {"check ort-cpu": "proved", "check ort-cuda": "not provable here", "check tensorrt": "not provable here"}
    got = {row: status for row, status, _ in gpu_rows.check_verdicts(path, {**LENT, "ort-cuda": "yes"}, set())}
    assert got["check ort-cuda"] == "FAILED"


def test_the_dry_run_prints_the_plan_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--dry-run", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "would run: pytest" in out and "would run: bench" in out and "bench_gpu --dry-run: the plan" in out
    assert "check tensorrt     not provable here" in out and "torch-cuda         required" in out
