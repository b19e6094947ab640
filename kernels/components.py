"""Connected-component labelling of (items, z, y, x) uint8 masks by union-find: Triton kernels
and the launcher of their CUDA C twins (``components.cu``).

The parent forest lives in an int32 array over the voxels' linear indices (items folded in);
a root is always the smallest index of its set, so after the last merge every root is the
first voxel of its component in raster order — the numbering scipy.ndimage.label uses.

1. ``_runs_kernel``: every foreground voxel points at the first voxel of its x-run (a
   triangular max inside chunks of the row, carried between chunks), which joins the runs
   along x without any atomic.
2. ``_merge_kernel``: each foreground voxel joins its backward neighbours (those before it in
   raster order) of the connectivity other than x - 1 — only the first voxel of each run
   of neighbours, as the runs are joined already: find both roots, hang the larger root
   under the smaller with ``atomic_min``, retry from the returned value if another program
   moved it first (Playne & Hawick's lock-free union, vectorised over a tile).
3. ``_flatten_kernel``: every foreground voxel points straight at its root.

Parent values of background voxels and of voxels outside the per-item box are undefined.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from c2w_fast.kernels import _nvrtc, cdiv
from c2w_fast.kernels.edt import running_extreme

CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


@triton.jit
def _row_tile(box_ptr, ny, BLOCK_R: tl.constexpr):
    """This program's item, (z, y) rows, their flag of lying in the item's box, and its x range."""
    item = tl.program_id(1)
    box = box_ptr + item * 6
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    z, y = rows // ny, rows % ny
    live = (z >= tl.load(box + 0)) & (z <= tl.load(box + 1)) & (y >= tl.load(box + 2)) & (y <= tl.load(box + 3))
    return item, z, y, live, tl.load(box + 4), tl.load(box + 5)


@triton.jit
def _runs_kernel(mask_ptr, parent_ptr, box_ptr, nz, ny, nx, BLOCK_R: tl.constexpr, CHUNK: tl.constexpr):
    item, z, y, live, x0, x1 = _row_tile(box_ptr, ny, BLOCK_R)
    live = live & (z < nz)
    if (tl.max(live.to(tl.int32), axis=0) > 0) & (x0 <= x1):
        row_start = ((item.to(tl.int64) * nz + z) * ny + y) * nx
        start = tl.full([BLOCK_R], -1, tl.int32)  # x of the current run's first voxel
        for c in range(tl.cdiv(x1 - x0 + 1, CHUNK)):
            x = x0 + c * CHUNK + tl.arange(0, CHUNK)
            inside = live[:, None] & (x <= x1)[None, :]
            here = tl.load(mask_ptr + row_start[:, None] + x[None, :], mask=inside, other=0) != 0
            before = tl.load(mask_ptr + row_start[:, None] + x[None, :] - 1,
                             mask=inside & (x > 0)[None, :], other=0) != 0
            first = tl.where(here & ~before, x[None, :], -1)
            first = tl.maximum(running_extreme(first, True, CHUNK), start[:, None])
            tl.store(parent_ptr + row_start[:, None] + x[None, :], (row_start[:, None] + first).to(tl.int32),
                     mask=inside & here)
            start = tl.max(first, axis=1)


@triton.jit
def _find(parent_ptr, node, active):
    """Roots of ``node`` (lanes where ``active``), following parents without writing."""
    up = tl.load(parent_ptr + node, mask=active, other=0)
    moving = active & (up != node)
    while tl.max(moving.to(tl.int32), axis=0) > 0:
        node = tl.where(moving, up, node)
        up = tl.load(parent_ptr + node, mask=moving, other=0)
        moving = moving & (up != node)
    return node


@triton.jit
def _row_block(box_ptr, nz, ny, nx, BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr):
    """This program's lanes: BLOCK_X voxels of each of BLOCK_R rows (z, y) of one item, as one
    vector: their z, y, x, linear indices, the flag of lying in the box, and the box."""
    item = tl.program_id(1)
    box = box_ptr + item * 6
    x_blocks = tl.cdiv(nx, BLOCK_X)
    lane = tl.arange(0, BLOCK_R * BLOCK_X)
    row = (tl.program_id(0) // x_blocks) * BLOCK_R + lane // BLOCK_X
    z, y = row // ny, row % ny
    x = (tl.program_id(0) % x_blocks) * BLOCK_X + lane % BLOCK_X
    z0, z1, y0, y1 = tl.load(box + 0), tl.load(box + 1), tl.load(box + 2), tl.load(box + 3)
    x0, x1 = tl.load(box + 4), tl.load(box + 5)
    inside = (z >= z0) & (z <= z1) & (y >= y0) & (y <= y1) & (x >= x0) & (x <= x1)
    here = ((item.to(tl.int64) * nz + z) * ny + y) * nx + x
    return z, y, x, here, inside, z0, y0, y1, x0, x1


@triton.jit
def _unite(parent_ptr, a, b, active):
    """Join the sets of ``a`` and ``b`` (lanes where ``active``): Playne & Hawick's lock-free union."""
    while tl.max(active.to(tl.int32), axis=0) > 0:
        a = _find(parent_ptr, a, active)
        b = _find(parent_ptr, b, active)
        a_smaller = active & (a < b)
        b_smaller = active & (b < a)
        moved = a_smaller | b_smaller
        high = tl.where(a_smaller, b, a)
        old = tl.atomic_min(parent_ptr + high, tl.where(a_smaller, a, b), mask=moved)
        done = moved & (old == high)  # else another program moved `high` first: retry from there
        b = tl.where(a_smaller & ~done, old, b)
        a = tl.where(b_smaller & ~done, old, a)
        active = active & (a != b) & ~done


