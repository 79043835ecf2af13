"""Known answers: does this machine's backend compute what the model was exported to compute?

Every exported model carries *reference results*: the fp32 model's proximity map, its
detections and (for a model with a class head) their classes on fixed images, computed
from the checkpoint at export time (``micronet export``) and stored in the ONNX model's
``metadata_props`` under :data:`REFERENCE_KEY` (an engine's ``.engine.json`` copies
them). The images are four crops of the two bundled images (:data:`REFERENCE_CROPS`):
the synthetic ``sample.png`` and a real H&E region of the CMU-1 slide, each whole (sides
multiples of 8: the exported models' aligned fast path) and odd-sized (the general path
with its crops and pads); about 820 detections in all. :func:`check_detector` runs a
:class:`~micronet.runtime.Detector` on them and compares:

- ``max |Δ map|`` and ``mean |Δ map|``: the largest and the mean difference from the
  reference map, over a grid of every :data:`MAP_STRIDE`-th pixel (the reference stores
  that grid, not the whole map). The mean sees a changed layer that shifts the whole
  map a little, where the largest sees a local fault;
- ``count Δ``: how many more (or fewer) detections than the reference, as a share;
- ``F1``: detections against the reference detections, matched one-to-one with the
  evaluation's matcher within ``min_distance`` pixels (the reference as the truth);
- ``found ≤1px``: the share of reference detections with a detection within 1 pixel;
- ``class =``: for a model with a class head, the share of detections matched within
  1 pixel whose most probable class is the reference's;
- ``MP/s``: megapixels per second of :meth:`Detector.detect` on the reference images,
  best of a few runs (small images: a floor, not the tile throughput of ``micronet bench``).

Each artifact precision has its tolerances (:data:`TOLERANCES`), derived from what that
precision really does to the bundled models and what another instruction set could
change on top (see the table's comments, and ``tools/check_sensitivity.py``, which
measures both and the smallest weight change this check catches). A backend outside
them *disagrees*: ``micronet check`` exits non-zero and ``Detector(..., verify=True)``
raises :class:`VerificationError`. This catches what unit tests on one developer's
machine cannot: an int8 kernel that saturates on the user's CPU, a TensorRT tactic that
misbehaves on the user's GPU, a broken driver, a damaged or altered model file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from ..bundled import DEMO_IMAGE, SAMPLE_IMAGE, bundled_image
from ..errors import InputError, MicronetError
from ..evaluation.matching import evaluate_points, match_points
from ..images import as_rgb_image
from ..peaks import find_peaks

__all__ = [
    "REFERENCE_KEY",
    "REFERENCE_FORMAT",
    "REFERENCE_CROPS",
    "TOLERANCES",
    "CheckResult",
    "ReferenceImage",
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
REFERENCE_FORMAT = "micronet-reference/2"
_READABLE = ("micronet-reference/1", REFERENCE_FORMAT)  # /1: the sample's two crops, no classes
MAP_STRIDE = 4  # the reference keeps every 4th row and column of the map
# Fixed crops (y, x, height, width) of the bundled images (512² each): per image one whose
# sides are multiples of 8 (the aligned fast path, every full Detector tile) and one
# odd-sized (the general path with its crops and pads).
REFERENCE_CROPS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    SAMPLE_IMAGE: ((0, 0, 512, 512), (37, 11, 301, 263)),
    DEMO_IMAGE: ((0, 0, 512, 512), (101, 67, 333, 291)),
}
FOUND_RADIUS = 1.0


@dataclass(frozen=True)
class Tolerance:
    """What a backend running an artifact of one precision must achieve against the
    fp32 reference: ``max |Δ map| <= max_abs_map``, ``mean |Δ map| <= mean_abs_map``,
    ``|count Δ| <= max_count_change``, ``F1 >= min_f1``, ``found ≤1px >= min_found``
    and, with classes, ``class = >= min_class_agreement``."""

    max_abs_map: float
    mean_abs_map: float
    max_count_change: float
    min_f1: float
    min_found: float
    min_class_agreement: float


# Per artifact precision: what the precision does to the bundled models against their
# fp32 references on the reference images, plus what another kernel path could change on
# top, rounded up (``python tools/check_sensitivity.py spread`` measures both;
# docs/results.md, "A self-test with teeth"). The map spans 0 to about 4.6.
# - fp32: ONNX Runtime against torch: max 3e-6; without graph optimisations (another
#   summation order, as another ISA's kernels have): the same. Allowed 300× that;
#   peaks move only on exact near-ties.
# - fp16: fp16 weights and activations between layers (torch fp16, as a GPU computes
#   it): max 0.0041, mean 0.00029, every detection kept; ORT's fp16 export on the CPU
#   0.0028 / 0.00017. A GPU kernel may also accumulate in fp16: allowed 24× (max 0.1)
#   and 28× (mean 0.008) the measured, still below a changed layer's (×1.3 on one layer
#   of the default: see the docs).
# - int8: the bundled int8 exports against fp32: max 0.31 / 0.19, mean 0.0139 / 0.0138,
#   count −0.85 % / +0.36 %, F1 0.992 / 0.998, found ≤1px 0.972 / 0.987, class = 0.976
#   / 0.983 (fast-cpu's class head at 1/4 is float, its inputs are u8).
#   7-bit weights make the integer sums the same on AVX2 (vpmaddubsw cannot saturate),
#   AVX-512, VNNI and AMX; what an instruction set can still change (the float steps
#   around them) is bounded by ORT's integer kernels against the same quantised graph
#   computed in float (session.disable_quant_qdq): max 0.074, mean 0.0070, count 0.24 %,
#   F1 0.9988, found 0.9965, class = 0.993 (fast-cpu). Tolerance: the worst of the first
#   plus the worst of the second, rounded up (class =: 1 − 0.024 − 0.007 → 0.96).
# GPUs may run fp32 convolutions in TF32 (TensorRT's and cuDNN's default: a 10-bit
# mantissa, as fp16's), so an fp32 artifact on a GPU gets the fp16 row.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_map=0.001, mean_abs_map=1e-4, max_count_change=0.005, min_f1=0.995, min_found=0.995, min_class_agreement=0.995),
    "fp16": Tolerance(max_abs_map=0.1, mean_abs_map=0.008, max_count_change=0.01, min_f1=0.99, min_found=0.98, min_class_agreement=0.98),
    "int8": Tolerance(max_abs_map=0.4, mean_abs_map=0.021, max_count_change=0.011, min_f1=0.99, min_found=0.96, min_class_agreement=0.96),
}
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda", "torch-cuda")


class VerificationError(MicronetError, RuntimeError):
    """A backend disagrees with the model's reference results beyond the tolerance of
    its precision."""


# --- the reference images and results ---------------------------------------------------


class ReferenceImage(NamedTuple):
    """One reference image: the bundled file it is cut from, the crop ``(y, x, h, w)``
    and its ``(h, w, 3)`` uint8 pixels."""

    source: str
    box: tuple[int, int, int, int]
    image: np.ndarray


def reference_images() -> list[ReferenceImage]:
    """The reference crops of the bundled images (:data:`REFERENCE_CROPS`)."""
    crops = []
    for source, boxes in REFERENCE_CROPS.items():
        whole = as_rgb_image(bundled_image(source), f"bundled {source}")
        for y, x, h, w in boxes:
            crops.append(ReferenceImage(source, (y, x, h, w), np.ascontiguousarray(whole[y : y + h, x : x + w])))
    return crops


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _as_maps(out: Any) -> np.ndarray:
    """A model's output as one ``(1, 1 + K, H, W)`` float32 array: the map, then the
    class logits when the model has a class head (``(map, logits)`` or already one)."""
    if isinstance(out, (tuple, list)):
        out = np.concatenate([np.asarray(o, dtype=np.float32) for o in out], axis=1)
    return np.asarray(out, dtype=np.float32)


def build_reference(map_fn: Callable[[np.ndarray], Any], threshold: float, min_distance: int) -> dict[str, Any]:
    """The reference results of a model, as stored with its exports.

    Args:
        map_fn: ``(1, H, W, 3)`` uint8 → the fp32 model's ``(1, 1, H, W)`` float32
            proximity map, or for a model with a class head ``(1, 1 + K, H, W)`` (or the
            pair ``(map, logits)``); the exporter passes the checkpoint's torch model.
        threshold, min_distance: the model's ξ and minimum peak distance.

    Returns:
        A JSON-ready dict: per reference crop its source and box, the SHA-256 of its
        pixels, the map on every :data:`MAP_STRIDE`-th pixel (float32, base64), the
        detections and, with a class head, each detection's most probable class.
    """
    images = []
    for source, box, image in reference_images():
        maps = _as_maps(map_fn(image[None]))[0]  # (1 + K, H, W)
        xy, scores = find_peaks(maps[0], threshold, min_distance)
        grid = maps[0, ::MAP_STRIDE, ::MAP_STRIDE]
        entry = {
            "source": source,
            "box": list(box),
            "pixels_sha256": _sha256(image),
            "map_stride": MAP_STRIDE,
            "map_shape": list(grid.shape),
            "map": _encode(grid),
            "xy": np.round(xy.astype(np.float64), 3).tolist(),
            "scores": np.round(scores.astype(np.float64), 5).tolist(),
        }
        if maps.shape[0] > 1:
            cols, rows = np.rint(xy[:, 0]).astype(np.int64), np.rint(xy[:, 1]).astype(np.int64)
            entry["classes"] = maps[1:, rows, cols].argmax(axis=0).astype(int).tolist()  # (N,) class indices
        images.append(entry)
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
    if not isinstance(ref, dict) or ref.get("format") not in _READABLE:
        got = ref.get("format") if isinstance(ref, dict) else type(ref).__name__
        raise InputError(f"the model's reference results have format {got!r}, expected {' or '.join(map(repr, _READABLE))}")
    return ref


# --- the check --------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One backend against the reference. Numbers are ``None`` when it did not run.

    Attributes:
        model: the model file (or the backend's description).
        backend: ``"onnxruntime-cpu"``, ``"onnxruntime-cuda"``, ``"tensorrt"``, ``"torch-…"``.
        precision: the artifact's precision, which selects the tolerance.
        device: the CPU (model and ISA flags) or GPU (name and compute capability).
        max_abs_map, mean_abs_map: the largest and the mean |Δ| from the reference map.
        count_change: detections found ÷ reference detections − 1.
        f1: detections against the reference detections (radius ``min_distance``).
        found_1px: the share of reference detections found within 1 px.
        class_agreement: the share of detections matched within 1 px with the
            reference's class (``None`` without a class head).
        megapixels_per_s: :meth:`Detector.detect` on the reference images.
        status: ``"agrees"``, ``"DISAGREES"``, ``"skipped"`` or ``"error"``.
        problems: what was outside the tolerance, or why it was skipped or failed.
    """

    model: str
    backend: str
    precision: str = "?"
    device: str = ""
    max_abs_map: float | None = None
    mean_abs_map: float | None = None
    count_change: float | None = None
    f1: float | None = None
    found_1px: float | None = None
    class_agreement: float | None = None
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
    if backend_name in GPU_BACKENDS and precision == "fp32":
        return TOLERANCES["fp16"]  # TF32 on the GPU
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

    if detector.device == "cuda" or detector.backend_name in GPU_BACKENDS:
        try:
            from ..backends.cuda_env import cuda_device_properties

            name, cc = cuda_device_properties(int(getattr(detector.backend, "device_id", 0) or 0))
            return f"{name} (sm_{cc.replace('.', '')})"
        except Exception as exc:  # the GPU was usable a moment ago; describe what we can
            return f"CUDA GPU ({exc})"
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in cpu_flags()]
    return f"{cpu_model()} [{' '.join(isa) or 'no avx2'}]"


