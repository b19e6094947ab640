// When a loop is worth OpenMP threads: below this many elements of work the wake-up and
// barrier of a parallel region cost more than the loop (much more on a loaded machine).
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace c2w {
constexpr int64_t kParallelWork = int64_t{1} << 17;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
}  // namespace c2w
