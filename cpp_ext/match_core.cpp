// Exact gated assignment: see match_core.hpp for the contract.
//
// 1. Gate: bin the true points on a uniform grid of cells at least `radius` wide, so
//    each detection only measures the points in the 3 x 3 cells around its own.
// 2. Group: the within-radius pairs split into connected components (union-find); an
//    optimal matching of the whole is the union of optimal matchings of the components.
// 3. Solve each component exactly. One edge is trivial, one detection (or one
//    annotation) takes its nearest partner; anything larger runs the Hungarian method on
//    the component's small dense matrix, non-edges at a cost BIG larger than the sum of
//    all the component's edge costs, so every extra matched pair outweighs any saving in
//    distance (maximum cardinality first, then minimal total distance). Assignments to
//    non-edges are dropped.
#include "match_core.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <new>
#include <numeric>
#include <stdexcept>

namespace micronet {

const char* match_status_message(MatchStatus status) noexcept {
    switch (status) {
        case MatchStatus::kOk:
            return "ok";
        case MatchStatus::kBadSize:
            return "point arrays must have a count >= 0 and at most 2^30 points";
        case MatchStatus::kBadRadius:
            return "radius must be a finite number >= 0";
        case MatchStatus::kNonFinite:
            return "point coordinates must be finite (no NaN or infinity)";
        case MatchStatus::kOutOfRange:
            return "point coordinates and radius must lie within +-1e150";
        case MatchStatus::kBadPrefix:
            return "prefix lengths must be nondecreasing and within [0, number of detections]";
        case MatchStatus::kNoMemory:
            return "out of memory while matching points";
    }
    return "unknown match status";
}

namespace {

using Index = std::int32_t;

constexpr double kMaxMagnitude = 1e150;  // squares and sums of squares stay finite below this
constexpr std::int64_t kMaxPoints = std::int64_t(1) << 30;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Edge {
    Index pred;
    Index truth;
    double dist;
};

MatchStatus check_points(const double* xy, std::int64_t n) {
    if (n < 0 || n > kMaxPoints || (n > 0 && xy == nullptr)) return MatchStatus::kBadSize;
    for (std::int64_t i = 0; i < 2 * n; ++i) {
        const double v = xy[i];
        if (!std::isfinite(v)) return MatchStatus::kNonFinite;
        if (std::fabs(v) > kMaxMagnitude) return MatchStatus::kOutOfRange;
    }
    return MatchStatus::kOk;
}

MatchStatus check_inputs(const double* pred_xy, std::int64_t n_pred, const double* true_xy,
                         std::int64_t n_true, double radius) {
    if (!(radius >= 0.0) || std::isinf(radius)) return MatchStatus::kBadRadius;  // NaN fails >=
    if (radius > kMaxMagnitude) return MatchStatus::kOutOfRange;
    const MatchStatus status = check_points(pred_xy, n_pred);
    if (status != MatchStatus::kOk) return status;
    return check_points(true_xy, n_true);
}

// All (pred, true) pairs within `radius`, grouped by pred index ascending.
void gate_pairs(const double* pred, Index n, const double* truth, Index m, double radius,
                std::vector<Edge>& edges) {
    edges.clear();
    if (n == 0 || m == 0) return;
    double x0 = kInf, y0 = kInf, x1 = -kInf, y1 = -kInf;
    for (Index j = 0; j < m; ++j) {
        x0 = std::min(x0, truth[2 * j]);
        x1 = std::max(x1, truth[2 * j]);
        y0 = std::min(y0, truth[2 * j + 1]);
        y1 = std::max(y1, truth[2 * j + 1]);
    }
    const double width = x1 - x0, height = y1 - y0;
    // Cells a hair wider than the radius, and at most 2^32 per axis: the rounding in
    // (x - x0) / cell then stays far below the slack, so two points within the radius
    // never land more than one cell apart. Any cell >= radius finds every pair; radius 0
    // (coincident points only) just needs some positive cell.
    constexpr double kMaxCellsPerAxis = 4294967296.0;
    const double base = (radius > 0.0 ? radius : 1.0) * (1.0 + 1e-5);
    double cell = std::max({base, width / kMaxCellsPerAxis, height / kMaxCellsPerAxis});
    auto count_cells = [&](double c) { return (std::floor(width / c) + 1.0) * (std::floor(height / c) + 1.0); };
    // A flat grid (counting sort, O(1) lookups) while it stays linear in m; sparse or
    // outlier-stretched point sets fall back to a sorted cell list (binary search).
    const double flat_limit = 8.0 * static_cast<double>(m) + 4096.0;
    bool flat = count_cells(cell) <= flat_limit;
    if (!flat) {
        double grown = cell * std::sqrt(count_cells(cell) / flat_limit);
        while (count_cells(grown) > flat_limit) grown *= 1.05;
        if (grown <= 4.0 * base) {  // a few points per cell at most: still cheap to scan
            cell = grown;
            flat = true;
        }
    }
    const std::int64_t nx = static_cast<std::int64_t>(std::floor(width / cell)) + 1;
    const std::int64_t ny = static_cast<std::int64_t>(std::floor(height / cell)) + 1;

    std::vector<std::int64_t> cx(m), cy(m);
    for (Index j = 0; j < m; ++j) {
        cx[j] = std::min<std::int64_t>(static_cast<std::int64_t>((truth[2 * j] - x0) / cell), nx - 1);
        cy[j] = std::min<std::int64_t>(static_cast<std::int64_t>((truth[2 * j + 1] - y0) / cell), ny - 1);
    }
    // The true points in cell order, coordinates copied alongside for locality.
    std::vector<Index> order(m);
    std::vector<std::size_t> start;  // flat: first position of each cell, plus the end
    struct Key {
        std::int64_t row, col;
        bool operator<(const Key& o) const { return row < o.row || (row == o.row && col < o.col); }
    };
    std::vector<Key> keys;  // sparse: the sorted cell of each position
    if (flat) {
        const std::size_t n_cells = static_cast<std::size_t>(nx * ny);
        start.assign(n_cells + 1, 0);
        for (Index j = 0; j < m; ++j) ++start[static_cast<std::size_t>(cy[j] * nx + cx[j]) + 1];
        for (std::size_t c = 0; c < n_cells; ++c) start[c + 1] += start[c];
        std::vector<std::size_t> fill(start.begin(), start.end() - 1);
        for (Index j = 0; j < m; ++j) order[fill[static_cast<std::size_t>(cy[j] * nx + cx[j])]++] = j;
    } else {
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](Index a, Index b) {
            return cy[a] < cy[b] || (cy[a] == cy[b] && cx[a] < cx[b]);
        });
        keys.resize(m);
        for (Index k = 0; k < m; ++k) keys[k] = Key{cy[order[k]], cx[order[k]]};
    }
    std::vector<double> sx(m), sy(m);
    for (Index k = 0; k < m; ++k) {
        sx[k] = truth[2 * order[k]];
        sy[k] = truth[2 * order[k] + 1];
    }