class _Tally:
    """The comparison pooled over the reference images."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.abs_sum = 0.0
        self.grid_pixels = 0
        self.found = self.total = self.got = 0
        self.tp = self.fp = self.fn = 0
        self.same_class = self.matched = 0
        self.best_s = 0.0
        self.pixels = 0

    def add_map(self, got: np.ndarray, want: np.ndarray) -> None:
        if not np.all(np.isfinite(got)):
            self.max_abs = self.abs_sum = float("inf")
            return
        diff = np.abs(got.astype(np.float64) - want)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.abs_sum += float(diff.sum())
        self.grid_pixels += diff.size

    def add_detections(self, got: Any, entry: dict[str, Any], radius: float) -> None:
        want_xy = np.asarray(entry["xy"], dtype=np.float64).reshape(-1, 2)
        pred_idx, true_idx = match_points(got.xy, want_xy, FOUND_RADIUS)
        self.found += len(pred_idx)
        self.total += len(want_xy)
        self.got += len(got.xy)
        m = evaluate_points(got.xy, want_xy, radius)
        self.tp, self.fp, self.fn = self.tp + m.tp, self.fp + m.fp, self.fn + m.fn
        if "classes" in entry and got.class_probabilities is not None:
            want = np.asarray(entry["classes"], dtype=np.int64)
            self.same_class += int((got.classes[pred_idx] == want[true_idx]).sum())
            self.matched += len(pred_idx)

    def fill(self, result: CheckResult) -> None:
        result.max_abs_map = self.max_abs
        result.mean_abs_map = self.abs_sum / self.grid_pixels if self.grid_pixels else self.abs_sum
        result.count_change = self.got / self.total - 1 if self.total else float(self.got > 0)
        result.f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn) if (self.tp + self.fp + self.fn) else 1.0
        result.found_1px = self.found / self.total if self.total else 1.0
        result.class_agreement = self.same_class / self.matched if self.matched else None
        result.megapixels_per_s = self.pixels / 1e6 / self.best_s if self.best_s > 0 else None


def _judge(result: CheckResult, tol: Tolerance) -> None:
    """Sets ``status`` and lists what lies outside ``tol``."""
    checks = [
        (result.max_abs_map, "<=", tol.max_abs_map, "max |Δ map|", ".3g"),
        (result.mean_abs_map, "<=", tol.mean_abs_map, "mean |Δ map|", ".3g"),
        (abs(result.count_change or 0.0), "<=", tol.max_count_change, "|count Δ|", ".2%"),
        (result.f1, ">=", tol.min_f1, "F1", ".3f"),
        (result.found_1px, ">=", tol.min_found, "found ≤1px", ".3f"),
        (result.class_agreement, ">=", tol.min_class_agreement, "class =", ".3f"),
    ]
    for value, op, limit, name, spec in checks:
        if value is None:
            continue
        inside = value <= limit if op == "<=" else value >= limit
        if not inside:  # NaN is outside too
            result.problems.append(f"{name} {format(value, spec)} {'>' if op == '<=' else '<'} {format(limit, spec)}")
    result.status = "DISAGREES" if result.problems else "agrees"


def _probe(detector: Any, ref: dict[str, Any]) -> Any:
    """A Detector on the same backend with the reference's decoding parameters (of the
    caller's class: this module needs no import of the detector, which imports it for
    ``verify=True``)."""
    return type(detector)(
        backend=detector.backend, threshold=float(ref["threshold"]), min_distance=int(ref["min_distance"]),
        tile_size=detector.tile_size, batch_size=1, normalize=None, deblur=None,  # the references are of the raw pixels
    )  # fmt: skip


def _reference_crop(entry: dict[str, Any], crops: dict[tuple[str, tuple[int, ...]], np.ndarray], model: str) -> np.ndarray:
    source = str(entry.get("source", SAMPLE_IMAGE))
    box = tuple(int(v) for v in entry["box"])
    image = crops.get((source, box))
    if image is None or _sha256(image) != entry["pixels_sha256"]:
        raise InputError(
            f"{model}: reference image {source} {box} differs from this installation's bundled {source}; "
            "re-export the model with this version of micronet"
        )
    return image


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
            this installation's bundled images do not reproduce.
    """
    backend = detector.backend
    ref = reference if reference is not None else reference_of(backend)
    model = str(detector.model_path.name if getattr(detector, "model_path", None) else type(backend).__name__)
    if ref is None:
        raise InputError(f"{model} carries no reference results (exported before micronet check existed); re-export it with micronet export to add them")
    precision = str((getattr(backend, "sidecar", None) or {}).get("precision", "") or detector.info.precision)
    result = CheckResult(model=model, backend=detector.backend_name, precision=precision, device=_device_description(detector))
    tol = _tolerance(result.backend, precision)
    probe = _probe(detector, ref)
    crops = {(c.source, c.box): c.image for c in reference_images()}
    tally = _Tally()
    for entry in ref["images"]:
        image = _reference_crop(entry, crops, model)
        stride = int(entry["map_stride"])
        want_map = _decode(entry["map"], tuple(entry["map_shape"]))
        got_map = _to_host(backend.infer(image[None]))[0, 0][::stride, ::stride]
        if got_map.shape != want_map.shape:
            raise InputError(f"{model}: the map of {entry['box']} has shape {got_map.shape} on the grid, the reference {want_map.shape}")
        tally.add_map(got_map, want_map)
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            got = probe.detect(image, mpp=probe.info.mpp)  # the reference crops run at the model's pixel size
            times.append(time.perf_counter() - t0)
        tally.best_s += min(times)
        tally.pixels += image.shape[0] * image.shape[1]
        tally.add_detections(got, entry, float(ref["min_distance"]))
    tally.fill(result)
    _judge(result, tol)
    log.info(
        "check %s on %s: max|Δ| %.3g, mean|Δ| %.3g, count %+.2f%%, F1 %.3f, found≤1px %.3f, %.2f MP/s: %s",
        model, result.backend, result.max_abs_map, result.mean_abs_map, 100 * (result.count_change or 0.0), result.f1,
        result.found_1px, result.megapixels_per_s or 0, result.status,
    )  # fmt: skip
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
    head = "| model | backend | precision | device | max \\|Δ map\\| | mean \\|Δ map\\| | count Δ | F1 | found ≤1px | class = | MP/s | result |"
    rows = [head, "|" + "---|" * 12]
    for r in results:
        status = r.status if not r.problems else f"{r.status}: {'; '.join(r.problems)}"
        rows.append(
            f"| {r.model} | {r.backend} | {r.precision} | {r.device} | {_fmt(r.max_abs_map, '.2g')} | {_fmt(r.mean_abs_map, '.2g')} | "
            f"{_fmt(r.count_change, '+.2%')} | {_fmt(r.f1, '.3f')} | {_fmt(r.found_1px, '.3f')} | {_fmt(r.class_agreement, '.3f')} | "
            f"{_fmt(r.megapixels_per_s, '.2f')} | {status} |"
        )
    return (f"machine: {machine}\n\n" if machine else "") + "\n".join(rows)
