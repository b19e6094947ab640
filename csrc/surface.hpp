// Surface elements of two masks, the directed distances between them, and their summaries
// (HD, percentile HD, ASSD, Surface Dice). Definitions: c2w_fast/ops/surface.py.
//
// Masks are C-contiguous (nz, ny, nx) uint8 (0/1) crops of one shape; a 2D mask is (1, ny, nx)
// with is_2d set. Everything outside the crop is background, as it is for the caller's
// union-bounding-box crop of the full arrays, so the results equal those on the full arrays.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "edt.hpp"

namespace c2w {

struct Grid {
  int64_t nz, ny, nx;
  int64_t size() const { return nz * ny * nx; }
};

// The mask with one voxel of background around it (in 2D only around y and x), so that
// neighbour lookups need no bounds checks and the loops below vectorise.
struct Padded {
  std::vector<uint8_t> data;
  int64_t pz, py, px;  // padded sizes; voxel (z, y, x) sits at (z + oz, y + 1, x + 1)
  int64_t oz;
  const uint8_t* at(int64_t z, int64_t y) const { return data.data() + ((z + oz) * py + (y + 1)) * px + 1; }
};

inline Padded pad(const uint8_t* mask, const Grid& g, bool is_2d) {
  Padded p{{}, is_2d ? 1 : g.nz + 2, g.ny + 2, g.nx + 2, is_2d ? 0 : 1};
  p.data.assign(static_cast<size_t>(p.pz * p.py * p.px), 0);
  for (int64_t z = 0; z < g.nz; ++z)
    for (int64_t y = 0; y < g.ny; ++y)
      std::memcpy(const_cast<uint8_t*>(p.at(z, y)), mask + (z * g.ny + y) * g.nx, static_cast<size_t>(g.nx));
  return p;
}

// Neighbour codes on the corner grid (one longer per axis; in 2D only y and x grow). Corner
// (k, j, i) sees the voxels (k - 1 + a, j - 1 + b, i - 1 + d), which set bit 7 - (4a + 2b + d);
// in 2D (j - 1 + b, i - 1 + d) set bit 3 - (2b + d).
inline Grid neighbour_codes(const uint8_t* mask, const Grid& g, bool is_2d, std::vector<uint8_t>& codes) {
  const Grid c{is_2d ? 1 : g.nz + 1, g.ny + 1, g.nx + 1};
  const Padded p = pad(mask, g, is_2d);
  codes.resize(static_cast<size_t>(c.size()));
#pragma omp parallel for collapse(2) schedule(static) if (c.size() >= kParallelWork)
  for (int64_t k = 0; k < c.nz; ++k) {
    for (int64_t j = 0; j < c.ny; ++j) {
      uint8_t* out = codes.data() + (k * c.ny + j) * c.nx;
      // rows of voxels (k - 1 + a, j - 1 + b), shifted so that [i] is voxel i - 1
      const uint8_t* r10 = p.at(k, j - 1) - 1;
      const uint8_t* r11 = p.at(k, j) - 1;
      if (is_2d) {
        for (int64_t i = 0; i < c.nx; ++i)
          out[i] = static_cast<uint8_t>(r10[i] << 3 | r10[i + 1] << 2 | r11[i] << 1 | r11[i + 1]);
        continue;
      }
      const uint8_t* r00 = p.at(k - 1, j - 1) - 1;
      const uint8_t* r01 = p.at(k - 1, j) - 1;
      for (int64_t i = 0; i < c.nx; ++i)
        out[i] = static_cast<uint8_t>(r00[i] << 7 | r00[i + 1] << 6 | r01[i] << 5 | r01[i + 1] << 4 |
                                      r10[i] << 3 | r10[i + 1] << 2 | r11[i] << 1 | r11[i + 1]);
    }
  }
  return c;
}

// 1 on foreground voxels with a background face neighbour (outside the array is background).
inline void boundary_voxels(const uint8_t* mask, const Grid& g, bool is_2d, std::vector<uint8_t>& out) {
  const Padded p = pad(mask, g, is_2d);
  out.resize(static_cast<size_t>(g.size()));
#pragma omp parallel for collapse(2) schedule(static) if (g.size() >= kParallelWork)
  for (int64_t z = 0; z < g.nz; ++z) {
    for (int64_t y = 0; y < g.ny; ++y) {
      const uint8_t *m = p.at(z, y), *north = p.at(z, y - 1), *south = p.at(z, y + 1);
      const uint8_t* below = is_2d ? m : p.at(z - 1, y);  // in 2D the voxel stands in for its own z faces
      const uint8_t* above = is_2d ? m : p.at(z + 1, y);
      uint8_t* o = out.data() + (z * g.ny + y) * g.nx;
      for (int64_t x = 0; x < g.nx; ++x)
        o[x] = m[x] & static_cast<uint8_t>(!(m[x - 1] & m[x + 1] & north[x] & south[x] & below[x] & above[x]));
    }
  }
}

struct Directed {
  std::vector<double> distance;  // mm, in raster order of the elements
  std::vector<double> weight;    // mm^2 (surfel), mm (2D surfel) or 1 (voxel)
  std::vector<uint8_t> within;   // 1 where the distance is within the tolerance (when a WithinRule is given)
};

// Whether a distance d, derived from a float32 squared distance, is within the Surface Dice
// tolerance (c2w_fast.ops._within.WithinRule): d <= lower is, d > upper is not, and in between
// it is when a site lies at one of the `count` grid offsets (dz, dy, dx) that the rule keeps.
struct WithinRule {
  double lower, upper;
  const int32_t* offsets;
  int64_t count;

