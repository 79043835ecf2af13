"""Gated point matching: micronet's native matcher against the usual alternatives.

Methods, all solving the same problem (maximum-cardinality, minimum-total-distance
matching of detections to annotations within radius r):

- ``micronet``: ``micronet.runtime.evaluation.matching.match_points`` (public API, argument checks
  included): grid gating, union-find components, an exact Hungarian per component, C++.
- ``python``: the obvious Python route: ``cKDTree.sparse_distance_matrix`` for the
  within-r pairs (the two-set form of ``query_pairs``), ``scipy.sparse.csgraph.
  connected_components``, then ``scipy.optimize.linear_sum_assignment`` per component
  (single-pair components taken directly).
- ``scipy_dense``: ``linear_sum_assignment`` on the dense N x M distance matrix,
  out-of-radius pairs at a prohibitive cost and dropped afterwards (N <= 10,000).
- ``lap_dense``: ``lap.lapjv`` (Jonker-Volgenant) on the same dense matrix, if ``lap``
  is importable (N <= 10,000).

Data: N annotated nuclei uniform in a square at one per 400 px^2; detections are the
annotations jittered by a Gaussian of 1.6 px per axis (mean displacement 2 px), 10% of
them missing, plus 10% x N false positives uniform in the field; radius 6 px.

Each (method, N) runs in a fresh subprocess. Time: best of several calls. Memory: the
rise of the process's peak resident set size (VmHWM, reset through
/proc/self/clear_refs) over its resident size just before the first call; this counts
every allocation, native ones included (tracemalloc would miss the C++ and Fortran
buffers of all but numpy). Every method's matching is checked to have the same size and
total distance (relative 1e-9) in the same run.

Usage:
    python benchmarks/bench_matcher.py            # full run: N = 1,000 ... 20,000
    python benchmarks/bench_matcher.py --quick    # N = 1,000 and 2,000, fewer repeats
Writes benchmarks/results/matcher.json and matcher.md and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

RADIUS = 6.0
AREA_PER_NUCLEUS = 400.0  # px^2
JITTER_SIGMA = 1.6  # px per axis: mean displacement sigma * sqrt(pi / 2) ~ 2 px
MISSING = 0.10
EXTRA = 0.10
DENSE_MAX_N = 10_000  # the dense matrix of 20,000 x 20,000 float64 is 3.2 GB, times copies

FULL_SIZES = (1_000, 2_000, 5_000, 10_000, 20_000)
QUICK_SIZES = (1_000, 2_000)
METHODS = ("micronet", "python", "scipy_dense", "lap_dense")
LABELS = {
    "micronet": "micronet (C++)",
    "python": "Python route",
    "scipy_dense": "scipy dense",
    "lap_dense": "lap.lapjv dense",
}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, run_machine, write_results  # noqa: E402


def make_case(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred_xy, true_xy) float64 for N annotated nuclei, as described in the module doc."""
    rng = np.random.default_rng(seed)
    side = math.sqrt(n * AREA_PER_NUCLEUS)
    true = rng.uniform(0, side, (n, 2))
    found = (true + rng.normal(0, JITTER_SIGMA, true.shape))[rng.random(n) >= MISSING]
    pred = np.vstack([found, rng.uniform(0, side, (int(round(EXTRA * n)), 2))])
    return np.ascontiguousarray(pred[rng.permutation(len(pred))]), true


# --- the methods: each returns (pred_idx, true_idx) -----------------------------------


