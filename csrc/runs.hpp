// Run-length view of a box of a uint8 mask: the [x0, x1) runs of nonzero (or zero) voxels of
// every row, rows in raster order. The components and morphology kernels work on runs, so
// their cost follows the number of runs, not of voxels.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.hpp"

namespace c2w {

// The box [z0, z0 + nz) x [y0, y0 + ny) x [x0, x0 + nx) of a C-contiguous (*, full_ny, full_nx)
// array: the kernels read and write only inside it. Row r of the box is (z, y) = (r / ny, r % ny).
struct Box {
  int64_t nz, ny, nx, z0, y0, x0, full_ny, full_nx;
  int64_t rows() const { return nz * ny; }
  int64_t offset(int64_t r) const { return ((r / ny + z0) * full_ny + (r % ny + y0)) * full_nx + x0; }
};

struct Runs {
  std::vector<int64_t> first;  // rows + 1 entries: runs of row r are [first[r], first[r + 1])
  std::vector<int32_t> x0, x1;  // relative to the box
};

// Runs of voxels equal to value (the mask holds only 0 and 1) in every row of the box.
inline void extract_runs(const uint8_t* mask, const Box& box, bool value, Runs& runs) {
  const int64_t rows = box.rows(), nx = box.nx;
  runs.first.assign(static_cast<size_t>(rows + 1), 0);
  const uint64_t other = value ? 0 : 0x0101010101010101ULL;  // eight voxels all of the other value
  auto scan = [&](int64_t r, auto&& emit) {
    const uint8_t* row = mask + box.offset(r);
    int64_t x = 0;
    while (x < nx) {
      for (uint64_t word; x + 8 <= nx && (std::memcpy(&word, row + x, 8), word == other);) x += 8;
      while (x < nx && (row[x] != 0) != value) ++x;
      if (x == nx) break;
      const int64_t start = x;
      while (x < nx && (row[x] != 0) == value) ++x;
      emit(start, x);
    }
  };
#pragma omp parallel for schedule(static) if (rows * nx >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = 0;
    scan(r, [&](int64_t, int64_t) { ++n; });
    runs.first[r + 1] = n;
  }
  for (int64_t r = 0; r < rows; ++r) runs.first[r + 1] += runs.first[r];
  runs.x0.resize(static_cast<size_t>(runs.first[rows]));
  runs.x1.resize(static_cast<size_t>(runs.first[rows]));
#pragma omp parallel for schedule(static) if (rows * nx >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t at = runs.first[r];
    scan(r, [&](int64_t a, int64_t b) {
      runs.x0[at] = static_cast<int32_t>(a);
      runs.x1[at] = static_cast<int32_t>(b);
      ++at;
    });
  }
}

}  // namespace c2w