  template <class IsSite>
  bool decide(double d, const IsSite& is_site, const Grid& g, int64_t z, int64_t y, int64_t x) const {
    if (d <= lower) return true;
    if (d > upper) return false;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t zz = z + offsets[3 * j], yy = y + offsets[3 * j + 1], xx = x + offsets[3 * j + 2];
      const bool inside = zz >= 0 && zz < g.nz && yy >= 0 && yy < g.ny && xx >= 0 && xx < g.nx;
      if (inside && is_site((zz * g.ny + yy) * g.nx + xx)) return true;
    }
    return false;
  }
};

// Scratch vectors are kept per thread between calls, so repeated calls (a folder of cases, a
// training loop) reuse their pages instead of faulting fresh ones in; one that grew past
// kKeptScratchBytes is freed when the call ends.
constexpr size_t kKeptScratchBytes = size_t{64} << 20;

template <class T>
struct ScratchGuard {
  std::vector<T>& scratch;
  ~ScratchGuard() {
    if (scratch.capacity() * sizeof(T) > kKeptScratchBytes) std::vector<T>().swap(scratch);
  }
};

// Distances (mm) from every query element to the nearest site, with the queries' weights, in
// raster order; with a rule, also whether each is within the tolerance.
template <class IsSite, class IsQuery, class Weight>
void directed_distances(const IsSite& is_site, const IsQuery& is_query, const Weight& weight, const Grid& g,
                        const double spacing[3], const WithinRule* rule, Directed& out) {
  thread_local std::vector<float> buffer;  // squared distances on the grid
  const ScratchGuard<float> guard{buffer};
  const int64_t rows = g.nz * g.ny;
  std::vector<Span> wanted(static_cast<size_t>(rows));  // x span of the queries of each row
  std::vector<int64_t> offset(static_cast<size_t>(rows + 1), 0);
#pragma omp parallel for schedule(static) if (g.size() >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = 0, first = g.nx, last = 0;
    for (int64_t x = 0; x < g.nx; ++x) {
      if (!is_query(r * g.nx + x)) continue;
      ++n;
      first = std::min(first, x);
      last = x + 1;
    }
    offset[r + 1] = n;
    wanted[r] = {static_cast<int32_t>(first), static_cast<int32_t>(last)};
  }
  for (int64_t r = 0; r < rows; ++r) offset[r + 1] += offset[r];
  buffer.resize(static_cast<size_t>(g.size()));
  edt(is_site, g.nz, g.ny, g.nx, spacing, buffer.data(), false, wanted.data());
  out.distance.resize(static_cast<size_t>(offset[rows]));
  out.weight.resize(static_cast<size_t>(offset[rows]));
  out.within.resize(rule ? static_cast<size_t>(offset[rows]) : 0);
#pragma omp parallel for schedule(static) if (g.size() >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t at = offset[r];
    for (int64_t i = r * g.nx + wanted[r].first; i < r * g.nx + wanted[r].last; ++i) {
      if (!is_query(i)) continue;
      out.distance[at] = std::sqrt(static_cast<double>(buffer[i]));
      out.weight[at] = weight(i);
      if (rule) out.within[at] = rule->decide(out.distance[at], is_site, g, r / g.ny, r % g.ny, i - r * g.nx);
      ++at;
    }
  }
}

// Runs the two directions; on machines with fewer than four threads as two concurrent tasks
// with serial kernels inside (no barrier between EDT passes to wait on), else one after the
// other with parallel kernels.
template <class First, class Second>
void both_directions(int64_t work, const First& first, const Second& second) {
  if (work >= kParallelWork && max_threads() >= 2 && max_threads() < 4) {
    RegionErrors errors;
#pragma omp parallel sections num_threads(2)
    {
#pragma omp section
      errors.run(first);
#pragma omp section
      errors.run(second);
    }
    errors.rethrow();
  } else {
    first();
    second();
  }
}

