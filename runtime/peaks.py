"""Peak finding: nucleus centres are the local maxima of the proximity map.

``find_peaks`` returns the same peaks as
``skimage.feature.peak_local_max(prob_map, min_distance, threshold_abs=threshold,
exclude_border=False)``, in the same order (highest first), at a fraction of the time: a
native scan that checks the (2·min_distance+1)² window only where the value exceeds the
threshold and no 4-neighbour is larger. ``find_peaks_cuda`` does the same on a CuPy
array without copying the map off the device.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError
from .optional import import_cupy

__all__ = ["check_threshold", "find_peaks", "find_peaks_cuda", "refine_subpixel"]


def _check_params(threshold: Any, min_distance: Any) -> tuple[float, int]:
    """The peak finder's parameters: any finite threshold (a map may hold any values,
    as for ``peak_local_max``), ``min_distance`` an integer >= 1."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise InputTypeError(f"threshold: expected a real number, got {type(threshold).__name__}")
    if np.isnan(threshold):
        raise InputError("threshold: expected a number, got NaN")
    if not np.isfinite(threshold):
        raise InputError(f"threshold: expected a finite number, got {threshold}")
    if isinstance(min_distance, bool) or not isinstance(min_distance, numbers.Integral):
        raise InputTypeError(f"min_distance: expected an integer >= 1, got {min_distance!r}")
    if min_distance < 1:
        raise InputError(f"min_distance: expected an integer >= 1, got {min_distance}")
    return float(threshold), int(min_distance)


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """A detection threshold ξ on a MicroNet proximity map: a finite number >= 0.

    The training targets (Eq. 1) lie in ``[0, scale]``; the linear head undershoots a
    little in the background (maps of the bundled models reach about -0.2 on H&E), so a
    negative threshold would only admit those background ripples, while 0 keeps every
    positive peak (the lowest meaningful setting). The detector and the command line
    check the caller's thresholds here; :func:`find_peaks` itself takes any finite one.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite or negative.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise InputTypeError(f"{name}: expected a number >= 0, got {type(threshold).__name__}")
    if not np.isfinite(threshold) or threshold < 0:
        raise InputError(
            f"{name}: expected a finite number >= 0 on the proximity map (the models' targets run from 0 to their scale, "
            f"5 for the bundled ones; higher keeps fewer, stronger detections), got {threshold}"
        )
    return float(threshold)


def _as_map(prob_map: Any) -> np.ndarray:
    arr = np.asarray(prob_map)
    if arr.ndim == 3 and arr.shape[0] == 1:  # (1, H, W) as a network emits it
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"prob_map: expected an (H, W) map, got shape {arr.shape}")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)  # exact
    elif arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)  # exact for every integer a map could hold
    elif arr.dtype not in (np.float32, np.float64):
        raise InputTypeError(f"prob_map: expected a float or integer array, got dtype {arr.dtype}")
    return arr


def _flat_to_xy(flat: np.ndarray, width: int) -> np.ndarray:
    rows, cols = np.divmod(flat, width)
    return np.stack([cols, rows], axis=1).astype(np.float32).reshape(-1, 2)  # (N, 2) x, y


def find_peaks(
    prob_map: np.ndarray,
    threshold: float,
    min_distance: int = 3,
    *,
    subpixel: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a proximity map above a threshold.

    Args:
        prob_map: ``(H, W)`` (or ``(1, H, W)``) float32/float64/float16 or integer map.
            NaN or infinite values raise ``ValueError``.
        threshold: a pixel can be a peak only if its value is strictly greater (ξ).
        min_distance: peaks are maxima of their ``(2·min_distance+1)²`` window and at
            least ``min_distance`` pixels apart (Chebyshev); plateaus give one peak, the
            first in row-major order. Peaks on the border count.
        subpixel: refine each position by a quadratic fit through its 3×3 neighbourhood
            (offsets within ±0.5 px); by default positions are whole pixels.

    Returns:
        ``(xy, scores)``: ``xy`` an ``(N, 2)`` float32 array of ``(x, y)`` = (column, row)
        pixel positions, ``scores`` the ``(N,)`` map values there (map dtype), highest
        first; ties in row-major order.

    >>> m = np.zeros((5, 6), np.float32); m[1, 4] = 2.0; m[3, 1] = 1.0
    >>> xy, s = find_peaks(m, threshold=0.5, min_distance=1)
    >>> xy.tolist(), s.tolist()
    ([[4.0, 1.0], [1.0, 3.0]], [2.0, 1.0])
    """
    from . import _native

    thr, dist = _check_params(threshold, min_distance)
    arr = _as_map(prob_map)
    if arr.dtype == np.float32:
        flat = _native.find_peaks_f32(arr, thr, dist)
    else:
        flat = _native.find_peaks_f64(arr, thr, dist)
    scores = arr.reshape(-1)[flat]
    xy = _flat_to_xy(flat, arr.shape[1])
    if subpixel:
        xy = refine_subpixel(arr, xy)
    return xy, scores


