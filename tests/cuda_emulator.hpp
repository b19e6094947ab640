// Runs the CUDA C kernels of kernels/*.cu on the CPU, so that CI (no GPU) executes them, not
// only compiles them. Compiled with g++ -std=c++20 around a .cu file by tests/cuda_emulator.py.
//
// A launch runs its blocks one after another; every thread of a block is a std::thread, so the
// threads of a block race for real on the atomics and on the plain loads next to them. The
// 32 lanes of a warp meet at a barrier in each warp collective (ballot, shuffles), as they
// execute one instruction together on a GPU. A full-mask collective after some lanes of the
// warp returned is undefined behaviour on a GPU; here it is reported as an error.
// Memory is the host's: the kernels get CPU tensors' pointers.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};

inline thread_local uint3 threadIdx, blockIdx;
inline uint3 blockDim, gridDim;  // set before a launch's threads start

using std::max;
using std::min;

namespace emulator {

constexpr unsigned kFullMask = 0xffffffffu;

struct Warp {
  explicit Warp(int lanes) : lanes(lanes), meet(lanes) {}
  const int lanes;
  std::barrier<> meet;
  std::atomic<int> returned{0};  // lanes whose kernel function has returned
  long long slot[32] = {};       // one value per lane, exchanged by a collective
};

inline thread_local Warp* this_warp = nullptr;
inline thread_local int this_lane = 0;
inline std::atomic<bool> misuse{false};  // a collective the GPU would not run as written

// Each lane puts in ``mine``; every lane gets ``combine(slots)`` once all have put theirs in.
template <typename Combine>
long long collective(unsigned mask, long long mine, Combine combine) {
  Warp& warp = *this_warp;
  warp.slot[this_lane] = mine;
  warp.meet.arrive_and_wait();
  if (mask != kFullMask || warp.lanes != 32 || warp.returned.load() != 0) misuse = true;
  const long long result = combine(warp.slot);
  warp.meet.arrive_and_wait();  // nobody writes the slots of the next collective before all have read
  return result;
}

template <typename T>
long long bits_of(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(long long));
  long long bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(long long bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

// Runs ``kernel`` on grid dims[0..2] of blocks dims[3..5]; ``args`` point at the arguments'
// values, as cuLaunchKernel takes them. Returns 1 when a warp collective was misused.
template <typename... A>
int launch(void (*kernel)(A...), const unsigned* dims, void** args) {
  gridDim = {dims[0], dims[1], dims[2]};
  blockDim = {dims[3], dims[4], dims[5]};
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  misuse = false;
  for (unsigned bz = 0; bz < gridDim.z; ++bz)
    for (unsigned by = 0; by < gridDim.y; ++by)
      for (unsigned bx = 0; bx < gridDim.x; ++bx) {
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned first = 0; first < threads; first += 32)
          warps.push_back(std::make_unique<Warp>(static_cast<int>(std::min(32u, threads - first))));
        std::vector<std::thread> block;
        block.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          block.emplace_back([&, t] {
            threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
            blockIdx = {bx, by, bz};
            this_warp = warps[t / 32].get();
            this_lane = static_cast<int>(t % 32);
            call(kernel, args, std::index_sequence_for<A...>{});
            ++this_warp->returned;
            this_warp->meet.arrive_and_drop();
          });
        for (std::thread& thread : block) thread.join();
      }
  return misuse ? 1 : 0;
}

template <typename T>
T atomic_update(T* address, T value, bool lower) {
  std::atomic_ref<T> cell(*address);
  T old = cell.load();
  while ((lower ? value < old : value > old) && !cell.compare_exchange_weak(old, value)) {
  }
  return old;
}

}  // namespace emulator

inline int atomicMin(int* address, int value) { return emulator::atomic_update(address, value, true); }
inline int atomicMax(int* address, int value) { return emulator::atomic_update(address, value, false); }

inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(emulator::collective(mask, predicate != 0, [](const long long* slot) {
    unsigned bits = 0;
    for (int lane = 0; lane < 32; ++lane) bits |= (slot[lane] ? 1u : 0u) << lane;
    return static_cast<long long>(bits);
  }));
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane) {
  return emulator::from_bits<T>(emulator::collective(
      mask, emulator::bits_of(value), [&](const long long* slot) { return slot[source_lane & 31]; }));
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  const int partner = (emulator::this_lane ^ lane_mask) & 31;
  return emulator::from_bits<T>(
      emulator::collective(mask, emulator::bits_of(value), [&](const long long* slot) { return slot[partner]; }));
}

#define C2W_EMULATE(name) \
  extern "C" int emulate_##name(const unsigned* dims, void** args) { return emulator::launch(name, dims, args); }
