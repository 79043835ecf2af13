// The one Python extension module of the runtime, micronet.runtime._native.
// Each native core registers its own functions; the cores themselves know no Python.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_match(py::module_& m);  // bind_match.cpp
void register_peaks(py::module_& m);  // bind_peaks.cpp

PYBIND11_MODULE(_native, m) {
    m.doc() = "Native cores of micronet.runtime: gated point matching and peak finding.";
    register_match(m);
    register_peaks(m);
}