// Both directions: pred -> gt and gt -> pred. area_table: surfel area per neighbour code
// (surfel convention; ignored for voxels); rule: the tolerance decision, or null.
inline void surface_distances(const uint8_t* pred, const uint8_t* gt, const Grid& g, bool is_2d, bool surfel,
                              const double spacing[3], const double* area_table, const WithinRule* rule,
                              Directed& pred_to_gt, Directed& gt_to_pred) {
  thread_local std::vector<uint8_t> a, b;  // codes or boundary flags of pred and gt
  const ScratchGuard<uint8_t> guard_a{a}, guard_b{b};
  if (surfel) {
    const Grid c = neighbour_codes(pred, g, is_2d, a);
    neighbour_codes(gt, g, is_2d, b);
    const uint8_t full = is_2d ? 15 : 255;
    const uint8_t* cp = a.data();
    const uint8_t* cg = b.data();
    auto on_pred = [=](int64_t i) { return cp[i] != 0 && cp[i] != full; };
    auto on_gt = [=](int64_t i) { return cg[i] != 0 && cg[i] != full; };
    both_directions(
        c.size(),
        [&] { directed_distances(on_gt, on_pred, [=](int64_t i) { return area_table[cp[i]]; }, c, spacing,
                                 rule, pred_to_gt); },
        [&] { directed_distances(on_pred, on_gt, [=](int64_t i) { return area_table[cg[i]]; }, c, spacing,
                                 rule, gt_to_pred); });
  } else {
    boundary_voxels(pred, g, is_2d, a);
    boundary_voxels(gt, g, is_2d, b);
    const uint8_t* ep = a.data();
    const uint8_t* eg = b.data();
    auto on_pred = [=](int64_t i) { return ep[i] != 0; };
    auto on_gt = [=](int64_t i) { return eg[i] != 0; };
    auto one = [](int64_t) { return 1.0; };
    both_directions(
        g.size(), [&] { directed_distances(on_gt, on_pred, one, g, spacing, rule, pred_to_gt); },
        [&] { directed_distances(on_pred, on_gt, one, g, spacing, rule, gt_to_pred); });
  }
}

// Smallest distance d whose elements at or below d carry at least fraction q of the total
// weight of `parts` (the largest distance when rounding leaves q unreached); the caller lowers q
// by the tie margin (c2w_fast.ops.surface.weighted_fraction). Two passes over the elements:
// weights summed into 4096 buckets of distance, then only the elements of the bucket where the
// cumulative weight reaches q are sorted.
inline double weighted_percentile(const std::vector<const Directed*>& parts, double q) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, total = 0;
  for (const Directed* d : parts) {
    for (size_t i = 0; i < d->distance.size(); ++i) {
      lo = std::min(lo, d->distance[i]);
      hi = std::max(hi, d->distance[i]);
      total += d->weight[i];
    }
  }
  if (!(hi > lo)) return hi;
  constexpr int kBuckets = 4096;
  const double scale = (kBuckets - 1) / (hi - lo);
  auto bucket_of = [&](double distance) { return static_cast<int>((distance - lo) * scale); };
  std::vector<double> weight(kBuckets, 0.0);
  for (const Directed* d : parts)
    for (size_t i = 0; i < d->distance.size(); ++i) weight[bucket_of(d->distance[i])] += d->weight[i];
  const double target = q * total;
  double below = 0;
  int bucket = 0;
  while (bucket < kBuckets && below + weight[bucket] < target) below += weight[bucket++];
  if (bucket == kBuckets) return hi;
  std::vector<std::pair<double, double>> items;
  for (const Directed* d : parts)
    for (size_t i = 0; i < d->distance.size(); ++i)
      if (bucket_of(d->distance[i]) == bucket) items.emplace_back(d->distance[i], d->weight[i]);
  std::sort(items.begin(), items.end());
  for (const auto& [distance, w] : items) {
    below += w;
    if (below >= target) return distance;
  }
  return items.back().first;  // rounding: the bucket's sum reached the target, its elements one by one not
}

// numpy's / torch's linear-interpolation percentile: position q (n - 1) in the sorted values.
inline double linear_percentile(std::vector<double>& x, double q) {
  const double position = q * static_cast<double>(x.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(position));
  const double t = position - static_cast<double>(below);
  std::nth_element(x.begin(), x.begin() + below, x.end());
  const double a = x[below];
  if (t == 0 || below + 1 >= x.size()) return a;
  const double b = *std::min_element(x.begin() + below + 1, x.end());
  return t < 0.5 ? a + (b - a) * t : b - (b - a) * (1 - t);  // numpy's lerp
}

inline double directed_percentile(const std::vector<const Directed*>& parts, bool surfel, double q) {
  if (surfel) return weighted_percentile(parts, q);
  std::vector<double> values;
  for (const Directed* d : parts) values.insert(values.end(), d->distance.begin(), d->distance.end());
  return linear_percentile(values, q);
}

struct Summary {
  double hd, hd_percentile, assd, surface_dice;
};

// Summaries of two non-empty directed distance sets with their within flags; q in [0, 1].
inline Summary summarise(const Directed& pg, const Directed& gp, bool surfel, double q, bool pooled) {
  Summary s{0, 0, 0, 0};
  double total = 0, weighted = 0, within = 0;
  for (const Directed* d : {&pg, &gp}) {
    for (size_t i = 0; i < d->distance.size(); ++i) {
      s.hd = std::max(s.hd, d->distance[i]);
      total += d->weight[i];
      weighted += d->distance[i] * d->weight[i];
      if (d->within[i]) within += d->weight[i];
    }
  }
  s.assd = weighted / total;
  s.surface_dice = within / total;
  s.hd_percentile = pooled ? directed_percentile({&pg, &gp}, surfel, q)
                           : std::max(directed_percentile({&pg}, surfel, q), directed_percentile({&gp}, surfel, q));
  return s;
}

}  // namespace c2w