def refine_subpixel(prob_map: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sub-pixel peak positions by a separable quadratic fit over the 3×3 neighbourhood.

    Args:
        prob_map: the ``(H, W)`` map the whole-pixel peaks ``xy`` came from.
        xy: ``(N, 2)`` whole-pixel ``(x, y)`` positions.

    Returns:
        ``(N, 2)`` float32 positions; each offset is clipped to ±0.5 px, and a peak on
        the border is not moved along the axis where it has no neighbour.
    """
    arr = np.asarray(prob_map)
    out = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
    if len(out) == 0:
        return out.copy()
    h, w = arr.shape
    cols = out[:, 0].astype(np.int64)
    rows = out[:, 1].astype(np.int64)
    return _refine_from_patches(_patches3x3(np, arr, rows, cols), out, rows, cols, h, w)


def _patches3x3(xp: Any, arr: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ``(N, 3, 3)`` float64 neighbourhoods of the given pixels (clipped at the border)."""
    h, w = arr.shape
    offs = np.arange(-1, 2)
    rr = np.clip(rows[:, None, None] + offs[None, :, None], 0, h - 1)
    cc = np.clip(cols[:, None, None] + offs[None, None, :], 0, w - 1)
    patches = arr[xp.asarray(rr), xp.asarray(cc)]
    return (patches if xp is np else xp.asnumpy(patches)).astype(np.float64)


def _refine_from_patches(
    patches: np.ndarray, xy: np.ndarray, rows: np.ndarray, cols: np.ndarray, h: int, w: int
) -> np.ndarray:
    out = xy.copy()
    for axis, (size, pos) in enumerate(((w, cols), (h, rows))):
        inside = (pos > 0) & (pos < size - 1)
        p = patches[inside]
        if axis == 0:
            lo, mid, hi = p[:, 1, 0], p[:, 1, 1], p[:, 1, 2]
        else:
            lo, mid, hi = p[:, 0, 1], p[:, 1, 1], p[:, 2, 1]
        curv = lo - 2.0 * mid + hi
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = np.where(curv < 0, 0.5 * (lo - hi) / curv, 0.0)
        out[inside, axis] += np.clip(offset, -0.5, 0.5).astype(np.float32)
    return out


# One CUDA thread per pixel, the same test as the native CPU scan: a candidate's value
# exceeds the threshold and no pixel of its clipped (2m+1)² window is larger (a larger
# 4-neighbour rejects it cheaply first). Candidates go to a compact list through an atomic
# counter, in no particular order. The map-wide facts the CPU scan gets from its min/max
# and finiteness checks are folded in as flags, so nothing else reads the whole map:
# header = [count, differs (some pixel != pixel 0), non-finite (a NaN or ±inf seen), 0].
_CANDIDATE_KERNEL = r"""
extern "C" __global__ void peak_candidates_TYPE(
        const TYPE* __restrict__ map, const long long height, const long long width,
        const TYPE threshold, const int m, const unsigned long long capacity,
        unsigned long long* __restrict__ header, long long* __restrict__ flat,
        TYPE* __restrict__ values) {
    const long long n = height * width;
    const long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    const bool inside = i < n;
    const TYPE v = inside ? map[i] : map[0];
    // Comparisons only (no math library): false for NaN and for ±inf.
    const bool finite = v >= -MAXV && v <= MAXV;
    // One write per block, not per pixel: every thread reaches these barriers.
    const int any_nonfinite = __syncthreads_or(inside && !finite);
    const int any_differs = __syncthreads_or(inside && v != map[0]);
    if (threadIdx.x == 0) {
        if (any_nonfinite) header[2] = 1ULL;
        if (any_differs) header[1] = 1ULL;
    }
    if (!inside || !finite || !(v > threshold)) return;
    const long long y = i / width, x = i - y * width;
    if ((x > 0 && map[i - 1] > v) || (x + 1 < width && map[i + 1] > v) ||
        (y > 0 && map[i - width] > v) || (y + 1 < height && map[i + width] > v)) return;
    const long long y0 = y - m < 0 ? 0 : y - m, y1 = y + m >= height ? height - 1 : y + m;
    const long long x0 = x - m < 0 ? 0 : x - m, x1 = x + m >= width ? width - 1 : x + m;
    for (long long yy = y0; yy <= y1; ++yy) {
        const TYPE* row = map + yy * width;
        for (long long xx = x0; xx <= x1; ++xx)
            if (row[xx] > v) return;
    }
    const unsigned long long k = atomicAdd(header, 1ULL);
    if (k < capacity) {
        flat[k] = i;
        values[k] = v;
    }
}
"""
_MAX_FINITE = {"float": "3.402823466e+38f", "double": "1.7976931348623157e+308"}
_BLOCK = 256  # threads per block (a multiple of the warp size)
_HEADER_BYTES = 32  # four uint64: count, differs, non-finite, padding
# Candidates the list holds before a second pass is needed: one per 64 pixels (a 1024²
# tile: 16384, ~200 kB copied back), several times what a proximity map yields; at
# least 1024. Larger counts (plateaus above the threshold) rerun with the exact size.
_MIN_CAPACITY = 1024
_PIXELS_PER_SLOT = 64

_kernels: dict[tuple[int, str], Any] = {}


def _kernel(cupy: Any, ctype: str) -> Any:
    # RawKernel compiles on first launch, for the device current then; one per device.
    key = (cupy.cuda.Device().id, ctype)
    if key not in _kernels:
        source = _CANDIDATE_KERNEL.replace("TYPE", ctype).replace("MAXV", _MAX_FINITE[ctype])
        _kernels[key] = cupy.RawKernel(source, f"peak_candidates_{ctype}")
    return _kernels[key]


def _candidates(cupy: Any, arr: Any, threshold: float, dist: int, stream: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Runs the candidate kernel on ``arr`` (a C-contiguous ``(H, W)`` float32/float64
    CuPy map) and copies the header and the candidate list back in one transfer.

    Returns:
        ``(flat, values, differs)``: flat indices (int64, row-major order) and values of
        the candidates, and whether the map is not constant.

    Raises:
        ValueError: the map holds NaN or infinite values.
    """
    h, w = (int(s) for s in arr.shape)
    n = h * w
    ctype = "float" if arr.dtype == cupy.float32 else "double"
    itemsize = arr.dtype.itemsize
    scalar = np.float32(threshold) if ctype == "float" else np.float64(threshold)
    capacity = max(_MIN_CAPACITY, n // _PIXELS_PER_SLOT)
    while True:
        nbytes = _HEADER_BYTES + capacity * (8 + itemsize)
        buf = cupy.empty((nbytes,), dtype=cupy.uint8)  # on `stream` (the caller's `with`)
        header = buf[:_HEADER_BYTES].view(cupy.uint64)
        flat_d = buf[_HEADER_BYTES : _HEADER_BYTES + capacity * 8].view(cupy.int64)
        values_d = buf[_HEADER_BYTES + capacity * 8 :].view(arr.dtype)
        header.fill(0)
        grid = ((n + _BLOCK - 1) // _BLOCK,)
        _kernel(cupy, ctype)(
            grid, (_BLOCK,),
            (arr, np.int64(h), np.int64(w), scalar, np.int32(dist), np.uint64(capacity), header, flat_d, values_d),
        )
        host = _pinned(nbytes)
        buf.get(stream=stream, out=host)  # the one device-to-host copy; waits for the stream
        count, differs, nonfinite, _ = (int(v) for v in host[:_HEADER_BYTES].view(np.uint64))
        if nonfinite:
            raise InputError("prob_map: contains NaN or infinite values")
        if count <= capacity:
            break
        capacity = count  # more candidates than room (wide plateaus): once more, exactly
    flat = host[_HEADER_BYTES : _HEADER_BYTES + count * 8].view(np.int64).copy()
    values = host[_HEADER_BYTES + capacity * 8 : _HEADER_BYTES + capacity * 8 + count * itemsize].view(arr.dtype.type).copy()
    order = np.argsort(flat)  # the atomic counter's order → row-major, as select_peaks wants
    return flat[order], values[order], bool(differs)


def _as_cuda_map(cupy: Any, prob_map: Any) -> Any:
    """The map as a CuPy ``(H, W)`` float array (a ``(1, H, W)`` one squeezed), checked."""
    arr = cupy.asarray(prob_map)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"prob_map: expected an (H, W) map, got shape {arr.shape}")
    if arr.dtype not in (cupy.float16, cupy.float32, cupy.float64):
        raise InputTypeError(f"prob_map: expected a float array, got dtype {arr.dtype}")
    return arr


def _ordered_stream(cupy: Any, stream: Any, ready: Any) -> Any:
    """The stream the peak finder runs on, made to wait for the map: for ``ready`` when
    given, and for the current stream's queued work when ``stream`` is another one (a
    caller's stream would otherwise read a map its producer is still writing)."""
    current = cupy.cuda.get_current_stream()
    run_on = stream if stream is not None else current
    if run_on.ptr != current.ptr:
        run_on.wait_event(current.record())
    if ready is not None:
        run_on.wait_event(ready)
    return run_on


def _pinned(nbytes: int) -> np.ndarray:
    """A pinned host uint8 buffer (from CuPy's pinned pool): the copy into it is a
    direct DMA, and it returns to the pool when dropped."""
    import cupyx

    return cupyx.empty_pinned((nbytes,), dtype=np.uint8)


def find_peaks_cuda(
    prob_map: Any,
    threshold: float,
    min_distance: int = 3,
    *,
    subpixel: bool = False,
    stream: Any = None,
    ready: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``find_peaks`` for a map already on the GPU, with identical output.

    One kernel finds the candidates (the CPU scan's test, one thread per pixel) and
    writes them, with the map's constant and non-finite flags, to a compact device
    buffer; one device-to-host copy brings that back. The exact minimum-distance
    selection among the (few) candidates runs on the host, as in :func:`find_peaks`.

    Args:
        prob_map: a CuPy ``(H, W)`` or ``(1, H, W)`` float32/float64/float16 array (or any
            object CuPy accepts through ``__cuda_array_interface__``), on any device: the
            work runs on the map's device.
        threshold, min_distance, subpixel: as in :func:`find_peaks`.
        stream: the CuPy stream to run on (default: the map device's current one); it
            first waits for the current stream's queued work, which (CuPy's convention)
            wrote the map, and for ``ready``, an event recorded after the map was written.

    Returns:
        ``(xy, scores)`` as NumPy arrays, as :func:`find_peaks`. The map itself never
        leaves the device: only the candidate positions and values are copied back (and,
        with ``subpixel``, their 3×3 neighbourhoods).

    Raises:
        ValueError: not an ``(H, W)`` map, or NaN/infinite values; bad parameters.
        TypeError: a dtype other than float16/32/64.
    """
    cupy = import_cupy("find_peaks_cuda")
    thr, dist = _check_params(threshold, min_distance)
    arr = _as_cuda_map(cupy, prob_map)
    h, w = (int(s) for s in arr.shape)
    if h == 0 or w == 0:
        dtype = np.float32 if arr.dtype == cupy.float16 else np.dtype(arr.dtype.name)
        return np.zeros((0, 2), np.float32), np.zeros((0,), dtype)
    with arr.device:  # kernels and copies run on the map's GPU
        run_on = _ordered_stream(cupy, stream, ready)
        with run_on:
            return _peaks_on_device(cupy, arr, thr, dist, subpixel, run_on)


def _peaks_on_device(cupy: Any, arr: Any, thr: float, dist: int, subpixel: bool, run_on: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_peaks_cuda`'s work on a non-empty ``(H, W)`` CuPy map, on its device
    and ``run_on`` stream: candidates on the GPU, the selection on the host."""
    from . import _native

    h, w = (int(s) for s in arr.shape)
    if arr.dtype == cupy.float16:
        arr = arr.astype(cupy.float32)  # exact, as find_peaks does
    arr = cupy.ascontiguousarray(arr)
    flat_h, values_h, differs = _candidates(cupy, arr, thr, dist, run_on)
    # A constant map has no peaks (as in peak_local_max), unless it is one pixel.
    if not differs and h * w > 1:
        flat_h, values_h = flat_h[:0], values_h[:0]
    select = _native.select_peaks_f32 if values_h.dtype == np.float32 else _native.select_peaks_f64
    keep = select(flat_h, values_h, w, dist)
    flat_h, scores = flat_h[keep], values_h[keep]
    xy = _flat_to_xy(flat_h, w)
    if subpixel and len(xy):
        # Only the 3×3 neighbourhoods travel to the host.
        rows, cols = np.divmod(flat_h, w)
        xy = _refine_from_patches(_patches3x3(cupy, arr, rows, cols), xy, rows, cols, h, w)
    return xy, scores