    edges.reserve(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
        const double px = pred[2 * i], py = pred[2 * i + 1];
        const double fx = (px - x0) / cell, fy = (py - y0) / cell;
        // Farther than one cell outside the occupied cells: no neighbour can be in range.
        if (!(fx >= -1.0 && fx < static_cast<double>(nx) + 1.0 && fy >= -1.0 && fy < static_cast<double>(ny) + 1.0))
            continue;
        const std::int64_t qx = static_cast<std::int64_t>(std::floor(fx));
        const std::int64_t qy = static_cast<std::int64_t>(std::floor(fy));
        const std::int64_t c0 = std::max<std::int64_t>(qx - 1, 0), c1 = std::min<std::int64_t>(qx + 1, nx - 1);
        const std::int64_t r0 = std::max<std::int64_t>(qy - 1, 0), r1 = std::min<std::int64_t>(qy + 1, ny - 1);
        for (std::int64_t row = r0; row <= r1; ++row) {
            std::size_t b, e;  // the three cells of a row are adjacent in cell order
            if (flat) {
                b = start[static_cast<std::size_t>(row * nx + c0)];
                e = start[static_cast<std::size_t>(row * nx + c1) + 1];
            } else {
                b = static_cast<std::size_t>(std::lower_bound(keys.begin(), keys.end(), Key{row, c0}) - keys.begin());
                e = static_cast<std::size_t>(std::upper_bound(keys.begin(), keys.end(), Key{row, c1}) - keys.begin());
            }
            for (std::size_t k = b; k < e; ++k) {
                const double dx = px - sx[k], dy = py - sy[k];
                const double d = std::sqrt(dx * dx + dy * dy);
                if (d <= radius) edges.push_back(Edge{i, order[k], d});
            }
        }
    }
}

