// Python binding of match_core: forces dtype and contiguity, releases the GIL, maps
// status codes to ValueError. Checks on meaning and the docs live in
// micronet/runtime/matching.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "match_core.hpp"

namespace py = pybind11;

namespace {

using Points = py::array_t<double, py::array::c_style | py::array::forcecast>;
using Lengths = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

void check_points(const Points& a, const char* name) {
    if (a.ndim() != 2 || a.shape(1) != 2)
        throw py::value_error(std::string(name) + ": expected an (N, 2) array of points, got shape " + shape_of(a));
}

void raise_for(micronet::MatchStatus status) {
    if (status == micronet::MatchStatus::kOk) return;
    throw py::value_error(micronet::match_status_message(status));
}

py::array_t<std::int64_t> to_array(std::vector<std::int64_t>&& v) {
    auto* heap = new std::vector<std::int64_t>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<std::int64_t>*>(p); });
    return py::array_t<std::int64_t>({static_cast<py::ssize_t>(heap->size())}, heap->data(), owner);
}

py::tuple match_points(const Points& pred, const Points& truth, double radius) {
    check_points(pred, "pred_xy");
    check_points(truth, "true_xy");
    const double* p = pred.data();
    const double* t = truth.data();
    const std::int64_t n = pred.shape(0), m = truth.shape(0);
    micronet::MatchPairs out;
    micronet::MatchStatus status;
    {
        py::gil_scoped_release release;
        status = micronet::match_points(p, n, t, m, radius, out);
    }
    raise_for(status);
    return py::make_tuple(to_array(std::move(out.pred_idx)), to_array(std::move(out.true_idx)));
}

py::tuple match_prefix_sweep(const Points& pred, const Points& truth, double radius, const Lengths& prefix_len) {
    check_points(pred, "pred_xy");
    check_points(truth, "true_xy");
    if (prefix_len.ndim() != 1)
        throw py::value_error("prefix_len: expected a 1-D array, got shape " + shape_of(prefix_len));
    const double* p = pred.data();
    const double* t = truth.data();
    const std::int64_t* lengths = prefix_len.data();
    const std::int64_t n = pred.shape(0), m = truth.shape(0), q = prefix_len.shape(0);
    py::array_t<std::int64_t> tp(q);
    py::array_t<double> distance(q);
    std::int64_t* tp_out = tp.mutable_data();
    double* distance_out = distance.mutable_data();
    micronet::MatchStatus status;
    {
        py::gil_scoped_release release;
        status = micronet::match_prefix_sweep(p, n, t, m, radius, lengths, q, tp_out, distance_out);
    }
    raise_for(status);
    return py::make_tuple(tp, distance);
}

}  // namespace

void register_match(py::module_& m) {
    m.def("match_points", &match_points, py::arg("pred_xy"), py::arg("true_xy"), py::arg("radius"),
          "Optimal gated matching of (N, 2) float64 points: (pred_idx, true_idx) int64, sorted by pred_idx.\n"
          "Use micronet.runtime.matching.match_points, which checks its arguments and documents them.");
    m.def("match_prefix_sweep", &match_prefix_sweep, py::arg("pred_xy"), py::arg("true_xy"), py::arg("radius"),
          py::arg("prefix_len"),
          "For each L in prefix_len (nondecreasing), the matched count and total distance of the optimal\n"
          "gated matching of pred_xy[:L] against true_xy: (tp int64[q], distance_sum float64[q]).\n"
          "Used by micronet.runtime.metrics.threshold_sweep.");
}
