"""Known answers: does this machine's backend compute what the model was exported to compute?

Every exported model carries *reference results*: the fp32 model's proximity map and
its detections on fixed images (crops of the bundled H&E sample), computed from the
checkpoint at export time (``micronet export``) and stored in the ONNX model's
``metadata_props`` under :data:`REFERENCE_KEY` (an engine's ``.engine.json`` copies
them). :func:`check_detector` runs a :class:`~micronet.runtime.Detector` on those images
and compares:

- ``max |Δ map|``: the largest difference from the reference map, over a grid of every
  :data:`MAP_STRIDE`-th pixel (the reference stores that grid, not the whole map);
- ``found ≤1px``: the share of reference detections with a detection within 1 pixel;
- ``F1``: detections against the reference detections, matched within
  ``min_distance`` pixels (as the paper's metric, with the reference as the truth);
- ``MP/s``: megapixels per second of :meth:`Detector.detect` on the reference images,
  best of a few runs (small images: a floor, not the tile throughput of ``micronet bench``).

Each artifact precision has its tolerances (:data:`TOLERANCES`): fp32 must agree to
float rounding; fp16 and int8 differ by their quantisation, measured on the bundled
models (see the table's comments). A backend outside them *disagrees*: ``micronet check``
exits non-zero and ``Detector(..., verify=True)`` raises :class:`VerificationError`. This
catches what unit tests on one developer's machine cannot: an int8 kernel that saturates
on the user's CPU, a TensorRT tactic that misbehaves on the user's GPU, a broken
driver, a damaged model file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from ..bundled import bundled_sample
from ..errors import InputError, MicronetError
from ..evaluation.matching import evaluate_points, match_points
from ..images import as_rgb_image
from ..peaks import find_peaks

__all__ = [
    "REFERENCE_KEY",
    "REFERENCE_FORMAT",
    "TOLERANCES",
    "CheckResult",
    "Tolerance",
    "VerificationError",
    "build_reference",
    "check_detector",
    "format_check_table",
    "reference_images",
    "reference_of",
    "verify_detector",
]

log = logging.getLogger(__name__)

REFERENCE_KEY = "micronet.reference"  # ONNX metadata_props key; "reference" in an engine sidecar
REFERENCE_FORMAT = "micronet-reference/1"
MAP_STRIDE = 4  # the reference keeps every 4th row and column of the map
# Fixed crops (y, x, height, width) of the bundled sample (512×512): one whose sides are
# multiples of 8 (the exported models' aligned fast path, every full Detector tile) and
# one odd-sized (the general path with its crops and pads).
REFERENCE_CROPS = ((0, 0, 512, 512), (37, 11, 301, 263))
FOUND_RADIUS = 1.0


@dataclass(frozen=True)
class Tolerance:
    """What a backend running an artifact of one precision must achieve against the
    fp32 reference: ``max |Δ map| <= max_abs_map``, ``found ≤1px >= min_found``,
    ``F1 >= min_f1``."""

    max_abs_map: float
    min_found: float
    min_f1: float


# Per artifact precision. The map of the bundled models spans 0 to about 5.
# - fp32: float rounding between kernels (ORT CPU AVX2/AVX-512, CUDA) is ~1e-5; peaks
#   may move only on exact near-ties.
# - fp16: half-precision weights and activations (TensorRT FP16, ORT CUDA): measured
#   max |Δ| 0.004-0.006 on the bundled default (ORT CPU, fp16 export).
# - int8: 7-bit weights, u8 activations; measured max |Δ| 0.29 (default) and
#   0.35 (fast-cpu), found ≤1px 0.96-0.97, F1 0.98-0.99 against the fp32 references.
#   A saturating kernel (8-bit weights on a CPU without VNNI) loses 3+ F1 points on
#   CRCHisto and moves the map by more than 1.
# TensorRT fp32 engines may use TF32 (TensorRT's default), so they get the fp16 row.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_map=0.01, min_found=0.99, min_f1=0.99),
    "fp16": Tolerance(max_abs_map=0.1, min_found=0.95, min_f1=0.97),
    "int8": Tolerance(max_abs_map=0.8, min_found=0.9, min_f1=0.95),
}


class VerificationError(MicronetError, RuntimeError):
    """A backend disagrees with the model's reference results beyond the tolerance of
    its precision."""


# --- the reference images and results ---------------------------------------------------


def _sample() -> np.ndarray:
    return as_rgb_image(bundled_sample(), "bundled sample")


def reference_images() -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """The reference crops ``((y, x, h, w), (h, w, 3) uint8)`` of the bundled sample."""
    sample = _sample()
    return [((y, x, h, w), np.ascontiguousarray(sample[y : y + h, x : x + w])) for y, x, h, w in REFERENCE_CROPS]


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def build_reference(map_fn: Callable[[np.ndarray], np.ndarray], threshold: float, min_distance: int) -> dict[str, Any]:
    """The reference results of a model, as stored with its exports.

    Args:
        map_fn: ``(1, H, W, 3)`` uint8 → ``(1, 1, H, W)`` float32 proximity map of the
            fp32 model (the exporter passes the checkpoint's torch model).
        threshold, min_distance: the model's ξ and minimum peak distance.

    Returns:
        A JSON-ready dict: per reference crop its box, the SHA-256 of its pixels, the map
        on every :data:`MAP_STRIDE`-th pixel (float32, base64) and the detections.
    """
    images = []
    for box, image in reference_images():
        prob = np.asarray(map_fn(image[None]), dtype=np.float32)[0, 0]  # (H, W)
        xy, scores = find_peaks(prob, threshold, min_distance)
        grid = prob[::MAP_STRIDE, ::MAP_STRIDE]
        images.append(
            {
                "source": "sample.png",
                "box": list(box),
                "pixels_sha256": _sha256(image),
                "map_stride": MAP_STRIDE,
                "map_shape": list(grid.shape),
                "map": _encode(grid),
                "xy": np.round(xy.astype(np.float64), 3).tolist(),
                "scores": np.round(scores.astype(np.float64), 5).tolist(),
            }
        )
    return {"format": REFERENCE_FORMAT, "threshold": float(threshold), "min_distance": int(min_distance), "images": images}


def reference_of(backend: Any) -> dict[str, Any] | None:
    """The reference results a backend's model carries (ONNX ``metadata_props`` or an
    engine's sidecar), or ``None`` when it has none (exported before references)."""
    sidecar = getattr(backend, "sidecar", None)
    if isinstance(sidecar, dict):
        ref = sidecar.get("reference")
    else:
        text = (getattr(backend, "metadata", None) or {}).get(REFERENCE_KEY)
        if text is None:
            return None
        try:
            ref = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"the model's reference results ({REFERENCE_KEY}) are not valid JSON: {exc}") from exc
    if ref is None:
        return None
    if not isinstance(ref, dict) or ref.get("format") != REFERENCE_FORMAT:
        got = ref.get("format") if isinstance(ref, dict) else type(ref).__name__
        raise InputError(f"the model's reference results have format {got!r}, expected {REFERENCE_FORMAT!r}")
    return ref


