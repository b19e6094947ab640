// Binary dilation and erosion of a uint8 mask by a structuring element that is, along x, one
// centred interval per (dz, dy) row: a ball in voxels or in mm.
//
// The element is given as halfwidth[(dz + ez) * (2 ey + 1) + (dy + ey)] = w >= 0 when the
// offsets (dz, dy, dx) with |dx| <= w belong to it, -1 when none of that row does. Both
// operations work on the runs of foreground voxels of each row, so their cost follows the
// number of runs, and they write only the result's runs into a zero-filled output:
// * dilation: out[v] = 1 iff some mask[v + o] = 1 -- the union over the element's rows of the
//   source row's runs widened by w;
// * erosion: out[v] = 1 iff every mask[v + o] = 1, the outside counting as 0 (scipy's
//   border_value=0) -- the intersection over the element's rows of the source row's runs
//   narrowed by w, empty as soon as one source row lies outside the array.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "runs.hpp"

namespace c2w {

using Intervals = std::vector<std::pair<int64_t, int64_t>>;  // sorted, disjoint [a, b)

// Sorts and merges overlapping or touching intervals in place.
inline void merge_intervals(Intervals& list) {
  std::sort(list.begin(), list.end());
  size_t kept = 0;
  for (const auto& iv : list) {
    if (kept > 0 && iv.first <= list[kept - 1].second) list[kept - 1].second = std::max(list[kept - 1].second, iv.second);
    else list[kept++] = iv;
  }
  list.resize(kept);
}

// a := a ∩ b for two sorted, disjoint interval lists.
inline void intersect_intervals(Intervals& a, const Intervals& b, Intervals& scratch) {
  scratch.clear();
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const int64_t lo = std::max(a[i].first, b[j].first), hi = std::min(a[i].second, b[j].second);
    if (lo < hi) scratch.emplace_back(lo, hi);
    if (a[i].second < b[j].second) ++i;
    else ++j;
  }
  a.swap(scratch);
}

// Works inside `box` of the mask and writes only the box of out (shaped like the mask and
// zero-filled): the box must hold the whole result, and everything outside it counts as background.
inline void dilate_or_erode(const uint8_t* mask, const Box& box, int64_t ez, int64_t ey, const int32_t* halfwidth,
                            bool erode, uint8_t* out) {
  const int64_t nz = box.nz, ny = box.ny, nx = box.nx;
  Runs runs;
  extract_runs(mask, box, true, runs);
  const int64_t wy = 2 * ey + 1;
  RegionErrors errors;  // the interval lists grow inside the region
#pragma omp parallel if (nz * ny * nx >= kParallelWork)
  {
    Intervals result, source, scratch;
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t z = 0; z < nz; ++z) {
      for (int64_t y = 0; y < ny; ++y) {
        errors.run([&] {
          result.clear();
          bool first = true;
          for (int64_t dz = -ez; dz <= ez && (first || !erode || !result.empty()); ++dz) {
            for (int64_t dy = -ey; dy <= ey; ++dy) {
              const int64_t w = halfwidth[(dz + ez) * wy + (dy + ey)];
              if (w < 0) continue;
              const int64_t sz = z + dz, sy = y + dy;
              const bool inside = sz >= 0 && sz < nz && sy >= 0 && sy < ny;
              source.clear();
              if (inside) {
                const int64_t r = sz * ny + sy;
                for (int64_t i = runs.first[r]; i < runs.first[r + 1]; ++i) {
                  const int64_t a = erode ? runs.x0[i] + w : std::max<int64_t>(runs.x0[i] - w, 0);
                  const int64_t b = erode ? runs.x1[i] - w : std::min<int64_t>(runs.x1[i] + w, nx);
                  if (a < b) source.emplace_back(a, b);
                }
              }
              if (!erode) {
                result.insert(result.end(), source.begin(), source.end());
              } else if (first) {
                result.swap(source);
              } else {
                intersect_intervals(result, source, scratch);
              }
              first = false;
              if (erode && result.empty()) break;
            }
          }
          if (!erode) merge_intervals(result);
          uint8_t* row = out + box.offset(z * ny + y);
          for (const auto& [a, b] : result) std::memset(row + a, 1, static_cast<size_t>(b - a));
        });
      }
    }
  }
  errors.rethrow();
}

}  // namespace c2w
