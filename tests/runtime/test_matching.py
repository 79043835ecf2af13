"""The gated matcher against scipy's Hungarian method on the dense matrix, known answers,
and the argument checks of micronet.runtime.evaluation.matching."""

from __future__ import annotations

import doctest
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from micronet.runtime import _native
from micronet.runtime.evaluation import matching
from micronet.runtime.evaluation.matching import (
    PointMetrics,
    evaluate_points,
    match_points,
)
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _distances(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    # the arithmetic the core uses for its radius test: sqrt(dx*dx + dy*dy) in float64
    dx = pred[:, None, 0] - true[None, :, 0]
    dy = pred[:, None, 1] - true[None, :, 1]
    return np.sqrt(dx * dx + dy * dy)


def dense_reference(pred, true, radius) -> tuple[int, float]:
    """Matched count and total distance from scipy's linear_sum_assignment on the dense
    matrix, out-of-radius pairs at a prohibitive cost, then dropped."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    if len(pred) == 0 or len(true) == 0:
        return 0, 0.0
    d = _distances(pred, true)
    gate = d <= radius
    big = 2.0 * d[gate].sum() + 1.0  # above any sum of edge costs: cardinality first
    rows, cols = linear_sum_assignment(np.where(gate, d, big))
    keep = gate[rows, cols]
    return int(keep.sum()), float(d[rows[keep], cols[keep]].sum())


def component_reference(pred: np.ndarray, true: np.ndarray, radius: float) -> tuple[int, float]:
    """The same optimum for large sets: within-radius pairs by k-d tree, components by
    scipy.sparse.csgraph, a dense Hungarian per component."""
    n, m = len(pred), len(true)
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(true), radius, output_type="ndarray")
    i, j = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    dpair = pairs["v"]
    graph = coo_matrix((np.ones(len(i)), (i, n + j)), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    count, total = 0, 0.0
    comp = label[i]
    order = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[order])) + 1
    for group in np.split(order, bounds):
        if len(group) == 0:
            continue
        rows, rinv = np.unique(i[group], return_inverse=True)
        cols, cinv = np.unique(j[group], return_inverse=True)
        big = 2.0 * dpair[group].sum() + 1.0
        cost = np.full((len(rows), len(cols)), big)
        cost[rinv, cinv] = dpair[group]
        r, c = linear_sum_assignment(cost)
        keep = cost[r, c] < big
        count += int(keep.sum())
        total += float(cost[r[keep], c[keep]].sum())
    return count, total


def assert_optimal(pred, true, radius, expected=None) -> None:
    pred_idx, true_idx = match_points(pred, true, radius)
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(true, dtype=np.float64).reshape(-1, 2)
    assert pred_idx.dtype == np.int64 and true_idx.dtype == np.int64
    assert len(pred_idx) == len(true_idx)
    assert len(np.unique(pred_idx)) == len(pred_idx), "a detection matched twice"
    assert len(np.unique(true_idx)) == len(true_idx), "an annotation matched twice"
    assert np.all(np.diff(pred_idx) > 0), "pairs not sorted by pred index"
    delta = p[pred_idx] - t[true_idx]
    d = np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])
    assert np.all(d <= radius), "a pair beyond the radius"
    count, total = dense_reference(p, t, radius) if expected is None else expected
    assert len(pred_idx) == count
    assert math.isclose(d.sum(), total, rel_tol=1e-9, abs_tol=1e-9)


# --- property tests against scipy ------------------------------------------------------

RADII = st.sampled_from([0.0, 0.5, 1.0, math.sqrt(2.0), 2.0, 3.0, 6.0, 10.0])


@st.composite
def uniform_sets(draw):
    coord = st.floats(0.0, 40.0, allow_nan=False, allow_infinity=False)
    pred = draw(st.lists(st.tuples(coord, coord), max_size=30))
    true = draw(st.lists(st.tuples(coord, coord), max_size=30))
    return pred, true, draw(RADII)


@st.composite
def lattice_sets(draw):
    # integer points: exact ties, distances exactly equal to the radius, duplicates
    coord = st.integers(0, 6)
    pred = draw(st.lists(st.tuples(coord, coord), max_size=25))
    true = draw(st.lists(st.tuples(coord, coord), max_size=25))
    return pred, true, draw(RADII)


@st.composite
def clustered_sets(draw):
    # a few tight clusters: large components, many competing pairs
    centres = draw(st.lists(st.tuples(st.floats(0, 30), st.floats(0, 30)), min_size=1, max_size=3))
    offset = st.floats(-2.5, 2.5, allow_nan=False)

    def points():
        items = draw(st.lists(st.tuples(st.integers(0, len(centres) - 1), offset, offset), max_size=30))
        return [(centres[c][0] + dx, centres[c][1] + dy) for c, dx, dy in items]

    return points(), points(), draw(st.sampled_from([1.0, 2.0, 3.0, 5.0]))


@st.composite
def duplicated_sets(draw):
    # both sides drawn from a small pool of positions: many coincident points
    pool = draw(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=4))
    pick = st.integers(0, len(pool) - 1)
    pred = [pool[k] for k in draw(st.lists(pick, max_size=20))]
    true = [pool[k] for k in draw(st.lists(pick, max_size=20))]
    return pred, true, draw(RADII)


@settings(max_examples=300, deadline=None)
@given(uniform_sets())
def test_matches_dense_hungarian_on_uniform_points(case):
    assert_optimal(*case)


@settings(max_examples=300, deadline=None)
@given(lattice_sets())
def test_matches_dense_hungarian_on_lattice_points_with_ties(case):
    assert_optimal(*case)


@settings(max_examples=250, deadline=None)
@given(clustered_sets())
def test_matches_dense_hungarian_on_dense_clusters(case):
    assert_optimal(*case)


@settings(max_examples=200, deadline=None)
@given(duplicated_sets())
def test_matches_dense_hungarian_on_duplicated_points(case):
    assert_optimal(*case)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-6, 1e-3, 1.0, 1e4]))
def test_optimum_is_scale_invariant(seed, scale):
    # Tiny or huge coordinates: the prohibitive cost must not swamp the distances.
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 20, (25, 2)) * scale
    true = rng.uniform(0, 20, (25, 2)) * scale
    assert_optimal(pred, true, 4.0 * scale)


def test_matches_scipy_on_a_realistic_field():
    # one nucleus per ~400 px^2, detections jittered by ~2 px, 10% missed, 10% spurious
    rng = np.random.default_rng(7)
    n = 3000
    side = math.sqrt(n * 400.0)
    true = rng.uniform(0, side, (n, 2))
    found = (true + rng.normal(0, 2.0, true.shape))[rng.random(n) > 0.1]
    pred = np.vstack([found, rng.uniform(0, side, (n // 10, 2))])
    assert_optimal(pred, true, 6.0, expected=component_reference(pred, true, 6.0))


def test_far_outliers_do_not_lose_pairs():
    # Outliers stretch the bounding box far beyond a flat grid's budget: the sparse cell
    # list takes over and must find the same pairs.
    rng = np.random.default_rng(3)
    true = rng.uniform(0, 300, (400, 2))
    pred = true + rng.normal(0, 2.0, true.shape)
    true = np.vstack([true, [[1e9, -1e9], [-5e8, 7e8]]])
    pred = np.vstack([pred, [[1e9 + 1.0, -1e9], [3e8, 3e8]]])
    assert_optimal(pred, true, 6.0, expected=component_reference(pred, true, 6.0))


def test_very_sparse_points_in_a_huge_field():
    rng = np.random.default_rng(4)
    true = rng.uniform(0, 1e7, (300, 2))
    pred = np.vstack([true[:200] + rng.normal(0, 1.0, (200, 2)), rng.uniform(0, 1e7, (50, 2))])
    assert_optimal(pred, true, 3.0, expected=component_reference(pred, true, 3.0))


# --- known answers ---------------------------------------------------------------------


def test_cardinality_beats_distance():
    # Matching the coincident pair (distance 0) alone would leave two points unmatched;
    # the optimum matches both pairs at the full radius instead.
    pred_idx, true_idx = match_points([[0, 0], [6, 0]], [[6, 0], [12, 0]], radius=6)
    assert pred_idx.tolist() == [0, 1] and true_idx.tolist() == [0, 1]


def test_minimal_total_distance_not_greedy():
    # Greedy nearest-first takes (1, 0) at 0.1 then (0, 1) at 2.0: total 2.1 > 1.9.
    pred_idx, true_idx = match_points([[0, 0], [1, 0]], [[0.9, 0], [2, 0]], radius=5)
    assert pred_idx.tolist() == [0, 1] and true_idx.tolist() == [0, 1]


def test_radius_is_inclusive():
    assert match_points([[0, 0]], [[3, 4]], radius=5)[0].tolist() == [0]
    assert match_points([[0, 0]], [[3, 4]], radius=np.nextafter(5.0, 0.0))[0].tolist() == []


def test_radius_zero_matches_coincident_points_only():
    pred_idx, true_idx = match_points([[1, 1], [2, 2], [2, 2]], [[2, 2], [1, 1.5]], radius=0)
    assert pred_idx.tolist() == [1] and true_idx.tolist() == [0]


def test_pairs_come_sorted_by_pred_index():
    true = [[100, 0], [0, 0], [50, 0]]
    pred = [[49, 0], [101, 0], [1, 0]]
    pred_idx, true_idx = match_points(pred, true, radius=3)
    assert pred_idx.tolist() == [0, 1, 2] and true_idx.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    ("pred", "true"),
    [
        (np.empty((0, 2)), np.empty((0, 2))),
        ([], [[1.0, 2.0]]),
        ([[1.0, 2.0]], []),
        (np.array([]), np.empty((0, 2), np.float32)),
    ],
)
def test_empty_inputs_match_nothing(pred, true):
    pred_idx, true_idx = match_points(pred, true, radius=6)
    assert pred_idx.shape == (0,) and true_idx.shape == (0,)
    assert pred_idx.dtype == np.int64 and true_idx.dtype == np.int64


def test_float32_and_integer_points_are_accepted():
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 100, (50, 2)).astype(np.float32)
    pred = (true + rng.normal(0, 2, true.shape)).astype(np.float32)
    expected = match_points(pred.astype(np.float64), true.astype(np.float64), 6)
    got = match_points(pred, true, 6)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert match_points(np.array([[1, 2]], np.int32), [[1, 3]], 1)[0].tolist() == [0]


def test_concurrent_calls_agree():
    # The binding releases the GIL; the core keeps no shared state.
    rng = np.random.default_rng(2)
    true = rng.uniform(0, 1000, (2000, 2))
    pred = true + rng.normal(0, 2, true.shape)
    expected = match_points(pred, true, 6)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: match_points(pred, true, 6), range(6)))
    for pred_idx, true_idx in results:
        assert np.array_equal(pred_idx, expected[0]) and np.array_equal(true_idx, expected[1])


def test_evaluate_points_known_answer():
    m = evaluate_points([[10, 10], [14, 10], [50, 50]], [[12, 10], [19, 10]], radius=6)
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)
    assert m.precision == pytest.approx(2 / 3) and m.recall == 1.0 and m.f1 == pytest.approx(0.8)
    assert m.mean_distance == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("pred", "true", "expected"),
    [
        ([], [], (1.0, 1.0, 1.0)),  # nothing to find, nothing claimed
        ([], [[1, 1]], (1.0, 0.0, 0.0)),  # nothing claimed, everything missed
        ([[1, 1]], [], (0.0, 1.0, 0.0)),  # nothing to find, one false claim
    ],
)
def test_empty_side_conventions(pred, true, expected):
    m = evaluate_points(pred, true, radius=6)
    assert (m.precision, m.recall, m.f1) == expected
    assert math.isnan(m.mean_distance)
    assert m.to_dict()["mean_distance"] is None


def test_point_metrics_is_frozen():
    m = PointMetrics.from_counts(1, 0, 0, 2.0)
    with pytest.raises(AttributeError):
        m.tp = 2  # type: ignore[misc]


def test_docstring_examples_run():
    assert doctest.testmod(matching).failed == 0


# --- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "shape"),
    [(np.zeros(3), "(3,)"), (np.zeros((3, 3)), "(3, 3)"), (np.zeros((2, 2, 2)), "(2, 2, 2)"), (np.float64(1), "()")],
)
def test_wrong_shapes_name_the_argument(bad, shape):
    msg = f"pred_xy: expected an (N, 2) array of points, got shape {shape}"
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        match_points(bad, [[0, 0]], 6)
    with pytest.raises(ValueError, match="true_xy: expected an"):
        evaluate_points([[0, 0]], bad, 6)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_points_are_rejected(value):
    with pytest.raises(ValueError, match=r"pred_xy: expected finite coordinates, got point 1"):
        match_points([[0, 0], [value, 1]], [[0, 0]], 6)
    with pytest.raises(ValueError, match=r"true_xy: expected finite"):
        match_points([[0, 0]], [[1, value]], 6)


@pytest.mark.parametrize("radius", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_radius_is_rejected(radius):
    with pytest.raises(ValueError, match="radius: expected a finite number of pixels >= 0"):
        match_points([[0, 0]], [[0, 0]], radius)


@pytest.mark.parametrize("radius", ["6", True, None, [6]])
def test_non_numeric_radius_is_a_type_error(radius):
    with pytest.raises(TypeError, match="radius"):
        match_points([[0, 0]], [[0, 0]], radius)


def test_non_numeric_points_are_a_type_error():
    with pytest.raises(TypeError, match="pred_xy: expected real"):
        match_points([["a", "b"]], [[0, 0]], 6)
    with pytest.raises(TypeError, match="true_xy: expected real"):
        match_points([[0, 0]], np.zeros((1, 2), dtype=bool), 6)


def test_native_binding_checks_at_its_own_surface():
    with pytest.raises(ValueError, match=r"pred_xy: expected an \(N, 2\) array of points, got shape \(4,\)"):
        _native.match_points(np.zeros(4), np.zeros((1, 2)), 6.0)
    with pytest.raises(ValueError, match="radius must be a finite number"):
        _native.match_points(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)
    with pytest.raises(ValueError, match="finite"):
        _native.match_points(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), 6.0)
    with pytest.raises(ValueError, match="1e150"):
        match_points([[1e200, 0.0]], [[0.0, 0.0]], 6.0)
    # dtype and layout are forced: a strided float32 view works
    pred = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert _native.match_points(pred, pred.astype(np.float64), 0.0)[0].tolist() == [0, 1, 2]