Index find_root(std::vector<Index>& parent, Index a) {
    while (parent[a] != a) {
        parent[a] = parent[parent[a]];  // path halving
        a = parent[a];
    }
    return a;
}

// Reorders `edges` (grouped by pred ascending) by connected component of the bipartite
// graph, keeping the pred order inside each; comp_start receives n_comp + 1 offsets.
void group_components(Index n, Index m, std::vector<Edge>& edges, std::vector<std::size_t>& comp_start) {
    comp_start.assign(1, 0);
    if (edges.empty()) return;
    std::vector<Index> parent(static_cast<std::size_t>(n) + m), size(static_cast<std::size_t>(n) + m, 1);
    std::iota(parent.begin(), parent.end(), 0);
    for (const Edge& e : edges) {
        Index a = find_root(parent, e.pred), b = find_root(parent, n + e.truth);
        if (a == b) continue;
        if (size[a] < size[b]) std::swap(a, b);
        parent[b] = a;
        size[a] += size[b];
    }
    // Number the components in order of their first edge; `size` is reused as root -> id.
    std::fill(size.begin(), size.end(), -1);
    std::vector<Index> comp_of_edge(edges.size());
    Index n_comp = 0;
    for (std::size_t k = 0; k < edges.size(); ++k) {
        const Index root = find_root(parent, edges[k].pred);
        if (size[root] < 0) size[root] = n_comp++;
        comp_of_edge[k] = size[root];
        if (comp_start.size() <= static_cast<std::size_t>(size[root]) + 1) comp_start.push_back(0);
        ++comp_start[static_cast<std::size_t>(size[root]) + 1];
    }
    for (Index c = 0; c < n_comp; ++c) comp_start[c + 1] += comp_start[c];
    std::vector<Edge> grouped(edges.size());
    std::vector<std::size_t> fill(comp_start.begin(), comp_start.end() - 1);
    for (std::size_t k = 0; k < edges.size(); ++k) grouped[fill[comp_of_edge[k]]++] = edges[k];
    edges.swap(grouped);
}

// Shortest-augmenting-path Hungarian method on a dense rows x cols cost matrix
// (row-major), rows <= cols, rows added one at a time. After each row the assignment of
// the rows so far is optimal for them alone: the dual potentials stay feasible and free
// columns keep v = 0. Buffers are reused across calls.
class Hungarian {
public:
    template <class OnRow>
    void solve(const double* cost, Index rows, Index cols, OnRow&& on_row) {
        // 1-based rows and columns; column 0 is the root of each search.
        u_.assign(static_cast<std::size_t>(rows) + 1, 0.0);
        v_.assign(static_cast<std::size_t>(cols) + 1, 0.0);
        p_.assign(static_cast<std::size_t>(cols) + 1, 0);
        way_.assign(static_cast<std::size_t>(cols) + 1, 0);
        minv_.resize(static_cast<std::size_t>(cols) + 1);
        used_.resize(static_cast<std::size_t>(cols) + 1);
        for (Index i = 1; i <= rows; ++i) {
            p_[0] = i;
            Index j0 = 0;
            std::fill(minv_.begin(), minv_.end(), kInf);
            std::fill(used_.begin(), used_.end(), char(0));
            do {  // Dijkstra on reduced costs until a free column is reached
                used_[j0] = 1;
                const Index i0 = p_[j0];
                const double* row = cost + static_cast<std::size_t>(i0 - 1) * cols;
                const double ui = u_[i0];
                double delta = kInf;
                Index j1 = 0;
                for (Index j = 1; j <= cols; ++j) {
                    if (used_[j]) continue;
                    const double cur = row[j - 1] - ui - v_[j];
                    if (cur < minv_[j]) {
                        minv_[j] = cur;
                        way_[j] = j0;
                    }
                    if (minv_[j] < delta) {
                        delta = minv_[j];
                        j1 = j;
                    }
                }
                for (Index j = 0; j <= cols; ++j) {
                    if (used_[j]) {
                        u_[p_[j]] += delta;
                        v_[j] -= delta;
                    } else {
                        minv_[j] -= delta;
                    }
                }
                j0 = j1;
            } while (p_[j0] != 0);
            do {  // augment along the shortest path
                const Index j1 = way_[j0];
                p_[j0] = p_[j1];
                j0 = j1;
            } while (j0 != 0);
            on_row(i);
        }
    }

