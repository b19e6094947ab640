// Exact Euclidean distance transform with anisotropic spacing: squared distances (float32) from
// every point of a (nz, ny, nx) grid to the nearest "site", in three separable passes.
//
// Pass x finds, per row, the nearest site by two scans; passes y and z take the lower envelope
// of parabolas (Felzenszwalb & Huttenlocher, "Distance transforms of sampled functions", 2012),
// with the envelope breakpoints in double so that large coordinates lose no precision, or, for
// columns of at most kDirectUpTo points, the direct minimum vectorised along x. Envelope columns
// are gathered in tiles of neighbouring x so that every load touches whole cache lines; tiles,
// rows and slices are independent and run under OpenMP.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "parallel.hpp"

namespace c2w {

constexpr float kInf = std::numeric_limits<float>::infinity();

// d[q] = min_p f[p] + w (q - p)^2 over the finite f[p]; +inf everywhere when none is finite.
// v (n ints) and z (n + 1 doubles) are scratch.
inline void parabola_envelope(const float* f, int64_t n, double w, float* d, int64_t* v, double* z) {
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (!(f[q] < kInf)) continue;
    double s = -std::numeric_limits<double>::infinity();
    while (k >= 0) {
      const int64_t p = v[k];
      // abscissa where the parabolas rooted at p and q meet
      s = (static_cast<double>(f[q]) - f[p]) / (2.0 * w * static_cast<double>(q - p)) +
          0.5 * static_cast<double>(q + p);
      if (s > z[k]) break;
      --k;
    }
    ++k;
    v[k] = q;
    z[k] = k == 0 ? -std::numeric_limits<double>::infinity() : s;
  }
  if (k < 0) {
    std::fill(d, d + n, kInf);
    return;
  }
  z[k + 1] = std::numeric_limits<double>::infinity();
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (z[j + 1] < static_cast<double>(q)) ++j;
    const double dq = static_cast<double>(q - v[j]);
    d[q] = static_cast<float>(w * dq * dq + static_cast<double>(f[v[j]]));
  }
}

// Squared distance (mm^2) along x to the nearest site of each row; is_site(index) says which
// linear indices of the (nz, ny, nx) grid are sites.
template <class IsSite>
void edt_pass_x(const IsSite& is_site, int64_t nz, int64_t ny, int64_t nx, double sx, float* out) {
  const int64_t rows = nz * ny;
#pragma omp parallel for schedule(static) if (rows * nx >= kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = out + r * nx;
    const int64_t base = r * nx;
    int64_t last = -1;
    for (int64_t x = 0; x < nx; ++x) {  // forward: distance to the previous site
      if (is_site(base + x)) last = x;
      row[x] = last < 0 ? kInf : static_cast<float>(x - last);
    }
    last = -1;
    for (int64_t x = nx - 1; x >= 0; --x) {  // backward: keep the nearer one, then scale
      if (is_site(base + x)) last = x;
      float steps = row[x];
      if (last >= 0) steps = std::min(steps, static_cast<float>(last - x));
      const double mm = static_cast<double>(steps) * sx;
      row[x] = steps < kInf ? static_cast<float>(mm * mm) : kInf;
    }
  }
}

// One envelope pass over columns of length n and stride `stride` (in elements): `planes`
// independent planes `plane_stride` apart, each holding `width` contiguous columns.
// With sqrt_out the result is the distance instead of its square.
inline void edt_pass_columns(float* data, int64_t planes, int64_t plane_stride, int64_t width, int64_t n,
                             int64_t stride, double spacing, bool sqrt_out) {
  constexpr int64_t kTile = 16;
  const int64_t tiles = (width + kTile - 1) / kTile;
  const double w = spacing * spacing;
  RegionErrors errors;
#pragma omp parallel if (planes * width * n >= kParallelWork)
  {
    std::vector<float> in, res;
    std::vector<int64_t> v;
    std::vector<double> z;
    const bool ready = errors.run([&] {
      in.resize(static_cast<size_t>(n * kTile));
      res.resize(static_cast<size_t>(n));
      v.resize(static_cast<size_t>(n));
      z.resize(static_cast<size_t>(n + 1));
    });
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t p = 0; p < planes; ++p) {
      for (int64_t t = 0; t < tiles; ++t) {
        if (!ready) continue;  // every thread still meets the worksharing loop; the error is raised after
        float* base = data + p * plane_stride + t * kTile;
        const int64_t cols = std::min(kTile, width - t * kTile);
        for (int64_t i = 0; i < n; ++i) {
          const float* src = base + i * stride;
          for (int64_t c = 0; c < cols; ++c) in[c * n + i] = src[c];
        }
        for (int64_t c = 0; c < cols; ++c) {
          const float* col = in.data() + c * n;
          bool any_finite = false;
          for (int64_t i = 0; i < n && !any_finite; ++i) any_finite = col[i] < kInf;
          if (!any_finite) continue;  // no site reaches this column: it stays +inf
          parabola_envelope(col, n, w, res.data(), v.data(), z.data());
          for (int64_t i = 0; i < n; ++i) base[i * stride + c] = sqrt_out ? std::sqrt(res[i]) : res[i];
        }
      }
    }
  }
  errors.rethrow();
}

