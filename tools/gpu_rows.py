"""The verdicts of ``tools/gpu_check.sh``: what this machine can prove, and whether each
row proved it, failed, or is not provable here.

A row is *required* when this machine has what it needs (or ``--require`` names it): a
required row that is skipped is a failure, never a pass. A row whose software this
machine lacks (TensorRT, ONNX Runtime's CUDA provider) and that nobody required is *not
provable here*: reported as such, and not counted as a pass.

    python tools/gpu_rows.py probe                        # JSON: what this machine has
    python tools/gpu_rows.py pytest JUNIT.xml CAPS.json   # the GPU tests' verdicts, one line per row
    python tools/gpu_rows.py check CHECK.json CAPS.json   # micronet check's rows
    python tools/gpu_rows.py check-torch OUT.json [N]     # the torch backend against the known answers
    python tools/gpu_rows.py explain CAPS.json|lent       # what each row will be on such a machine

Each verdict line is ``ROW<TAB>STATUS<TAB>DETAIL`` with STATUS one of ``proved``,
``FAILED``, ``not provable here``; ``gpu_check.sh`` collects them into its summary.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PROVED, FAILED, NOT_HERE = "proved", "FAILED", "not provable here"
# Rows of the GPU tests: the test files each one covers, and the capability it needs.
PYTEST_ROWS = {
    "cupy-peaks": (("test_peaks.py", "test_cuda_options.py"), "cupy"),
    "torch-cuda": (("test_torch_backend.py",), "torch"),
    "tensorrt": (("test_tensorrt_backend.py", "test_engine_cache.py"), "tensorrt"),
    "ort-cuda": (("test_backends.py", "test_check.py"), "ort-cuda"),
}
# Skip reasons that mean "this machine lacks that software" (not provable here) — only
# accepted for a capability the probe found missing.
_LACKS = {"tensorrt": ("TensorRT not installed",), "ort-cuda": ("no CUDA provider",)}


def probe() -> dict[str, object]:
    """What this machine has: a CUDA device seen by CuPy, torch with CUDA, TensorRT,
    ONNX Runtime's CUDA provider (each ``False`` or a short description)."""
    caps: dict[str, object] = {"cupy": False, "torch": False, "tensorrt": False, "ort-cuda": False}
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        caps["cupy"] = f"CuPy {cupy.__version__}, {count} CUDA device(s)" if count else False
    except Exception as exc:  # no CuPy, or no driver
        caps["cupy_missing"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        import torch

        caps["torch"] = f"torch {torch.__version__} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else False
    except ImportError:
        pass
    try:
        import tensorrt

        caps["tensorrt"] = f"TensorRT {tensorrt.__version__}"
    except ImportError:
        pass
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            caps["ort-cuda"] = f"onnxruntime {onnxruntime.__version__} with the CUDA provider"
    except ImportError:
        pass
    return caps


def required(caps: dict[str, object], require: set[str], row: str, needs: str) -> bool:
    return bool(caps.get(needs)) or row in require or needs in require


def _cases(junit: Path) -> list[tuple[str, str, str]]:
    """``(file, outcome, message)`` per test case: passed, failed or skipped."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        file = (case.get("file") or case.get("classname", "").replace(".", "/")).split("/")[-1]
        file = file if file.endswith(".py") else file + ".py"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:200]
            elif child.tag == "skipped" and outcome != "failed":
                outcome, message = "skipped", child.get("message") or ""
        out.append((file, outcome, message))
    return out


def pytest_verdicts(junit: Path, caps: dict[str, object], require: set[str]) -> list[tuple[str, str, str]]:
    """One verdict per row of :data:`PYTEST_ROWS` from a JUnit XML report."""
    cases = _cases(junit)
    verdicts = []
    for row, (files, needs) in PYTEST_ROWS.items():
        mine = [c for c in cases if c[0] in files]
        failed = [m for _, o, m in mine if o == "failed"]
        skipped = [m for _, o, m in mine if o == "skipped"]
        passed = sum(o == "passed" for _, o, _ in mine)
        must = required(caps, require, row, needs)
        lacking = [m for m in skipped if any(k in m for k in _LACKS.get(needs, ()))]
        if failed:
            verdicts.append((row, FAILED, f"{len(failed)} failed: {failed[0]}"))
        elif must and (skipped or not passed):
            why = skipped[0] if skipped else "no GPU test ran"
            verdicts.append((row, FAILED, f"required here, but {len(skipped)} skipped ({why}), {passed} passed"))
        elif not must and (skipped or not passed):
            why = lacking[0] if lacking else (skipped[0] if skipped else "no test ran")
            verdicts.append((row, NOT_HERE, f"{why} ({passed} passed, {len(skipped)} skipped)"))
        else:
            verdicts.append((row, PROVED, f"{passed} GPU tests passed"))
    return verdicts


def _check_kind(backend: str) -> str:
    """The row of a ``micronet check`` result: its backend, or for a skipped one the
    device it would have run on (``"cuda (tensorrt)"``)."""
    b = backend.lower()
    if "tensorrt" in b:
        return "tensorrt"
    return "ort-cuda" if "onnxruntime-cuda" in b or ("cuda" in b and "onnxruntime" in b) else "ort-cpu"


def check_verdicts(check_json: Path, caps: dict[str, object], require: set[str]) -> list[tuple[str, str, str]]:
    """One verdict per backend kind of ``micronet check --json``."""
    rows = json.loads(check_json.read_text()).get("results", [])
    verdicts = []
    for kind, needs in (("ort-cpu", None), ("ort-cuda", "ort-cuda"), ("tensorrt", "tensorrt")):
        mine = [r for r in rows if _check_kind(str(r.get("backend", ""))) == kind]
        ran = [r for r in mine if r.get("status") != "skipped"]
        bad = [r for r in ran if r.get("status") != "agrees"]
        must = needs is None or required(caps, require, kind, needs)
        row = f"check {kind}"
        if bad:
            verdicts.append((row, FAILED, "; ".join(f"{r.get('model')}: {r.get('status')} {r.get('problems')}" for r in bad)[:300]))
        elif ran:
            verdicts.append((row, PROVED, f"{len(ran)} model run(s) agree with their known answers"))
        elif must:
            verdicts.append((row, FAILED, f"required here, but skipped: {[r.get('problems') for r in mine][:1]}"))
        else:
            verdicts.append((row, NOT_HERE, f"not on this machine: {[r.get('problems') for r in mine][:1]}"))
    return verdicts


def check_torch(out: Path, device_id: int = 0) -> int:
    """The torch backend on GPU ``device_id`` against the bundled default model's known
    answers (fp16 tolerance); writes the result as JSON; 0 when it agrees."""
    from micronet.runtime.detector import Detector
    from micronet.runtime.diagnostics.check import check_detector, format_check_table

    result = check_detector(Detector("default", backend="torch", device=f"cuda:{device_id}"))
    print(format_check_table([result]))
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.status == "agrees" else 1


# Every row gpu_check.sh reports, and the capability it needs (None: the CPU suffices).
ALL_ROWS = (
    ("check ort-cpu", None), ("check ort-cuda", "ort-cuda"), ("check tensorrt", "tensorrt"), ("check torch-cuda", "torch"),
    ("cupy-peaks", "cupy"), ("torch-cuda", "torch"), ("tensorrt", "tensorrt"), ("ort-cuda", "ort-cuda"), ("bench", "cupy"),
)
LENT_MACHINE = {"cupy": True, "torch": True, "tensorrt": False, "ort-cuda": False}  # H100/H200, torch CUDA 13, CuPy, CPU onnxruntime


def explain(caps: dict[str, object], require: set[str]) -> list[tuple[str, str]]:
    """What each row will be on a machine with ``caps``: required (must prove; a skip
    fails) or not provable here."""
    out = []
    for row, needs in ALL_ROWS:
        if needs is None or required(caps, require, row.split()[-1], needs):
            out.append((row, "required: proved or FAILED (a skip fails)"))
        else:
            out.append((row, f"{NOT_HERE} (no {needs} on this machine; not a pass)"))
    return out


def main(argv: list[str]) -> int:
    require = set(filter(None, ",".join(a.split("=", 1)[1] for a in argv if a.startswith("--require=")).split(",")))
    args = [a for a in argv if not a.startswith("--require=")]
    if args[:1] == ["probe"]:
        print(json.dumps(probe()))
        return 0
    if args[:1] == ["explain"]:
        caps = LENT_MACHINE if args[1:] == ["lent"] else json.loads(Path(args[1]).read_text())
        for row, status in explain(caps, require):
            print(f"  {row:<18} {status}")
        return 0
    if args[:1] == ["check-torch"]:
        return check_torch(Path(args[1]), int(args[2]) if len(args) > 2 else 0)
    if args[:1] in (["pytest"], ["check"]) and len(args) == 3:
        caps = json.loads(Path(args[2]).read_text())
        verdicts = (pytest_verdicts if args[0] == "pytest" else check_verdicts)(Path(args[1]), caps, require)
        for row, status, detail in verdicts:
            print(f"{row}\t{status}\t{detail}")
        return 1 if any(s == FAILED for _, s, _ in verdicts) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