    // Row (1-based) assigned to column j (1-based), 0 when the column is free.
    Index row_of(Index j) const { return p_[static_cast<std::size_t>(j)]; }

private:
    std::vector<double> u_, v_, minv_;
    std::vector<Index> p_, way_;
    std::vector<char> used_;
};

// Per-call scratch, sized once, reused by every component.
struct Workspace {
    explicit Workspace(Index m) : local_true(static_cast<std::size_t>(m), -1) {}

    // Collects the component's nodes: preds ascending (edges come grouped by pred),
    // trues in order of appearance; returns the sum of the edge costs.
    double collect(const Edge* e, std::size_t ne) {
        preds.clear();
        trues.clear();
        double sum = 0.0;
        for (std::size_t k = 0; k < ne; ++k) {
            if (preds.empty() || preds.back() != e[k].pred) preds.push_back(e[k].pred);
            if (local_true[e[k].truth] < 0) {
                local_true[e[k].truth] = static_cast<Index>(trues.size());
                trues.push_back(e[k].truth);
            }
            sum += e[k].dist;
        }
        return sum;
    }

    void release() {
        for (Index t : trues) local_true[t] = -1;
    }

    std::vector<Index> local_true;  // true index -> local column, -1 outside the component
    std::vector<Index> preds, trues;
    std::vector<double> cost;
    Hungarian hungarian;
};

// Cost of a non-edge: above the sum S of all edge costs, so one more matched pair
// always beats any saving in distance. 2S (not S + 1) keeps it on the scale of the
// distances, so the potentials lose no precision when coordinates are tiny.
double prohibitive_cost(double edge_sum) { return edge_sum > 0.0 ? 2.0 * edge_sum : 1.0; }

void solve_component(const Edge* e, std::size_t ne, Workspace& w, std::vector<Index>& match_of_pred,
                     std::vector<double>& dist_of_pred) {
    if (ne == 1) {
        match_of_pred[e->pred] = e->truth;
        dist_of_pred[e->pred] = e->dist;
        return;
    }
    const double sum = w.collect(e, ne);
    const Index np = static_cast<Index>(w.preds.size()), nt = static_cast<Index>(w.trues.size());
    if (np == 1 || nt == 1) {  // a star: only one pair can match, the shortest
        const Edge* best = std::min_element(e, e + ne, [](const Edge& a, const Edge& b) { return a.dist < b.dist; });
        match_of_pred[best->pred] = best->truth;
        dist_of_pred[best->pred] = best->dist;
        w.release();
        return;
    }
    const double big = prohibitive_cost(sum);
    const bool pred_rows = np <= nt;  // the smaller side are the rows
    const Index rows = pred_rows ? np : nt, cols = pred_rows ? nt : np;
    w.cost.assign(static_cast<std::size_t>(rows) * cols, big);
    Index lp = -1;
    for (std::size_t k = 0; k < ne; ++k) {
        if (k == 0 || e[k].pred != e[k - 1].pred) ++lp;
        const Index lt = w.local_true[e[k].truth];
        const Index r = pred_rows ? lp : lt, c = pred_rows ? lt : lp;
        w.cost[static_cast<std::size_t>(r) * cols + c] = e[k].dist;
    }
    w.hungarian.solve(w.cost.data(), rows, cols, [](Index) {});
    for (Index j = 1; j <= cols; ++j) {
        const Index i = w.hungarian.row_of(j);
        if (i == 0) continue;
        const double c = w.cost[static_cast<std::size_t>(i - 1) * cols + (j - 1)];
        if (!(c < big)) continue;  // a non-edge: unmatched
        const Index pred = pred_rows ? w.preds[i - 1] : w.preds[j - 1];
        const Index truth = pred_rows ? w.trues[j - 1] : w.trues[i - 1];
        match_of_pred[pred] = truth;
        dist_of_pred[pred] = c;
    }
    w.release();
}

