// Bounding box of the nonzero voxels of a C-contiguous (nz, ny, nx) uint8 mask.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "parallel.hpp"

namespace c2w {

// Index of the first nonzero byte of row[0, n), or n; zero bytes are skipped eight at a time.
inline int64_t first_nonzero(const uint8_t* row, int64_t n) {
  int64_t x = 0;
  for (uint64_t word; x + 8 <= n && (std::memcpy(&word, row + x, 8), word == 0);) x += 8;
  while (x < n && row[x] == 0) ++x;
  return x;
}

// Returns {z0, z1, y0, y1, x0, x1} with half-open ranges; z1 <= z0 when the mask is empty.
// Rows are scanned from both ends, so a row costs only up to its first and last hit.
inline std::array<int64_t, 6> bounding_box(const uint8_t* mask, int64_t nz, int64_t ny, int64_t nx) {
  int64_t z0 = nz, z1 = -1, y0 = ny, y1 = -1, x0 = nx, x1 = -1;
#pragma omp parallel for reduction(min : z0, y0, x0) reduction(max : z1, y1, x1) schedule(static) \
    if (nz * ny * nx >= kParallelWork)
  for (int64_t z = 0; z < nz; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      const uint8_t* row = mask + (z * ny + y) * nx;
      const int64_t first = first_nonzero(row, nx);
      if (first == nx) continue;
      int64_t last = nx - 1;
      while (row[last] == 0) --last;
      z0 = std::min(z0, z);
      z1 = std::max(z1, z);
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
      x0 = std::min(x0, first);
      x1 = std::max(x1, last);
    }
  }
  return {z0, z1 + 1, y0, y1 + 1, x0, x1 + 1};
}

}  // namespace c2w
