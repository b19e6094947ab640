// pybind11 bindings of the CPU kernels: they only check and convert arrays; the
// algorithms live in the headers, free of Python objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "bounding_box.hpp"
#include "components.hpp"
#include "edt.hpp"
#include "morphology.hpp"
#include "surface.hpp"

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

py::array_t<float> distance_transform(const carray<uint8_t>& mask, std::array<double, 3> spacing, bool to_nonzero) {
  require_3d(mask, "mask");
  py::array_t<float> out(std::vector<py::ssize_t>{mask.shape(0), mask.shape(1), mask.shape(2)});
  const uint8_t* m = mask.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    auto is_site = [=](int64_t i) { return (m[i] != 0) == to_nonzero; };
    c2w::edt(is_site, mask.shape(0), mask.shape(1), mask.shape(2), spacing.data(), o, true);
  }
  return out;
}

py::array_t<double> to_numpy(const std::vector<double>& v) {
  py::array_t<double> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void check_pair(const carray<uint8_t>& pred, const carray<uint8_t>& gt, const carray<double>& area_table, bool is_2d) {
  require_3d(pred, "pred");
  require_3d(gt, "gt");
  for (int a = 0; a < 3; ++a)
    if (pred.shape(a) != gt.shape(a)) throw std::invalid_argument("pred and gt must have the same shape");
  if (is_2d && pred.shape(0) != 1) throw std::invalid_argument("a 2D pair must be passed as (1, ny, nx)");
  if (area_table.ndim() != 1 || area_table.shape(0) != (is_2d ? 16 : 256))
    throw std::invalid_argument("area_table must hold one area per neighbour code (16 in 2D, 256 in 3D)");
}

py::tuple surface_distances(const carray<uint8_t>& pred, const carray<uint8_t>& gt, std::array<double, 3> spacing,
                            bool is_2d, bool surfel, const carray<double>& area_table) {
  check_pair(pred, gt, area_table, is_2d);
  c2w::Directed pg, gp;
  {
    py::gil_scoped_release release;
    const c2w::Grid g{pred.shape(0), pred.shape(1), pred.shape(2)};
    c2w::surface_distances(pred.data(), gt.data(), g, is_2d, surfel, spacing.data(), area_table.data(), nullptr, pg,
                           gp);
  }
  return py::make_tuple(to_numpy(pg.distance), to_numpy(gp.distance), to_numpy(pg.weight), to_numpy(gp.weight));
}

py::tuple surface_summary(const carray<uint8_t>& pred, const carray<uint8_t>& gt, std::array<double, 3> spacing,
                          bool is_2d, bool surfel, const carray<double>& area_table, double lower, double upper,
                          const carray<int32_t>& offsets, double quantile, bool pooled) {
  check_pair(pred, gt, area_table, is_2d);
  if (!(quantile >= 0.0 && quantile <= 1.0)) throw std::invalid_argument("quantile must be in [0, 1]");
  if (offsets.ndim() != 2 || offsets.shape(1) != 3) throw std::invalid_argument("offsets must be (n, 3) int32");
  c2w::Summary s;
  {
    py::gil_scoped_release release;
    const c2w::Grid g{pred.shape(0), pred.shape(1), pred.shape(2)};
    const c2w::WithinRule rule{lower, upper, offsets.data(), offsets.shape(0)};
    c2w::Directed pg, gp;
    c2w::surface_distances(pred.data(), gt.data(), g, is_2d, surfel, spacing.data(), area_table.data(), &rule, pg,
                           gp);
    if (pg.distance.empty() || gp.distance.empty()) throw std::invalid_argument("both masks must be non-empty");
    s = c2w::summarise(pg, gp, surfel, quantile, pooled);
  }
  return py::make_tuple(s.hd, s.hd_percentile, s.assd, s.surface_dice);
}

// The box (z0, z1, y0, y1, x0, x1) of a 3D mask, checked; out must have the mask's shape.
template <typename T>
c2w::Box box_of(const carray<uint8_t>& mask, const std::array<int64_t, 6>& b, const carray<T>& out) {
  require_3d(mask, "mask");
  require_3d(out, "out");
  for (int a = 0; a < 3; ++a) {
    if (out.shape(a) != mask.shape(a)) throw std::invalid_argument("out must have the mask's shape");
    if (b[2 * a] < 0 || b[2 * a + 1] <= b[2 * a] || b[2 * a + 1] > mask.shape(a))
      throw std::invalid_argument("box must be a non-empty (z0, z1, y0, y1, x0, x1) inside the mask");
  }
  return {b[1] - b[0], b[3] - b[2], b[5] - b[4], b[0], b[2], b[4], mask.shape(1), mask.shape(2)};
}

void check_connectivity(int connectivity) {
  if (connectivity != 6 && connectivity != 18 && connectivity != 26)
    throw std::invalid_argument("connectivity must be 6, 18 or 26");
}

// Labels the components inside box, then paints values(components)[label] over each into
// the zero-filled out; returns the number of components.
template <typename T, class Values>
int32_t paint_components(const carray<uint8_t>& mask, std::array<int64_t, 6> box, int connectivity,
                         carray<T>& out, const Values& values) {
  const c2w::Box b = box_of(mask, box, out);
  check_connectivity(connectivity);
  T* o = out.mutable_data();
  py::gil_scoped_release release;
  c2w::Components c;
  c2w::label_components(mask.data(), b, connectivity, c);
  const std::vector<T> value = values(c);
  c2w::paint_runs(c, b, [&](int32_t label) { return value[label]; }, o);
  return c.count;
}

int32_t label_components(const carray<uint8_t>& mask, std::array<int64_t, 6> box, int connectivity,
                         carray<int32_t>& out) {
  return paint_components(mask, box, connectivity, out, [](const c2w::Components& c) {
    std::vector<int32_t> value(c.size.size());
    for (int32_t label = 0; label <= c.count; ++label) value[label] = label;
    return value;
  });
}

void keep_largest_component(const carray<uint8_t>& mask, std::array<int64_t, 6> box, int connectivity,
                            carray<uint8_t>& out) {
  paint_components(mask, box, connectivity, out, [](const c2w::Components& c) {
    int32_t best = 1;  // the first of the largest: ties go to the first component in raster order
    for (int32_t label = 2; label <= c.count; ++label)
      if (c.size[label] > c.size[best]) best = label;
    std::vector<uint8_t> value(c.size.size(), 0);
    if (c.count > 0) value[best] = 1;
    return value;
  });
}

void remove_small_components(const carray<uint8_t>& mask, std::array<int64_t, 6> box, int64_t min_voxels,
                             int connectivity, carray<uint8_t>& out) {
  paint_components(mask, box, connectivity, out, [=](const c2w::Components& c) {
    std::vector<uint8_t> value(c.size.size(), 0);
    for (int32_t label = 1; label <= c.count; ++label) value[label] = c.size[label] >= min_voxels;
    return value;
  });
}

void dilate_or_erode(const carray<uint8_t>& mask, std::array<int64_t, 6> box, const carray<int32_t>& halfwidth,
                     bool erode, carray<uint8_t>& out) {
  const c2w::Box b = box_of(mask, box, out);
  if (halfwidth.ndim() != 2 || halfwidth.shape(0) % 2 == 0 || halfwidth.shape(1) % 2 == 0)
    throw std::invalid_argument("halfwidth must be a 2D int32 array of odd sizes (dz, dy)");
  uint8_t* o = out.mutable_data();
  py::gil_scoped_release release;
  c2w::dilate_or_erode(mask.data(), b, halfwidth.shape(0) / 2, halfwidth.shape(1) / 2, halfwidth.data(), erode, o);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "c2w_fast CPU kernels (C++17, OpenMP)";
  m.def("bounding_box", &bounding_box, py::arg("mask"),
        "Half-open (z0, z1, y0, y1, x0, x1) of the nonzero voxels of a C-contiguous uint8 (z, y, x) mask.");
  m.def("distance_transform", &distance_transform, py::arg("mask"), py::arg("spacing"), py::arg("to_nonzero"),
        "float32 Euclidean distance (mm) of every voxel to the nearest zero voxel (to_nonzero=False) or "
        "nonzero voxel (True); +inf when there is none.");
  m.def("surface_distances", &surface_distances, py::arg("pred"), py::arg("gt"), py::arg("spacing"),
        py::arg("is_2d"), py::arg("surfel"), py::arg("area_table"),
        "(pred_to_gt, gt_to_pred, pred_weights, gt_weights) float64 arrays in raster order of the elements.");
  m.def("surface_summary", &surface_summary, py::arg("pred"), py::arg("gt"), py::arg("spacing"), py::arg("is_2d"),
        py::arg("surfel"), py::arg("area_table"), py::arg("lower"), py::arg("upper"), py::arg("offsets"),
        py::arg("quantile"), py::arg("pooled"),
        "(hd, hd_percentile, assd, surface_dice) of two non-empty masks; quantile in [0, 1]; Surface Dice by "
        "the rule (lower, upper, offsets) of c2w_fast.ops._within.WithinRule.");
  m.def("label_components", &label_components, py::arg("mask"), py::arg("box"), py::arg("connectivity"),
        py::arg("out").noconvert(),
        "Writes int32 labels (numbered in raster order) of the components inside box (z0, z1, y0, y1, x0, x1) "
        "into the zero-filled out; returns their count. connectivity 6, 18 or 26.");
  m.def("keep_largest_component", &keep_largest_component, py::arg("mask"), py::arg("box"), py::arg("connectivity"),
        py::arg("out").noconvert(), "Writes 1 over the largest component into the zero-filled uint8 out.");
  m.def("remove_small_components", &remove_small_components, py::arg("mask"), py::arg("box"),
        py::arg("min_voxels"), py::arg("connectivity"), py::arg("out").noconvert(),
        "Writes 1 over the components of at least min_voxels voxels into the zero-filled uint8 out.");
  m.def("dilate_or_erode", &dilate_or_erode, py::arg("mask"), py::arg("box"), py::arg("halfwidth"), py::arg("erode"),
        py::arg("out").noconvert(),
        "Writes, inside box, the dilation (or erosion) by the element whose row (dz, dy) spans "
        "|dx| <= halfwidth[dz, dy] (-1: empty row) into out.");
}