@triton.jit
def _merge_kernel(mask_ptr, parent_ptr, box_ptr, nz, ny, nx, RANK: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program: BLOCK_X voxels of BLOCK_R rows (z, y) of one item. The rows before a row that
    # may touch it are (dz, dy) = (-1, -1), (-1, 0), (-1, 1), (0, -1): within reach RANK
    # (squared offset), a row touches at dx = -1, 0, 1 ("full") or only at dx = 0.
    z, y, x, here, inside, z0, y0, y1, x0, x1 = _row_block(box_ptr, nz, ny, nx, BLOCK_R, BLOCK_X)
    if tl.max(inside.to(tl.int32), axis=0) > 0:
        fg = inside & (tl.load(mask_ptr + here, mask=inside, other=0) != 0)
        left = fg & (x - 1 >= x0) & (tl.load(mask_ptr + here - 1, mask=fg & (x - 1 >= x0), other=0) != 0)
        for r in tl.static_range(4):
            # r = 0, 1, 2, 3: (-1, -1), (-1, 0), (-1, 1), (0, -1). Derived from the unrolled index, these
            # are compile-time values; a `tl.constexpr` annotation would be a reassignment per iteration,
            # which the GPU compiler refuses (the interpreter does not check it).
            dz = r // 3 - 1
            dy = r % 3 - 1
            full = dz * dz + dy * dy + 1 <= RANK
            if dz * dz + dy * dy <= RANK:
                near = fg & (z + dz >= z0) & (y + dy >= y0) & (y + dy <= y1)
                row = here + (dz * ny + dy) * nx
                a = here.to(tl.int32)
                at_left = near & (x - 1 >= x0)
                at_right = near & (x + 1 <= x1)
                before = at_left & (tl.load(mask_ptr + row - 1, mask=at_left, other=0) != 0)
                middle = near & (tl.load(mask_ptr + row, mask=near, other=0) != 0)
                after = at_right & (tl.load(mask_ptr + row + 1, mask=at_right, other=0) != 0)
                # Voxels of one run share a root, and so do the neighbours of one run in the other
                # row: join each neighbouring run once, at its first voxel the run reaches
                # (x - 1 of this run already joined what lies at x - 1 and x in that row).
                if full:
                    _unite(parent_ptr, a, (row - 1).to(tl.int32), before & ~left)
                    _unite(parent_ptr, a, row.to(tl.int32), middle & ~left & ~before)
                    _unite(parent_ptr, a, (row + 1).to(tl.int32), after & ~middle)
                else:
                    _unite(parent_ptr, a, row.to(tl.int32), middle & ~(left & before))


@triton.jit
def _flatten_kernel(mask_ptr, parent_ptr, box_ptr, nz, ny, nx, BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr):
    z, y, x, here, inside, z0, y0, y1, x0, x1 = _row_block(box_ptr, nz, ny, nx, BLOCK_R, BLOCK_X)
    if tl.max(inside.to(tl.int32), axis=0) > 0:
        fg = inside & (tl.load(mask_ptr + here, mask=inside, other=0) != 0)
        node = tl.load(parent_ptr + here, mask=fg, other=0)
        tl.store(parent_ptr + here, _find(parent_ptr, node, fg), mask=fg)


def _check(masks: torch.Tensor) -> None:
    if masks.dtype != torch.uint8 or masks.ndim != 4 or not masks.is_contiguous():
        raise ValueError(f"masks must be a contiguous (items, z, y, x) uint8 tensor, got {masks.dtype} "
                         f"{tuple(masks.shape)}")
    if masks.numel() >= 2**31:
        raise ValueError(f"masks must hold fewer than 2**31 voxels for int32 labels, got {masks.numel()}")


def component_roots(masks: torch.Tensor, boxes: torch.Tensor, connectivity: int, *,
                    block_r: int = 8, chunk_x: int = 32, merge_rows: int = 4, block_x: int = 64) -> torch.Tensor:
    """int32 (items, z, y, x): for each foreground voxel the linear index (over the whole batch)
    of its component's first voxel in raster order; undefined elsewhere.

    Args:
        masks: contiguous (items, z, y, x) uint8 masks, fewer than 2**31 voxels in all.
        boxes: int32 (items, 6) inclusive boxes holding every foreground voxel of each item.
        connectivity: 6, 18 or 26 (a 2D mask as one slice: 4 behaves as 6, 8 as 26).
    """
    _check(masks)
    items, nz, ny, nx = masks.shape
    parent = torch.empty(masks.shape, dtype=torch.int32, device=masks.device)
    if masks.numel() == 0:
        return parent
    _runs_kernel[(cdiv(nz * ny, block_r), items)](masks, parent, boxes, nz, ny, nx,
                                                         BLOCK_R=block_r, CHUNK=chunk_x)
    tiles = (cdiv(nz * ny, merge_rows) * cdiv(nx, block_x), items)
    _merge_kernel[tiles](masks, parent, boxes, nz, ny, nx, RANK=CONNECTIVITY_RANK[connectivity],
                         BLOCK_R=merge_rows, BLOCK_X=block_x)
    _flatten_kernel[tiles](masks, parent, boxes, nz, ny, nx, BLOCK_R=merge_rows, BLOCK_X=block_x)
    return parent


def component_roots_cuda(masks: torch.Tensor, boxes: torch.Tensor, connectivity: int) -> torch.Tensor:
    """The same as :func:`component_roots`, with the CUDA C kernels of ``components.cu``."""
    _check(masks)
    items, nz, ny, nx = masks.shape
    parent = torch.empty(masks.shape, dtype=torch.int32, device=masks.device)
    if masks.numel() == 0:
        return parent
    rows_per_block, threads = 8, 128
    sizes = (np.int32(nz), np.int32(ny), np.int32(nx))
    _nvrtc.launch("components.cu", "component_runs", (cdiv(nz * ny, rows_per_block), items),
                  (32, rows_per_block), (masks, parent, boxes, *sizes), masks.device)
    voxels = (nz * ny * cdiv(nx, threads), items)
    _nvrtc.launch("components.cu", "component_merge", voxels, (threads,),
                  (masks, parent, boxes, *sizes, np.int32(CONNECTIVITY_RANK[connectivity])), masks.device)
    _nvrtc.launch("components.cu", "component_flatten", voxels, (threads,), (masks, parent, boxes, *sizes),
                  masks.device)
    return parent