// The same pass by direct minimisation, d[q] = min_p f[p] + w (q - p)^2, vectorised along the
// `width` contiguous columns of each plane: n^2 / (vector width) operations per column instead
// of the envelope's branchy ~n, cheaper for short columns such as the slice axis of thick-slice
// MRI. Rows of f that are +inf everywhere are skipped.
// Output columns [first, last) wanted from one row of a pass (first >= last: none).
struct Span {
  int32_t first, last;
};

// wanted (optional): the span of each output row (q, plane p) at wanted[q * planes + p] that
// the caller will read; rows and columns outside it are left unfinished.
inline void edt_pass_columns_direct(float* data, int64_t planes, int64_t plane_stride, int64_t width, int64_t n,
                                    int64_t stride, double spacing, bool sqrt_out, const Span* wanted = nullptr) {
  std::vector<float> step(static_cast<size_t>(n));  // w (q - p)^2 by |q - p|
  for (int64_t i = 0; i < n; ++i) step[i] = static_cast<float>(spacing * spacing * static_cast<double>(i * i));
  RegionErrors errors;
#pragma omp parallel if (planes * width * n >= kParallelWork)
  {
    std::vector<float> in;
    std::vector<int64_t> rows;
    const bool ready = errors.run([&] {
      in.resize(static_cast<size_t>(n * width));
      rows.reserve(static_cast<size_t>(n));  // push_back below then never allocates
    });
#pragma omp for schedule(dynamic, 4)
    for (int64_t p = 0; p < planes; ++p) {
      if (!ready) continue;  // every thread still meets the worksharing loop; the error is raised after
      float* base = data + p * plane_stride;
      rows.clear();
      for (int64_t i = 0; i < n; ++i) {
        const float* src = base + i * stride;
        float* dst = in.data() + i * width;
        bool finite = false;
        for (int64_t x = 0; x < width; ++x) {
          dst[x] = src[x];
          finite |= src[x] < kInf;
        }
        if (finite) rows.push_back(i);
      }
      for (int64_t q = 0; q < n; ++q) {
        const int64_t first = wanted ? wanted[q * planes + p].first : 0;
        const int64_t last = wanted ? wanted[q * planes + p].last : width;
        if (first >= last) continue;
        float* out = base + q * stride;
        std::fill(out + first, out + last, kInf);
        for (const int64_t i : rows) {
          const float add = step[static_cast<size_t>(q > i ? q - i : i - q)];
          const float* src = in.data() + i * width;
          for (int64_t x = first; x < last; ++x) out[x] = std::min(out[x], src[x] + add);
        }
        if (sqrt_out)
          for (int64_t x = first; x < last; ++x) out[x] = std::sqrt(out[x]);
      }
    }
  }
  errors.rethrow();
}

// Columns up to this length take the direct pass, longer ones the envelope (measured crossover).
constexpr int64_t kDirectUpTo = 64;

// Envelope or direct minimisation, whichever is cheaper for columns of length n.
inline void edt_pass(float* data, int64_t planes, int64_t plane_stride, int64_t width, int64_t n, int64_t stride,
                     double spacing, bool sqrt_out) {
  if (n <= kDirectUpTo)
    edt_pass_columns_direct(data, planes, plane_stride, width, n, stride, spacing, sqrt_out);
  else
    edt_pass_columns(data, planes, plane_stride, width, n, stride, spacing, sqrt_out);
}

// out[i] = squared distance (mm^2) from grid point i to the nearest site (+inf without sites),
// or the distance itself with sqrt_out. spacing = (sz, sy, sx) in mm. In 3D the x and y passes
// run slice by slice while the slice is in cache (the passes inside run serially there, as
// nested OpenMP regions), then the z pass; so the volume crosses memory three times, not five.
// wanted (optional, 3D): per row (z, y) at wanted[z * ny + y], the x span the caller will read;
// a short z pass then skips the rest (those values are left unfinished).
template <class IsSite>
void edt(const IsSite& is_site, int64_t nz, int64_t ny, int64_t nx, const double spacing[3], float* out,
         bool sqrt_out, const Span* wanted = nullptr) {
  if (nz == 1) {
    edt_pass_x(is_site, 1, ny, nx, spacing[2], out);
    edt_pass(out, 1, ny * nx, nx, ny, nx, spacing[1], sqrt_out);
    return;
  }
  const int64_t plane = ny * nx;
  RegionErrors errors;  // the nested passes allocate scratch
#pragma omp parallel for schedule(dynamic, 1) if (nz * plane >= kParallelWork)
  for (int64_t z = 0; z < nz; ++z) {
    errors.run([&] {
      const int64_t base = z * plane;
      edt_pass_x([&](int64_t i) { return is_site(base + i); }, 1, ny, nx, spacing[2], out + base);
      if (ny > 1) edt_pass(out + base, 1, plane, nx, ny, nx, spacing[1], false);
    });
  }
  errors.rethrow();
  if (nz <= kDirectUpTo)
    edt_pass_columns_direct(out, ny, nx, nx, nz, plane, spacing[0], sqrt_out, wanted);
  else
    edt_pass_columns(out, ny, nx, nx, nz, plane, spacing[0], sqrt_out);
}

}  // namespace c2w
