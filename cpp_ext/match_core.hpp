// Exact gated assignment of detections to annotated points, as the paper scores them.
// Pure C++17: plain arrays and sizes in, a status code out; no Python, no exceptions out.
//
// A detection may match an annotation only within `radius` (Euclidean, inclusive,
// computed as sqrt(dx*dx + dy*dy) in double). Among those pairs the matching has
// maximum cardinality and, among those, minimal total distance: the optimum that
// scipy.optimize.linear_sum_assignment finds on the dense matrix with out-of-radius
// pairs at a prohibitive cost (then dropped). The within-radius pairs form small
// independent groups, so each group is solved on its own: time and memory grow
// linearly with the number of points at realistic densities.
#pragma once

#include <cstdint>
#include <vector>

namespace micronet {

enum class MatchStatus : int {
    kOk = 0,
    kBadSize = 1,      // a negative count, a null pointer with a positive count, or > 2^30 points
    kBadRadius = 2,    // radius negative, NaN or infinite
    kNonFinite = 3,    // a coordinate is NaN or infinite
    kOutOfRange = 4,   // |coordinate| or radius above 1e150, where squared distances overflow
    kBadPrefix = 5,    // prefix lengths not nondecreasing within [0, n_pred]
    kNoMemory = 6,     // an allocation failed
};

// A short English description of `status` (static storage).
const char* match_status_message(MatchStatus status) noexcept;

struct MatchPairs {
    std::vector<std::int64_t> pred_idx;  // ascending
    std::vector<std::int64_t> true_idx;  // true_idx[k] is matched to pred_idx[k]
    double total_distance = 0.0;         // sum of the matched pairs' distances
};

// pred_xy: n_pred x 2 row-major (x, y); true_xy: n_true x 2. On kOk, `out` holds the
// optimal matching sorted by pred index; otherwise `out` is empty.
MatchStatus match_points(const double* pred_xy, std::int64_t n_pred, const double* true_xy,
                         std::int64_t n_true, double radius, MatchPairs& out) noexcept;

// Threshold sweeps: the rows of pred_xy are in the order detections are admitted
// (descending score). For each q, writes the size and total distance of the optimal
// matching of pred_xy[0 : prefix_len[q]] against all of true_xy, exactly as
// match_points on that prefix would give. prefix_len must be nondecreasing within
// [0, n_pred]. The gating graph is built once and each group is solved once, adding its
// detections one by one (the Hungarian method's partial solutions are optimal for the
// rows added so far), so a sweep costs about one match_points call.
MatchStatus match_prefix_sweep(const double* pred_xy, std::int64_t n_pred, const double* true_xy,
                               std::int64_t n_true, double radius, const std::int64_t* prefix_len,
                               std::int64_t n_prefix, std::int64_t* tp_out, double* distance_out) noexcept;

}  // namespace micronet
