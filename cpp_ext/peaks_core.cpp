#include "peaks_core.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>

namespace micronet {

namespace {

// True when no pixel of the clipped window around (y, x) exceeds v.
template <typename T>
inline bool is_window_max(const T* map, std::int64_t height, std::int64_t width, std::int64_t y,
                          std::int64_t x, std::int64_t m, T v) {
    const std::int64_t y0 = std::max<std::int64_t>(0, y - m), y1 = std::min(height - 1, y + m);
    const std::int64_t x0 = std::max<std::int64_t>(0, x - m), x1 = std::min(width - 1, x + m);
    for (std::int64_t yy = y0; yy <= y1; ++yy) {
        const T* row = map + yy * width;
        for (std::int64_t xx = x0; xx <= x1; ++xx) {
            if (row[xx] > v) return false;
        }
    }
    return true;
}

}  // namespace

template <typename T>
PeakStatus peak_candidates(const T* map, std::int64_t height, std::int64_t width, T threshold,
                           std::int64_t min_distance, std::vector<std::int64_t>& out) {
    out.clear();
    if (min_distance < 1) return PeakStatus::kBadDistance;
    if (height < 0 || width < 0) return PeakStatus::kBadShape;
    if (height == 0 || width == 0) return PeakStatus::kOk;
    const std::int64_t m = min_distance;
    T lo = map[0], hi = map[0];
    for (std::int64_t y = 0; y < height; ++y) {
        const T* row = map + y * width;
        for (std::int64_t x = 0; x < width; ++x) {
            const T v = row[x];
            if (!std::isfinite(v)) return PeakStatus::kNonFinite;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
            if (!(v > threshold)) continue;
            // Cheap rejection first: almost every pixel of a smooth map has a larger
            // 4-neighbour, so the full window is scanned for few pixels only.
            if ((x > 0 && row[x - 1] > v) || (x + 1 < width && row[x + 1] > v) ||
                (y > 0 && row[x - width] > v) || (y + 1 < height && row[x + width] > v)) {
                continue;
            }
            if (is_window_max(map, height, width, y, x, m, v)) out.push_back(y * width + x);
        }
    }
    // peak_local_max reports nothing for a map equal to its own maximum filter, which
    // (for a connected grid) is exactly a constant map; a single pixel is the exception.
    if (lo == hi && height * width > 1) out.clear();
    return PeakStatus::kOk;
}

template <typename T>
void select_peaks(const std::int64_t* flat_idx, const T* values, std::size_t n,
                  std::int64_t width, std::int64_t min_distance, std::vector<std::int64_t>& keep) {
    std::vector<std::int64_t> order(n);
    for (std::size_t k = 0; k < n; ++k) order[k] = static_cast<std::int64_t>(k);
    std::stable_sort(order.begin(), order.end(),
                     [values](std::int64_t a, std::int64_t b) { return values[a] > values[b]; });
    keep.clear();
    keep.reserve(n);
    if (min_distance <= 1) {  // distinct pixels are always >= 1 apart
        keep = std::move(order);
        return;
    }
    const std::int64_t m = min_distance;
    std::size_t i = 0;
    while (i < n) {
        std::size_t j = i + 1;
        while (j < n && values[order[j]] == values[order[i]]) ++j;
        if (j - i == 1) {
            keep.push_back(order[i]);
        } else {
            // A run of equal values: greedy thinning with a grid of cells of side m, so
            // each candidate looks at the accepted ones in the 3x3 cells around it only.
            std::unordered_map<std::int64_t, std::vector<std::int64_t>> cells;
            auto key = [](std::int64_t cy, std::int64_t cx) { return (cy << 32) ^ (cx & 0xffffffff); };
            for (std::size_t k = i; k < j; ++k) {
                const std::int64_t p = flat_idx[order[k]], py = p / width, px = p % width;
                const std::int64_t cy = py / m, cx = px / m;
                bool close = false;
                for (std::int64_t dy = -1; dy <= 1 && !close; ++dy) {
                    for (std::int64_t dx = -1; dx <= 1 && !close; ++dx) {
                        auto it = cells.find(key(cy + dy, cx + dx));
                        if (it == cells.end()) continue;
                        for (std::int64_t q : it->second) {
                            const std::int64_t qy = q / width, qx = q % width;
                            if (std::max(std::abs(py - qy), std::abs(px - qx)) < m) {
                                close = true;
                                break;
                            }
                        }
                    }
                }
                if (!close) {
                    cells[key(cy, cx)].push_back(p);
                    keep.push_back(order[k]);
                }
            }
        }
        i = j;
    }
}

template <typename T>
PeakStatus find_peaks(const T* map, std::int64_t height, std::int64_t width, T threshold,
                      std::int64_t min_distance, std::vector<std::int64_t>& out) {
    std::vector<std::int64_t> cand;
    const PeakStatus status = peak_candidates(map, height, width, threshold, min_distance, cand);
    if (status != PeakStatus::kOk) return status;
    std::vector<T> values(cand.size());
    for (std::size_t k = 0; k < cand.size(); ++k) values[k] = map[cand[k]];
    std::vector<std::int64_t> keep;
    select_peaks(cand.data(), values.data(), cand.size(), width, min_distance, keep);
    out.resize(keep.size());
    for (std::size_t k = 0; k < keep.size(); ++k) out[k] = cand[keep[k]];
    return PeakStatus::kOk;
}

template PeakStatus peak_candidates<float>(const float*, std::int64_t, std::int64_t, float,
                                           std::int64_t, std::vector<std::int64_t>&);
template PeakStatus peak_candidates<double>(const double*, std::int64_t, std::int64_t, double,
                                            std::int64_t, std::vector<std::int64_t>&);
template void select_peaks<float>(const std::int64_t*, const float*, std::size_t, std::int64_t,
                                  std::int64_t, std::vector<std::int64_t>&);
template void select_peaks<double>(const std::int64_t*, const double*, std::size_t, std::int64_t,
                                   std::int64_t, std::vector<std::int64_t>&);
template PeakStatus find_peaks<float>(const float*, std::int64_t, std::int64_t, float,
                                      std::int64_t, std::vector<std::int64_t>&);
template PeakStatus find_peaks<double>(const double*, std::int64_t, std::int64_t, double,
                                       std::int64_t, std::vector<std::int64_t>&);

}  // namespace micronet