// Adds the component's share to the difference arrays of a prefix sweep. With t of its
// detections admitted (t = 1..k, preds ascending), the queries concerned are those with
// prefix length L in [preds[t-1] + 1, preds[t]] (the last t: L > preds[k-1]).
void sweep_component(const Edge* e, std::size_t ne, Workspace& w, const std::int64_t* prefix, std::int64_t q,
                     std::vector<std::int64_t>& dtp, std::vector<long double>& ddist) {
    auto first_query_with_length_at_least = [&](std::int64_t len) {
        return static_cast<std::size_t>(std::lower_bound(prefix, prefix + q, len) - prefix);
    };
    const std::int64_t longest = q > 0 ? prefix[q - 1] : 0;
    if (ne == 1) {
        const std::size_t qa = first_query_with_length_at_least(std::int64_t(e->pred) + 1);
        if (qa < static_cast<std::size_t>(q)) {
            dtp[qa] += 1;
            dtp[q] -= 1;
            ddist[qa] += e->dist;
            ddist[q] -= e->dist;
        }
        return;
    }
    const double big = prohibitive_cost(w.collect(e, ne));
    const Index k = static_cast<Index>(w.preds.size()), nt = static_cast<Index>(w.trues.size());
    // Rows are the detections in admission order; dummy columns (all at `big`) let more
    // detections than annotations be added while keeping rows <= cols.
    const Index cols = std::max(k, nt);
    // Detections never admitted by any query need not be added at all.
    const Index rows = static_cast<Index>(std::lower_bound(w.preds.begin(), w.preds.end(), longest) - w.preds.begin());
    if (rows == 0) {
        w.release();
        return;
    }
    w.cost.assign(static_cast<std::size_t>(k) * cols, big);
    Index lp = -1;
    for (std::size_t j = 0; j < ne; ++j) {
        if (j == 0 || e[j].pred != e[j - 1].pred) ++lp;
        w.cost[static_cast<std::size_t>(lp) * cols + w.local_true[e[j].truth]] = e[j].dist;
    }
    w.hungarian.solve(w.cost.data(), rows, cols, [&](Index t) {
        const std::size_t qa = first_query_with_length_at_least(std::int64_t(w.preds[t - 1]) + 1);
        const std::size_t qb = t < k ? first_query_with_length_at_least(std::int64_t(w.preds[t]) + 1)
                                     : static_cast<std::size_t>(q);
        if (qa >= qb) return;
        std::int64_t count = 0;
        long double dist = 0.0L;
        for (Index j = 1; j <= nt; ++j) {  // real columns only
            const Index i = w.hungarian.row_of(j);
            if (i == 0) continue;
            const double c = w.cost[static_cast<std::size_t>(i - 1) * cols + (j - 1)];
            if (c < big) {
                ++count;
                dist += c;
            }
        }
        dtp[qa] += count;
        dtp[qb] -= count;
        ddist[qa] += dist;
        ddist[qb] -= dist;
    });
    w.release();
}

}  // namespace