def run_micronet(pred: np.ndarray, true: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    from micronet.runtime.evaluation.matching import match_points

    return match_points(pred, true, r)


def run_python(pred: np.ndarray, true: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n, m = len(pred), len(true)
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(true), r, output_type="ndarray")
    i, j, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    graph = coo_matrix((np.ones(len(i)), (i, n + j)), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    comp = label[i]
    order = np.argsort(comp, kind="stable")
    out_p, out_t = [], []
    for group in np.split(order, np.flatnonzero(np.diff(comp[order])) + 1):
        if len(group) == 1:
            out_p.append(i[group])
            out_t.append(j[group])
            continue
        rows, rinv = np.unique(i[group], return_inverse=True)
        cols, cinv = np.unique(j[group], return_inverse=True)
        big = 2.0 * d[group].sum() + 1.0
        cost = np.full((len(rows), len(cols)), big)
        cost[rinv, cinv] = d[group]
        rr, cc = linear_sum_assignment(cost)
        keep = cost[rr, cc] < big
        out_p.append(rows[rr[keep]])
        out_t.append(cols[cc[keep]])
    if not out_p:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_p), np.concatenate(out_t)


def _dense_cost(pred: np.ndarray, true: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, float]:
    from scipy.spatial.distance import cdist

    d = cdist(pred, true)
    gate = d <= r
    big = 2.0 * d[gate].sum() + 1.0
    np.putmask(d, ~gate, big)  # in place: one N x M float64 matrix, not two
    return d, gate, big


def run_scipy_dense(pred: np.ndarray, true: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    cost, gate, _ = _dense_cost(pred, true, r)
    rows, cols = linear_sum_assignment(cost)
    keep = gate[rows, cols]
    return rows[keep], cols[keep]


def run_lap_dense(pred: np.ndarray, true: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    import lap

    cost, gate, _ = _dense_cost(pred, true, r)
    _, x, _ = lap.lapjv(cost, extend_cost=cost.shape[0] != cost.shape[1])
    rows = np.flatnonzero(x >= 0)
    cols = x[rows]
    keep = gate[rows, cols]
    return rows[keep], cols[keep].astype(np.int64)


RUNNERS: dict[str, Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]] = {
    "micronet": run_micronet,
    "python": run_python,
    "scipy_dense": run_scipy_dense,
    "lap_dense": run_lap_dense,
}


def lap_available() -> bool:
    try:
        import lap  # noqa: F401
    except ImportError:
        return False
    return True


# --- one measurement, in its own process ---------------------------------------------


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def worker(method: str, n: int, seed: int, repeats: int, budget_s: float) -> dict:
    pred, true = make_case(n, seed)
    run = RUNNERS[method]
    run(pred[:50], true[:50], RADIUS)  # import the method's modules outside the measurement
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        rss_before = _proc_status_kib("VmRSS")
        memory = True
    except OSError:
        memory = False
    times = []
    t0 = time.perf_counter()
    pred_idx, true_idx = run(pred, true, RADIUS)
    times.append(time.perf_counter() - t0)
    peak_mib = (_proc_status_kib("VmHWM") - rss_before) / 1024.0 if memory else None
    spent = times[0]
    while len(times) < repeats and spent + times[0] < budget_s:
        t0 = time.perf_counter()
        run(pred, true, RADIUS)
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    delta = pred[pred_idx] - true[true_idx]
    dist = np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])
    return {
        "method": method,
        "n": n,
        "n_pred": len(pred),
        "n_true": len(true),
        "best_s": min(times),
        "times_s": times,
        "peak_rss_mib": peak_mib,
        "matched": len(pred_idx),
        "total_distance": float(dist.sum()),
        "unique": bool(len(np.unique(pred_idx)) == len(pred_idx) == len(np.unique(true_idx))),
        "within_radius": bool(np.all(dist <= RADIUS)),
    }


def measure(method: str, n: int, seed: int, repeats: int, budget_s: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(seed), str(repeats), str(budget_s)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} at N={n} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------


def software() -> dict:
    """Versions of the libraries compared (the machine itself: ``_common.run_machine``)."""
    import scipy

    info = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__, "platform": platform.platform()}
    if lap_available():
        import lap

        info["lap"] = getattr(lap, "__version__", "?")
    return info


def check_agreement(rows: list[dict]) -> list[str]:
    problems = []
    for n in sorted({r["n"] for r in rows}):
        at_n = [r for r in rows if r["n"] == n]
        ref = next(r for r in at_n if r["method"] == "micronet")
        for r in at_n:
            if not (r["unique"] and r["within_radius"]):
                problems.append(f"N={n} {r['method']}: a point matched twice or a pair beyond the radius")
            same = r["matched"] == ref["matched"] and math.isclose(
                r["total_distance"], ref["total_distance"], rel_tol=1e-9
            )
            if not same:
                problems.append(
                    f"N={n} {r['method']}: {r['matched']} pairs, total {r['total_distance']!r} vs micronet "
                    f"{ref['matched']} pairs, total {ref['total_distance']!r}"
                )
    return problems