# --- the check --------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One backend against the reference. Numbers are ``None`` when it did not run.

    Attributes:
        model: the model file (or the backend's description).
        backend: ``"onnxruntime-cpu"``, ``"onnxruntime-cuda"``, ``"tensorrt"``.
        precision: the artifact's precision, which selects the tolerance.
        device: the CPU (model and ISA flags) or GPU (name and compute capability).
        max_abs_map: the largest |Δ| from the reference map.
        found_1px: the share of reference detections found within 1 px.
        f1: detections against the reference detections (radius ``min_distance``).
        megapixels_per_s: :meth:`Detector.detect` on the reference images.
        status: ``"agrees"``, ``"DISAGREES"``, ``"skipped"`` or ``"error"``.
        problems: what was outside the tolerance, or why it was skipped or failed.
    """

    model: str
    backend: str
    precision: str = "?"
    device: str = ""
    max_abs_map: float | None = None
    found_1px: float | None = None
    f1: float | None = None
    megapixels_per_s: float | None = None
    status: str = "agrees"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False only when the backend ran and disagreed, or failed."""
        return self.status in ("agrees", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tolerance(backend_name: str, precision: str) -> Tolerance:
    if backend_name == "tensorrt" and precision == "fp32":
        return TOLERANCES["fp16"]  # TensorRT's default TF32
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise InputError(f"no tolerance for precision {precision!r}; known: {', '.join(TOLERANCES)}") from None


def _to_host(maps: Any) -> np.ndarray:
    if isinstance(maps, np.ndarray):
        return maps
    get = getattr(maps, "get", None)  # CuPy
    return np.asarray(get() if callable(get) else maps)


def _device_description(detector: Any) -> str:
    from ..machine import cpu_flags, cpu_model

    if detector.device == "cuda" or detector.backend_name in ("tensorrt", "onnxruntime-cuda"):
        try:
            from ..backends.cuda_env import cuda_device_properties

            name, cc = cuda_device_properties(int(getattr(detector.backend, "device_id", 0) or 0))
            return f"{name} (sm_{cc.replace('.', '')})"
        except Exception as exc:  # the GPU was usable a moment ago; describe what we can
            return f"CUDA GPU ({exc})"
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in cpu_flags()]
    return f"{cpu_model()} [{' '.join(isa) or 'no avx2'}]"


def check_detector(detector: Any, *, repeats: int = 3, reference: dict[str, Any] | None = None) -> CheckResult:
    """Runs ``detector`` on its model's reference images and compares with the reference.

    Args:
        detector: a :class:`~micronet.runtime.Detector` (its backend, threshold and
            minimum distance are what is checked; the reference's own ξ and distance are
            used for the comparison, so a caller's threshold override does not count as
            a disagreement).
        repeats: timed runs per image for ``MP/s`` (the best counts).
        reference: the reference results; default: the ones the model carries.

    Returns:
        A :class:`CheckResult`; ``status`` is ``"agrees"`` or ``"DISAGREES"``.

    Raises:
        ValueError: the model carries no reference results, or they name images that
            this installation's bundled sample does not reproduce.
    """
    backend = detector.backend
    ref = reference if reference is not None else reference_of(backend)
    model = str(detector.model_path.name if getattr(detector, "model_path", None) else type(backend).__name__)
    if ref is None:
        raise InputError(
            f"{model} carries no reference results (exported before micronet check existed); "
            "re-export it with micronet export to add them"
        )
    precision = str(getattr(backend, "sidecar", {}).get("precision", "") or detector.info.precision)
    result = CheckResult(model=model, backend=detector.backend_name, precision=precision, device=_device_description(detector))
    tol = _tolerance(result.backend, precision)
    # Same backend, the reference's decoding parameters (a Detector of the caller's class:
    # this module needs no import of the detector, which imports it for verify=True).
    probe = type(detector)(
        backend=backend,
        threshold=float(ref["threshold"]),
        min_distance=int(ref["min_distance"]),
        tile_size=detector.tile_size,
        batch_size=1,
    )
    crops = {tuple(box): image for box, image in reference_images()}
    max_abs = 0.0
    found = total = 0
    tp = fp = fn = 0
    best_s = 0.0
    pixels = 0
    for entry in ref["images"]:
        box = tuple(int(v) for v in entry["box"])
        image = crops.get(box)
        if image is None or _sha256(image) != entry["pixels_sha256"]:
            raise InputError(
                f"{model}: reference image {entry.get('source')} {box} differs from this installation's bundled sample; "
                "re-export the model with this version of micronet"
            )
        stride = int(entry["map_stride"])
        want_map = _decode(entry["map"], tuple(entry["map_shape"]))
        got_map = _to_host(backend.infer(image[None]))[0, 0][::stride, ::stride]
        if got_map.shape != want_map.shape:
            raise InputError(f"{model}: the map of {box} has shape {got_map.shape} on the grid, the reference {want_map.shape}")
        if not np.all(np.isfinite(got_map)):
            max_abs = float("inf")
        else:
            max_abs = max(max_abs, float(np.abs(got_map.astype(np.float64) - want_map).max()))
        want_xy = np.asarray(entry["xy"], dtype=np.float64).reshape(-1, 2)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            got = probe.detect(image, mpp=probe.info.mpp)  # the reference crops are at the model's pixel size
            times.append(time.perf_counter() - t0)
        best_s += min(times)
        pixels += image.shape[0] * image.shape[1]
        pred_idx, _ = match_points(got.xy, want_xy, FOUND_RADIUS)
        found += len(pred_idx)
        total += len(want_xy)
        m = evaluate_points(got.xy, want_xy, float(ref["min_distance"]))
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    result.max_abs_map = max_abs
    result.found_1px = found / total if total else 1.0
    result.f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    result.megapixels_per_s = pixels / 1e6 / best_s if best_s > 0 else None
    if not max_abs <= tol.max_abs_map:
        result.problems.append(f"max |Δ map| {max_abs:.3g} > {tol.max_abs_map:g}")
    if result.found_1px < tol.min_found:
        result.problems.append(f"found ≤1px {result.found_1px:.3f} < {tol.min_found:g}")
    if result.f1 < tol.min_f1:
        result.problems.append(f"F1 {result.f1:.3f} < {tol.min_f1:g}")
    result.status = "DISAGREES" if result.problems else "agrees"
    log.info(
        "check %s on %s: max|Δ| %.3g, found≤1px %.3f, F1 %.3f, %.2f MP/s: %s",
        model, result.backend, max_abs, result.found_1px, result.f1, result.megapixels_per_s or 0, result.status,
    )
    return result


def verify_detector(detector: Any) -> CheckResult:
    """:func:`check_detector`, raising :class:`VerificationError` when the backend
    disagrees (what ``Detector(..., verify=True)`` runs once at load)."""
    result = check_detector(detector, repeats=1)
    if not result.ok:
        tol = _tolerance(result.backend, result.precision)
        raise VerificationError(
            f"{result.model} on {result.backend} ({result.device}) disagrees with its reference results: "
            f"{'; '.join(result.problems)} (tolerance for {result.precision}: {tol}); "
            "run `micronet check` for every backend on this machine, and report it with the table"
        )
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_check_table(results: list[CheckResult], machine: str = "") -> str:
    """A markdown table, one row per backend, under a line naming the machine."""
    head = "| model | backend | precision | device | max \\|Δ map\\| | found ≤1px | F1 | MP/s | result |"
    rows = [head, "|" + "---|" * 9]
    for r in results:
        status = r.status if not r.problems else f"{r.status}: {'; '.join(r.problems)}"
        rows.append(
            f"| {r.model} | {r.backend} | {r.precision} | {r.device} | {_fmt(r.max_abs_map, '.2g')} | "
            f"{_fmt(r.found_1px, '.3f')} | {_fmt(r.f1, '.3f')} | {_fmt(r.megapixels_per_s, '.2f')} | {status} |"
        )
    return (f"machine: {machine}\n\n" if machine else "") + "\n".join(rows)
