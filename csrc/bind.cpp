// pybind11 bindings of the CPU kernels: they only check and convert arrays; the
// algorithms live in the headers, free of Python objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bounding_box.hpp"

namespace py = pybind11;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;  // no forcecast: Python passes exact dtypes

template <typename T>
void require_3d(const carray<T>& a, const char* name) {
  if (a.ndim() != 3) throw std::invalid_argument(std::string(name) + " must be a 3D array");
}

py::tuple bounding_box(const carray<uint8_t>& mask) {
  require_3d(mask, "mask");
  std::array<int64_t, 6> box;
  {
    py::gil_scoped_release release;
    box = c2w::bounding_box(mask.data(), mask.shape(0), mask.shape(1), mask.shape(2));
  }
  return py::make_tuple(box[0], box[1], box[2], box[3], box[4], box[5]);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "c2w_fast CPU kernels (C++17, OpenMP)";
  m.def("bounding_box", &bounding_box, py::arg("mask"),
        "Half-open (z0, z1, y0, y1, x0, x1) of the nonzero voxels of a C-contiguous uint8 (z, y, x) mask.");
}