def markdown(rows: list[dict], info: dict, args: argparse.Namespace, problems: list[str]) -> str:
    sizes = sorted({r["n"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    get = {(r["method"], r["n"]): r for r in rows}

    def cell(method: str, n: int, key: str, fmt: str) -> str:
        r = get.get((method, n))
        return "—" if r is None or r[key] is None else format(r[key] * (1e3 if key == "best_s" else 1), fmt)

    def ratio(method: str, n: int) -> str:
        r, ref = get.get((method, n)), get.get(("micronet", n))
        return "—" if r is None or ref is None else f"{r['best_s'] / ref['best_s']:,.0f}×"

    lines = [
        f"Realistic density (one nucleus per {AREA_PER_NUCLEUS:g} px², square field), detections = annotations "
        f"jittered by σ = {JITTER_SIGMA} px per axis (mean 2 px), {MISSING:.0%} missing, {EXTRA:.0%} extra false "
        f"positives; radius {RADIUS:g} px. Python "
        f"{info['python']}, numpy {info['numpy']}, scipy {info['scipy']}"
        + (f", lap {info['lap']}" if "lap" in info else "")
        + ".",
        "",
        f"Ratios first (time of each method / micronet's, same run), then the times on this machine: best of up to "
        f"{args.repeats} calls, in milliseconds. Dense methods only up to N = {DENSE_MAX_N:,}.",
        "",
        "| N | matched | " + " | ".join(f"{LABELS[m]} / micronet" for m in methods if m != "micronet") + " | "
        + " | ".join(f"{LABELS[m]} (ms)" for m in methods) + " |",
        "|---:|---:|" + "---:|" * (2 * len(methods) - 1),
    ]
    for n in sizes:
        lines.append(
            f"| {n:,} | {get[('micronet', n)]['matched']:,} | "
            + " | ".join(ratio(m, n) for m in methods if m != "micronet")
            + " | "
            + " | ".join(cell(m, n, "best_s", ",.2f") for m in methods)
            + " |"
        )
    lines += [
        "",
        "Peak memory: rise of the process's peak resident set size (VmHWM, reset before the call) over its "
        "resident size before the first call, in MiB; counts native allocations too. Small values are at the "
        "resolution of the allocator (memory it already held is reused).",
        "",
        "| N | " + " | ".join(f"{LABELS[m]} (MiB)" for m in methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    for n in sizes:
        lines.append(f"| {n:,} | " + " | ".join(cell(m, n, "peak_rss_mib", ",.1f") for m in methods) + " |")
    lines.append("")
    if problems:
        lines += ["**Disagreement between methods:**", "", *[f"- {p}" for p in problems], ""]
    else:
        lines += ["All methods found matchings of the same size and total distance (relative 1e-9) at every N.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1,000 and 2,000 only, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="calls per measurement, best taken (default 5; quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for matcher.json and matcher.md")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, n, seed, repeats, budget = args.worker
        print(json.dumps(worker(method, int(n), int(seed), int(repeats), float(budget))))
        return 0

    from tqdm import tqdm

    args.repeats = args.repeats or (2 if args.quick else 5)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    methods = [m for m in METHODS if m != "lap_dense" or lap_available()]
    if "lap_dense" not in methods:
        print("lap is not importable: skipping lap.lapjv", file=sys.stderr)
    tasks = [(m, n) for n in sizes for m in methods if n <= DENSE_MAX_N or m in ("micronet", "python")]
    rows = []
    with tqdm(tasks, desc="matcher benchmark", unit="run") as bar:
        for method, n in bar:
            bar.set_postfix_str(f"{method} N={n:,}")
            # dense methods: fewer calls when each takes long
            rows.append(measure(method, n, args.seed, args.repeats, budget_s=60.0))
    problems = check_agreement(rows)
    info = software()
    text = markdown(rows, info, args, problems)
    n_ref = 10_000 if 10_000 in sizes else max(sizes)
    ref = {r["method"]: r for r in rows if r["n"] == n_ref}
    speedups = {
        f"{m}_over_micronet": ref[m]["best_s"] / ref["micronet"]["best_s"] for m in ref if m != "micronet"
    }
    payload = {
        "benchmark": "gated point matching",
        "config": {
            "radius_px": RADIUS,
            "area_per_nucleus_px2": AREA_PER_NUCLEUS,
            "jitter_sigma_px_per_axis": JITTER_SIGMA,
            "missing_fraction": MISSING,
            "extra_false_positive_fraction": EXTRA,
            "sizes": list(sizes),
            "dense_max_n": DENSE_MAX_N,
            "repeats": args.repeats,
            "seed": args.seed,
            "quick": args.quick,
        },
        "timing": "best of up to `repeats` calls (fewer when a call takes long), each (method, N) in a fresh process",
        "memory": "peak_rss_mib: rise of VmHWM (reset via /proc/self/clear_refs) over VmRSS before the first call",
        "machine": run_machine(),
        "software": info,
        "results": rows,
        f"speedup_at_{n_ref}": speedups,
        "agree": not problems,
        "problems": problems,
    }
    write_results("matcher", payload, text.strip(), folder=args.out)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
