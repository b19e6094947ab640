// Connected components inside a box of a uint8 mask (nothing outside it is foreground) by
// union-find over row runs.
//
// A run joins the runs of earlier rows that touch it: for 6-connectivity the rows (z, y-1)
// and (z-1, y) with overlapping x ranges; for 18 also (z-1, y-1) and (z-1, y+1) overlapping,
// while (z, y-1) and (z-1, y) may be one x step apart; for 26 all four rows may be one x step
// apart. A 2D mask is one slice (4 = 6, 8 = 26). Every set's root is its first run in raster
// order, so components are numbered in raster order of their first voxel (as scipy.ndimage.label).
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "runs.hpp"

namespace c2w {

struct Components {
  Runs runs;
  std::vector<int32_t> label;  // per run, 1..count
  std::vector<int64_t> size;   // per label (index 0 unused), voxels
  int32_t count = 0;
};

inline int64_t find_root(std::vector<int64_t>& parent, int64_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];  // path halving
    i = parent[i];
  }
  return i;
}

inline void join(std::vector<int64_t>& parent, int64_t a, int64_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a < b) parent[b] = a;
  else if (b < a) parent[a] = b;
}

inline void label_components(const uint8_t* mask, const Box& box, int connectivity, Components& out) {
  const int64_t nz = box.nz, ny = box.ny;
  extract_runs(mask, box, true, out.runs);
  const Runs& runs = out.runs;
  const int64_t n = static_cast<int64_t>(runs.x0.size());
  std::vector<int64_t> parent(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) parent[i] = i;
  struct Neighbour {
    int dz, dy, reach;  // reach: how far apart in x two touching runs may be
  };
  std::vector<Neighbour> neighbours;
  if (connectivity == 6) neighbours = {{0, -1, 0}, {-1, 0, 0}};
  else if (connectivity == 18) neighbours = {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 0}, {-1, 1, 0}};
  else neighbours = {{0, -1, 1}, {-1, -1, 1}, {-1, 0, 1}, {-1, 1, 1}};
  for (int64_t z = 0; z < nz; ++z) {
    for (int64_t y = 0; y < ny; ++y) {
      const int64_t row = z * ny + y;
      for (const Neighbour& nb : neighbours) {
        const int64_t oz = z + nb.dz, oy = y + nb.dy;
        if (oz < 0 || oy < 0 || oy >= ny) continue;
        const int64_t other = oz * ny + oy;
        int64_t i = runs.first[row], j = runs.first[other];
        const int64_t i_end = runs.first[row + 1], j_end = runs.first[other + 1];
        while (i < i_end && j < j_end) {  // both run lists are sorted by x: merge them
          if (runs.x0[i] < runs.x1[j] + nb.reach && runs.x0[j] < runs.x1[i] + nb.reach) join(parent, i, j);
          if (runs.x1[i] < runs.x1[j]) ++i;
          else ++j;
        }
      }
    }
  }
  out.label.assign(static_cast<size_t>(n), 0);
  out.size.assign(1, 0);
  out.count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t root = find_root(parent, i);
    if (root == i) {
      out.label[i] = ++out.count;
      out.size.push_back(0);
    } else {
      out.label[i] = out.label[root];
    }
    out.size[out.label[i]] += runs.x1[i] - runs.x0[i];
  }
}

// Writes value_of(label) over every run of the box into out (an array shaped like the mask,
// zero-filled: nothing else is written).
template <class T, class ValueOf>
void paint_runs(const Components& c, const Box& box, const ValueOf& value_of, T* out) {
  const int64_t rows = box.rows();
#pragma omp parallel for schedule(static) if (rows * box.nx >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = c.runs.first[r]; i < c.runs.first[r + 1]; ++i) {
      const T value = value_of(c.label[i]);
      if (value == T(0)) continue;
      T* row = out + box.offset(r);
      for (int32_t x = c.runs.x0[i]; x < c.runs.x1[i]; ++x) row[x] = value;
    }
  }
}

}  // namespace c2w
