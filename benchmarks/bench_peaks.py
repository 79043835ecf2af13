"""Peak finder: micronet.runtime.find_peaks vs skimage.feature.peak_local_max vs a
separable maximum filter in NumPy/SciPy, on realistic proximity maps (one nucleus per
~400 px², Gaussian blobs), 2048² and 8192². Identical peaks are checked in the same run.

    python benchmarks/bench_peaks.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, write_results  # noqa: E402

from micronet.runtime.peaks import find_peaks  # noqa: E402


def realistic_map(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((size, size), np.float32)
    n = size * size // 400
    m[rng.integers(0, size, n), rng.integers(0, size, n)] = rng.uniform(0.5, 1.0, n)
    return (ndi.gaussian_filter(m, 3.0) * 2 * np.pi * 9 * 5).astype(np.float32)


def separable_numpy(m: np.ndarray, threshold: float, d: int) -> np.ndarray:
    """The usual fast route: a separable maximum filter, then the candidates."""
    mx = ndi.maximum_filter1d(ndi.maximum_filter1d(m, 2 * d + 1, axis=0, mode="nearest"), 2 * d + 1, axis=1, mode="nearest")
    return np.argwhere((m == mx) & (m > threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2048² only, fewer repeats")
    args = parser.parse_args()
    from skimage.feature import peak_local_max

    threshold, d = 1.0, 3
    sizes = [2048] if args.quick else [2048, 8192]
    rows = []
    for size in tqdm(sizes, desc="maps"):
        m = realistic_map(size)
        repeat = 3 if size > 4096 or args.quick else 7
        ours_xy, _ = find_peaks(m, threshold, d)
        ref = peak_local_max(m, min_distance=d, threshold_abs=threshold, exclude_border=False)[:, ::-1]
        identical = bool(np.array_equal(ours_xy, ref.astype(np.float32)))
        t_ours = best_time(lambda: find_peaks(m, threshold, d), repeat)
        t_ref = best_time(lambda: peak_local_max(m, min_distance=d, threshold_abs=threshold, exclude_border=False), max(1, repeat // 2))
        t_sep = best_time(lambda: separable_numpy(m, threshold, d), repeat)
        rows.append(
            {
                "size": size,
                "peaks": int(len(ours_xy)),
                "identical_to_peak_local_max": identical,
                "micronet_ms": t_ours * 1e3,
                "peak_local_max_ms": t_ref * 1e3,
                "separable_numpy_ms": t_sep * 1e3,
                "speedup_vs_peak_local_max": t_ref / t_ours,
                "speedup_vs_separable_numpy": t_sep / t_ours,
            }
        )
    table = [
        "| map | peaks | identical | micronet ms | peak_local_max ms | separable NumPy ms | × vs peak_local_max | × vs separable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['size']}² | {r['peaks']} | {r['identical_to_peak_local_max']} | {r['micronet_ms']:.1f} | "
            f"{r['peak_local_max_ms']:.1f} | {r['separable_numpy_ms']:.1f} | {r['speedup_vs_peak_local_max']:.1f}× | "
            f"{r['speedup_vs_separable_numpy']:.1f}× |"
        )
    write_results("peaks", {"threshold": threshold, "min_distance": d, "rows": rows}, "\n".join(table))


if __name__ == "__main__":
    main()
