// When a loop is worth OpenMP threads: below this many elements of work the wake-up and
// barrier of a parallel region cost more than the loop (much more on a loaded machine).
#pragma once
#include <cstdint>
#include <exception>

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

// An exception must not leave an OpenMP region (the runtime would call std::terminate and
// abort the interpreter): work inside a region runs through run(), which keeps the first
// exception, and rethrow() raises it after the region (std::bad_alloc becomes MemoryError).
class RegionErrors {
 public:
  template <class F>
  bool run(const F& f) noexcept {
    try {
      f();
      return true;
    } catch (...) {
#pragma omp critical(c2w_region_errors)
      if (!first_) first_ = std::current_exception();
      return false;
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::exception_ptr first_;
};
}  // namespace c2w