MatchStatus match_points(const double* pred_xy, std::int64_t n_pred, const double* true_xy, std::int64_t n_true,
                         double radius, MatchPairs& out) noexcept {
    out.pred_idx.clear();
    out.true_idx.clear();
    out.total_distance = 0.0;
    const MatchStatus status = check_inputs(pred_xy, n_pred, true_xy, n_true, radius);
    if (status != MatchStatus::kOk) return status;
    try {
        const Index n = static_cast<Index>(n_pred), m = static_cast<Index>(n_true);
        std::vector<Edge> edges;
        gate_pairs(pred_xy, n, true_xy, m, radius, edges);
        std::vector<std::size_t> comp_start;
        group_components(n, m, edges, comp_start);
        Workspace w(m);
        std::vector<Index> match_of_pred(static_cast<std::size_t>(n), -1);
        std::vector<double> dist_of_pred(static_cast<std::size_t>(n), 0.0);
        for (std::size_t c = 0; c + 1 < comp_start.size(); ++c)
            solve_component(edges.data() + comp_start[c], comp_start[c + 1] - comp_start[c], w, match_of_pred,
                            dist_of_pred);
        const std::size_t k = static_cast<std::size_t>(
            std::count_if(match_of_pred.begin(), match_of_pred.end(), [](Index t) { return t >= 0; }));
        out.pred_idx.reserve(k);
        out.true_idx.reserve(k);
        for (Index i = 0; i < n; ++i) {
            if (match_of_pred[i] < 0) continue;
            out.pred_idx.push_back(i);
            out.true_idx.push_back(match_of_pred[i]);
            out.total_distance += dist_of_pred[i];
        }
    } catch (const std::bad_alloc&) {
        out = MatchPairs{};
        return MatchStatus::kNoMemory;
    } catch (const std::length_error&) {
        out = MatchPairs{};
        return MatchStatus::kNoMemory;
    }
    return MatchStatus::kOk;
}

MatchStatus match_prefix_sweep(const double* pred_xy, std::int64_t n_pred, const double* true_xy,
                               std::int64_t n_true, double radius, const std::int64_t* prefix_len,
                               std::int64_t n_prefix, std::int64_t* tp_out, double* distance_out) noexcept {
    const MatchStatus status = check_inputs(pred_xy, n_pred, true_xy, n_true, radius);
    if (status != MatchStatus::kOk) return status;
    if (n_prefix < 0 || (n_prefix > 0 && (prefix_len == nullptr || tp_out == nullptr || distance_out == nullptr)))
        return MatchStatus::kBadSize;
    for (std::int64_t q = 0; q < n_prefix; ++q) {
        if (prefix_len[q] < 0 || prefix_len[q] > n_pred || (q > 0 && prefix_len[q] < prefix_len[q - 1]))
            return MatchStatus::kBadPrefix;
    }
    try {
        const Index n = static_cast<Index>(n_pred), m = static_cast<Index>(n_true);
        std::vector<Edge> edges;
        gate_pairs(pred_xy, n, true_xy, m, radius, edges);
        std::vector<std::size_t> comp_start;
        group_components(n, m, edges, comp_start);
        Workspace w(m);
        // Each component's count is piecewise constant over the sorted queries: add it
        // through difference arrays rather than query by query.
        std::vector<std::int64_t> dtp(static_cast<std::size_t>(n_prefix) + 1, 0);
        std::vector<long double> ddist(static_cast<std::size_t>(n_prefix) + 1, 0.0L);
        for (std::size_t c = 0; c + 1 < comp_start.size(); ++c)
            sweep_component(edges.data() + comp_start[c], comp_start[c + 1] - comp_start[c], w, prefix_len, n_prefix,
                            dtp, ddist);
        std::int64_t tp = 0;
        long double dist = 0.0L;
        for (std::int64_t q = 0; q < n_prefix; ++q) {
            tp += dtp[q];
            dist += ddist[q];
            tp_out[q] = tp;
            distance_out[q] = tp > 0 ? static_cast<double>(dist) : 0.0;
        }
    } catch (const std::bad_alloc&) {
        return MatchStatus::kNoMemory;
    } catch (const std::length_error&) {
        return MatchStatus::kNoMemory;
    }
    return MatchStatus::kOk;
}

}  // namespace micronet
