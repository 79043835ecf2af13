// Python binding of peaks_core: forces dtype and contiguity, releases the GIL, maps
// status codes to ValueError. Checks on meaning live in micronet/runtime/peaks.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "peaks_core.hpp"

namespace py = pybind11;

namespace {

void raise_for(micronet::PeakStatus status) {
    switch (status) {
        case micronet::PeakStatus::kOk:
            return;
        case micronet::PeakStatus::kNonFinite:
            throw py::value_error("prob_map: contains NaN or infinite values");
        case micronet::PeakStatus::kBadDistance:
            throw py::value_error("min_distance: expected an integer >= 1");
        case micronet::PeakStatus::kBadShape:
            throw py::value_error("prob_map: invalid shape");
    }
    throw std::logic_error("unknown PeakStatus " + std::to_string(static_cast<int>(status)));
}

py::array_t<std::int64_t> to_array(std::vector<std::int64_t>&& v) {
    auto* heap = new std::vector<std::int64_t>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<std::int64_t>*>(p); });
    return py::array_t<std::int64_t>({static_cast<py::ssize_t>(heap->size())}, heap->data(), owner);
}

template <typename T>
py::array_t<std::int64_t> find_peaks_flat(py::array_t<T, py::array::c_style | py::array::forcecast> map,
                                          double threshold, std::int64_t min_distance) {
    if (map.ndim() != 2) throw py::value_error("prob_map: expected a 2-D (H, W) map");
    std::vector<std::int64_t> out;
    micronet::PeakStatus status;
    {
        py::gil_scoped_release release;
        status = micronet::find_peaks<T>(map.data(), map.shape(0), map.shape(1), static_cast<T>(threshold),
                                         min_distance, out);
    }
    raise_for(status);
    return to_array(std::move(out));
}

template <typename T>
py::array_t<std::int64_t> select_peaks(py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> flat_idx,
                                       py::array_t<T, py::array::c_style | py::array::forcecast> values,
                                       std::int64_t width, std::int64_t min_distance) {
    if (flat_idx.ndim() != 1 || values.ndim() != 1 || flat_idx.shape(0) != values.shape(0)) {
        throw py::value_error("flat_idx, values: expected two 1-D arrays of the same length");
    }
    if (width < 1) throw py::value_error("width: expected >= 1");
    if (min_distance < 1) raise_for(micronet::PeakStatus::kBadDistance);
    std::vector<std::int64_t> keep;
    {
        py::gil_scoped_release release;
        micronet::select_peaks<T>(flat_idx.data(), values.data(), static_cast<std::size_t>(flat_idx.shape(0)),
                                  width, min_distance, keep);
    }
    return to_array(std::move(keep));
}

}  // namespace

void register_peaks(py::module_& m) {
    m.def("find_peaks_f32", &find_peaks_flat<float>, py::arg("prob_map"), py::arg("threshold"),
          py::arg("min_distance"),
          "Flat indices of the peaks of a float32 (H, W) map, highest first.");
    m.def("find_peaks_f64", &find_peaks_flat<double>, py::arg("prob_map"), py::arg("threshold"),
          py::arg("min_distance"),
          "Flat indices of the peaks of a float64 (H, W) map, highest first.");
    m.def("select_peaks_f32", &select_peaks<float>, py::arg("flat_idx"), py::arg("values"), py::arg("width"),
          py::arg("min_distance"),
          "Positions of the kept candidates (row-major flat_idx, parallel values), highest first.");
    m.def("select_peaks_f64", &select_peaks<double>, py::arg("flat_idx"), py::arg("values"), py::arg("width"),
          py::arg("min_distance"),
          "Positions of the kept candidates (row-major flat_idx, parallel values), highest first.");
}
