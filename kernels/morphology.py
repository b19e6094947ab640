"""Binary dilation and erosion of a (z, y, x) uint8 mask by a ball-like element: Triton kernels.

The element is given row by row: ``halfwidth[dz + ez, dy + ey] = w >= 0`` when the offsets
``(dz, dy, dx)`` with ``|dx| <= w`` belong to it, ``-1`` when none of that row does (a ball's
rows along x are centred intervals). Two passes:

1. ``_reach_kernel``: per voxel, the x-distance (int16, capped at ``cap``) to the nearest
   *source* voxel of its row: a foreground voxel for dilation; for erosion a background voxel
   or a position outside the array (scipy's ``border_value=0``).
2. ``_combine_kernel``: ``hit[v] = OR over rows (dz, dy) of reach[v + (dz, dy, 0)] <= w``, so a
   dilation is ``hit`` and an erosion ``not hit``. Rows outside the work box hold no
   foreground (dilation: the box is the mask's box grown by the element) or only background
   (erosion: the box is the mask's box), so they are not read.

Both passes work inside one box (int32 ``(z0, z1, y0, y1, x0, x1)``, inclusive, on the device);
the output outside it is left as allocated (the caller zero-fills).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from c2w_fast.kernels import cdiv, host_to_device


@triton.jit
def _tile(box_ptr, ny, nx, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """This program's z, (y, x) tile, the tile's in-box flags, whether it meets the box, and the box."""
    y_blocks, x_blocks = tl.cdiv(ny, BLOCK_Y), tl.cdiv(nx, BLOCK_X)
    z = tl.program_id(0) // (y_blocks * x_blocks)
    y = (tl.program_id(0) // x_blocks % y_blocks) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    x = (tl.program_id(0) % x_blocks) * BLOCK_X + tl.arange(0, BLOCK_X)
    z0, z1, y0, y1 = tl.load(box_ptr + 0), tl.load(box_ptr + 1), tl.load(box_ptr + 2), tl.load(box_ptr + 3)
    x0, x1 = tl.load(box_ptr + 4), tl.load(box_ptr + 5)
    inside = ((y >= y0) & (y <= y1))[:, None] & ((x >= x0) & (x <= x1))[None, :]
    meets = (z >= z0) & (z <= z1) & (tl.max(tl.max(inside.to(tl.int32), axis=1), axis=0) > 0)
    return z, y[:, None], x[None, :], inside, meets, z0, z1, y0, y1


@triton.jit
def _reach_kernel(mask_ptr, reach_ptr, box_ptr, nz, ny, nx, cap,
                  ERODE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    z, y, x, inside, meets, z0, z1, y0, y1 = _tile(box_ptr, ny, nx, BLOCK_Y, BLOCK_X)
    if meets:
        row = mask_ptr + (z.to(tl.int64) * ny + y) * nx
        reach = tl.full([BLOCK_Y, BLOCK_X], 0, tl.int32) + cap
        for k in range(cap):
            for sign in tl.static_range(2):
                at = x + (2 * sign - 1) * k
                in_array = (at >= 0) & (at < nx)
                value = tl.load(row + at, mask=inside & in_array, other=0) != 0
                if ERODE:
                    source = ~in_array | ~value
                else:
                    source = in_array & value
                reach = tl.where(source & (reach > k), k, reach)
        tl.store(reach_ptr + (z.to(tl.int64) * ny + y) * nx + x, reach.to(tl.int16), mask=inside)


@triton.jit
def _combine_kernel(reach_ptr, out_ptr, box_ptr, halfwidth_ptr, ny, nx, ez, ey,
                    ERODE: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    z, y, x, inside, meets, z0, z1, y0, y1 = _tile(box_ptr, ny, nx, BLOCK_Y, BLOCK_X)
    if meets:
        hit = tl.zeros([BLOCK_Y, BLOCK_X], tl.int32)
        width_y = 2 * ey + 1
        for r in range((2 * ez + 1) * width_y):
            w = tl.load(halfwidth_ptr + r)
            zz = z + r // width_y - ez
            yy = y + r % width_y - ey
            if w >= 0:
                if (zz >= z0) & (zz <= z1):
                    in_box = inside & (yy >= y0) & (yy <= y1)
                    reach = tl.load(reach_ptr + (zz.to(tl.int64) * ny + yy) * nx + x, mask=in_box, other=0)
                    row_hit = in_box & (reach <= w)
                    if ERODE:  # rows beyond the box are background, or outside the array
                        row_hit = row_hit | (inside & ((yy < y0) | (yy > y1)))
                    hit = hit | row_hit.to(tl.int32)
                elif ERODE:
                    hit = hit | inside.to(tl.int32)
        result = hit
        if ERODE:
            result = 1 - hit
        tl.store(out_ptr + (z.to(tl.int64) * ny + y) * nx + x, result.to(tl.uint8), mask=inside)


def dilate_or_erode(mask: torch.Tensor, box: torch.Tensor, halfwidth: np.ndarray, *, erode: bool,
                    block_y: int = 16, block_x: int = 64) -> torch.Tensor:
    """uint8 (z, y, x) dilation (or erosion) of a contiguous uint8 (z, y, x) mask by the element
    ``halfwidth`` (host int (2 ez + 1, 2 ey + 1) table), computed in ``box`` (int32 (6,) on the
    device); 0 outside the box."""
    if mask.dtype != torch.uint8 or mask.ndim != 3 or not mask.is_contiguous():
        raise ValueError(f"mask must be a contiguous (z, y, x) uint8 tensor, got {mask.dtype} {tuple(mask.shape)}")
    halfwidth = np.asarray(halfwidth)
    if halfwidth.ndim != 2 or halfwidth.shape[0] % 2 == 0 or halfwidth.shape[1] % 2 == 0:
        raise ValueError(f"halfwidth must be a (2 ez + 1, 2 ey + 1) table, got shape {halfwidth.shape}")
    nz, ny, nx = mask.shape
    cap = int(halfwidth.max()) + 1
    if cap >= 2**15:
        raise ValueError(f"the element reaches {cap - 1} voxels along x; at most {2**15 - 2} are supported")
    out = torch.zeros_like(mask)
    if mask.numel() == 0:
        return out
    reach = torch.empty(mask.shape, dtype=torch.int16, device=mask.device)
    grid = (nz * cdiv(ny, block_y) * cdiv(nx, block_x),)
    _reach_kernel[grid](mask, reach, box, nz, ny, nx, cap, ERODE=erode, BLOCK_Y=block_y, BLOCK_X=block_x)
    ez, ey = halfwidth.shape[0] // 2, halfwidth.shape[1] // 2
    table = host_to_device(np.ascontiguousarray(halfwidth, dtype=np.int32), torch.int32, mask.device)
    _combine_kernel[grid](reach, out, box, table, ny, nx, ez, ey, ERODE=erode,
                          BLOCK_Y=block_y, BLOCK_X=block_x)
    return out
