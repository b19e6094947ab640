// Bounding box of the nonzero voxels of a C-contiguous (nz, ny, nx) uint8 mask.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>

namespace c2w {

// Returns {z0, z1, y0, y1, x0, x1} with half-open ranges; z1 <= z0 when the mask is empty.
// Rows are scanned from both ends, so a row costs only up to its first and last hit.
inline std::array<int64_t, 6> bounding_box(const uint8_t* mask, int64_t nz, int64_t ny, int64_t nx) {
  int64_t z0 = nz, z1 = -1, y0 = ny, y1 = -1, x0 = nx, x1 = -1;
#pragma omp parallel for reduction(min : z0, y0, x0) reduction(max : z1, y1, x1) schedule(static)
  for (int64_t z = 0; z < nz; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      const uint8_t* row = mask + (z * ny + y) * nx;
      const uint8_t* first = std::find_if(row, row + nx, [](uint8_t v) { return v != 0; });
      if (first == row + nx) continue;
      int64_t last = nx - 1;
      while (row[last] == 0) --last;
      z0 = std::min(z0, z);
      z1 = std::max(z1, z);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
      x0 = std::min<int64_t>(x0, first - row);
      x1 = std::max(x1, last);
    }
  }
  return {z0, z1 + 1, y0, y1 + 1, x0, x1 + 1};
}

}  // namespace c2w
