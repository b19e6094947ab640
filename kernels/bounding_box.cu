// Bounding box of the nonzero voxels of a contiguous (nz, ny, nx) uint8 mask.
// Each thread folds a grid-stride slice into local extremes; one lane per warp then
// publishes them with six atomics, so atomics scale with warps, not with hits.

__device__ __forceinline__ int warp_min(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ int warp_max(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// box = {z0, z1, y0, y1, x0, x1}, initialised by the launcher to {big, -1, big, -1, big, -1};
// z1/y1/x1 are inclusive here and made half-open by the launcher.
extern "C" __global__ void bounding_box(const unsigned char* mask, long long n, int ny, int nx, int* box) {
  const int big = 0x7fffffff;
  int z0 = big, z1 = -1, y0 = big, y1 = -1, x0 = big, x1 = -1;
  const long long plane = (long long)ny * nx;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    if (mask[i] == 0) continue;
    const int z = (int)(i / plane);
    const long long rest = i - z * plane;
    const int y = (int)(rest / nx);
    const int x = (int)(rest - (long long)y * nx);
    z0 = min(z0, z); z1 = max(z1, z);
    y0 = min(y0, y); y1 = max(y1, y);
    x0 = min(x0, x); x1 = max(x1, x);
  }
  z0 = warp_min(z0); z1 = warp_max(z1);
  y0 = warp_min(y0); y1 = warp_max(y1);
  x0 = warp_min(x0); x1 = warp_max(x1);
  if ((threadIdx.x & 31) == 0 && z1 >= 0) {
    atomicMin(box + 0, z0); atomicMax(box + 1, z1);
    atomicMin(box + 2, y0); atomicMax(box + 3, y1);
    atomicMin(box + 4, x0); atomicMax(box + 5, x1);
  }
}
