// Local-maximum peak finding on a 2-D map, with the semantics of
// skimage.feature.peak_local_max(image, min_distance, threshold_abs, exclude_border=False).
// Pure C++17: plain arrays and sizes in, a status code out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace micronet {

enum class PeakStatus : int {
    kOk = 0,
    kNonFinite = 1,    // the map holds NaN or +-inf
    kBadDistance = 2,  // min_distance < 1
    kBadShape = 3,     // a side is negative or the size overflows
};

// Pixels with value > threshold that equal the maximum of their (2*min_distance+1)^2
// window (clipped at the border, which equals scipy's mode='nearest' for a maximum).
// A constant map of more than one pixel has no peaks. Flat indices come back in row-major order.
template <typename T>
PeakStatus peak_candidates(const T* map, std::int64_t height, std::int64_t width, T threshold,
                           std::int64_t min_distance, std::vector<std::int64_t>& out);

// Orders candidates by value, highest first (row-major order among equal values), and
// greedily drops any candidate closer than min_distance (Chebyshev) to an accepted one.
// Two candidates that close always have the same value (each lies in the other's
// window), so only ties, i.e. plateaus, are ever thinned.
// `flat_idx` (row-major order) and `values` are parallel arrays of n candidates; `keep`
// receives the positions (into those arrays) of the selected peaks, highest first.
template <typename T>
void select_peaks(const std::int64_t* flat_idx, const T* values, std::size_t n,
                  std::int64_t width, std::int64_t min_distance, std::vector<std::int64_t>& keep);

// Both steps: the peaks of `map`, highest first.
template <typename T>
PeakStatus find_peaks(const T* map, std::int64_t height, std::int64_t width, T threshold,
                      std::int64_t min_distance, std::vector<std::int64_t>& out);

}  // namespace micronet
