// Binary dilation and erosion of a uint8 mask by a structuring element that is,
// along x, one interval per (dz, dy) row: a ball in voxels or in mm.
//
// The element is given as halfwidth[(dz + ez) * (2 ey + 1) + (dy + ey)] = w >= 0 when the
// offsets (dz, dy, dx) with |dx| <= w belong to it, -1 when none of that row does.
// Dilation: out[v] = 1 iff some mask[v + o] = 1; each run of a source row, widened by w,
// is painted into the output row. Erosion: out[v] = 1 iff every mask[v + o] = 1 with the
// outside counting as 0 (scipy's border_value=0): the runs of zeros, and everything outside
// the array, widened alike, are painted as 0.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "runs.hpp"

namespace c2w {

// Works inside `box` of the mask and writes only the box of out (shaped like the mask): the
// box must hold the whole result, and everything outside it counts as background.
inline void dilate_or_erode(const uint8_t* mask, const Box& box, int64_t ez, int64_t ey, const int32_t* halfwidth,
                            bool erode, uint8_t* out) {
  const int64_t nz = box.nz, ny = box.ny, nx = box.nx;
  Runs runs;
  extract_runs(mask, box, !erode, runs);
  const uint8_t paint = erode ? 0 : 1;
  const int64_t wy = 2 * ey + 1;
#pragma omp parallel for collapse(2) schedule(dynamic, 8) if (nz * ny * nx >= kParallelWork)
  for (int64_t z = 0; z < nz; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      uint8_t* row = out + box.offset(z * ny + y);
      std::memset(row, erode ? 1 : 0, static_cast<size_t>(nx));
      for (int64_t dz = -ez; dz <= ez; ++dz) {
        for (int64_t dy = -ey; dy <= ey; ++dy) {
          const int32_t w = halfwidth[(dz + ez) * wy + (dy + ey)];
          if (w < 0) continue;
          const int64_t sz = z + dz, sy = y + dy;
          if (sz < 0 || sz >= nz || sy < 0 || sy >= ny) {
            if (erode) std::memset(row, 0, static_cast<size_t>(nx));  // the outside is background
            continue;
          }
          const int64_t source = sz * ny + sy;
          for (int64_t i = runs.first[source]; i < runs.first[source + 1]; ++i) {
            const int64_t a = std::max<int64_t>(runs.x0[i] - w, 0), b = std::min<int64_t>(runs.x1[i] + w, nx);
            std::memset(row + a, paint, static_cast<size_t>(b - a));
          }
          if (erode && w > 0) {  // the outside left and right of the row is background too
            std::memset(row, 0, static_cast<size_t>(std::min<int64_t>(w, nx)));
            std::memset(row + std::max<int64_t>(nx - w, 0), 0, static_cast<size_t>(std::min<int64_t>(w, nx)));
          }
        }
      }
    }
  }
}

}  // namespace c2w
