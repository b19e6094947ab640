// Connected-component labelling of (items, nz, ny, nx) uint8 masks by union-find; the same
// algorithm as kernels/components.py (read its docstring), one thread per voxel or row.
//
// parent[i] holds a voxel's parent as a linear index over the whole batch (int32: the caller
// checks that the batch has fewer than 2^31 voxels); a root is the smallest index of its set.
// box = per item {z0, z1, y0, y1, x0, x1}, inclusive, holding every foreground voxel.
// Parent values of background voxels and of voxels outside the boxes are left untouched.

// Loads of parent go through volatile pointers: other threads lower them concurrently, and a
// stale value is still an ancestor, so it only costs a retry, never a wrong answer.
__device__ __forceinline__ int find_root(const volatile int* parent, int node) {
  int up = parent[node];
  while (up != node) {
    node = up;
    up = parent[node];
  }
  return node;
}

// Playne & Hawick's lock-free union: hang the larger root under the smaller; when another
// thread moved that root first, continue from the value it left.
__device__ void unite(int* parent, int a, int b) {
  for (;;) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a < b) {
      const int old = atomicMin(parent + b, a);
      if (old == b) return;
      b = old;
    } else {
      const int old = atomicMin(parent + a, b);
      if (old == a) return;
      a = old;
    }
  }
}

struct Box {
  int z0, z1, y0, y1, x0, x1;
};

__device__ __forceinline__ Box load_box(const int* boxes, int item) {
  const int* b = boxes + 6 * item;
  return Box{b[0], b[1], b[2], b[3], b[4], b[5]};
}

// One warp per row (z, y) (blockIdx.x * blockDim.y + threadIdx.y) of an item (blockIdx.y): each foreground voxel points at the first
// voxel of its x-run. Lanes take 32 voxels at a time; the run starts are the set bits of the
// ballot of "foreground, left neighbour not", carried from chunk to chunk.
extern "C" __global__ void component_runs(const unsigned char* mask, int* parent, const int* boxes, int nz,
                                          int ny, int nx) {
  const int item = blockIdx.y;
  const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
  const int lane = threadIdx.x;
  if (row >= (long long)nz * ny) return;
  const int z = (int)(row / ny), y = (int)(row % ny);
  const Box box = load_box(boxes, item);
  if (z < box.z0 || z > box.z1 || y < box.y0 || y > box.y1 || box.x0 > box.x1) return;
  const long long row_start = (((long long)item * nz + z) * ny + y) * nx;
  bool previous_fg = false;  // voxel x0 - 1 lies outside the box: background
  int run_start = 0;
  for (int base = box.x0; base <= box.x1; base += 32) {
    const int x = base + lane;
    const bool fg = x <= box.x1 && mask[row_start + x] != 0;
    const unsigned fg_bits = __ballot_sync(0xffffffffu, fg);
    const unsigned starts = fg_bits & ~((fg_bits << 1) | (previous_fg ? 1u : 0u));
    const unsigned upto = lane == 31 ? starts : starts & ((2u << lane) - 1u);
    const int start = upto ? base + 31 - __clz(upto) : run_start;
    if (fg) parent[row_start + x] = (int)(row_start + start);
    run_start = __shfl_sync(0xffffffffu, start, 31);
    previous_fg = (fg_bits >> 31) & 1u;
  }
}

__device__ __forceinline__ bool is_fg(const unsigned char* mask, long long index) { return mask[index] != 0; }

// The voxel of this thread: blockIdx.x runs over (row z * ny + y, block of x), x fastest, and
// blockIdx.y over items. False when it lies outside its item's box.
__device__ __forceinline__ bool voxel_of_thread(const int* boxes, int nz, int ny, int nx, Box& box, int& z, int& y,
                                                int& x, long long& here) {
  const int item = blockIdx.y;
  const unsigned x_blocks = (nx + blockDim.x - 1) / blockDim.x;
  const unsigned row = blockIdx.x / x_blocks;
  x = (int)((blockIdx.x % x_blocks) * blockDim.x + threadIdx.x);
  z = (int)(row / ny);
  y = (int)(row % ny);
  box = load_box(boxes, item);
  here = (((long long)item * nz + z) * ny + y) * nx + x;
  return x >= box.x0 && x <= box.x1 && z >= box.z0 && z <= box.z1 && y >= box.y0 && y <= box.y1;
}

// One thread per voxel: join the runs of the rows before it that touch it, each neighbouring
// run once (see components.py). reach = squared offset allowed: 1 (6-connected), 2 (18), 3 (26).
extern "C" __global__ void component_merge(const unsigned char* mask, int* parent, const int* boxes, int nz, int ny,
                                           int nx, int reach) {
  Box box;
  int z, y, x;
  long long here;
  if (!voxel_of_thread(boxes, nz, ny, nx, box, z, y, x, here) || !is_fg(mask, here)) return;
  const bool left = x - 1 >= box.x0 && is_fg(mask, here - 1);
  const int dzs[4] = {-1, -1, -1, 0}, dys[4] = {-1, 0, 1, -1};
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int dz = dzs[r], dy = dys[r];
    const int squared = dz * dz + dy * dy;
    if (squared > reach || z + dz < box.z0 || y + dy < box.y0 || y + dy > box.y1) continue;
    const long long row = here + ((long long)dz * ny + dy) * nx;
    const bool before = x - 1 >= box.x0 && is_fg(mask, row - 1);
    const bool middle = is_fg(mask, row);
    const bool after = x + 1 <= box.x1 && is_fg(mask, row + 1);
    if (squared + 1 <= reach) {  // the row touches at dx = -1, 0, 1
      if (before && !left) unite(parent, (int)here, (int)(row - 1));
      if (middle && !left && !before) unite(parent, (int)here, (int)row);
      if (after && !middle) unite(parent, (int)here, (int)(row + 1));
    } else if (middle && !(left && before)) {  // only at dx = 0
      unite(parent, (int)here, (int)row);
    }
  }
}

// One thread per voxel: every foreground voxel points straight at its root.
extern "C" __global__ void component_flatten(const unsigned char* mask, int* parent, const int* boxes, int nz, int ny,
                                             int nx) {
  Box box;
  int z, y, x;
  long long here;
  if (!voxel_of_thread(boxes, nz, ny, nx, box, z, y, x, here) || !is_fg(mask, here)) return;
  parent[here] = find_root(parent, parent[here]);
}
