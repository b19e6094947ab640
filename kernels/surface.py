"""Surface elements and the reductions over them: Triton kernels for the GPU surface metrics.

* :func:`surface_codes` — per item of a (items, z, y, x) mask batch, either the surfel
  neighbour codes on the corner grid (``c2w_fast.ops._surfels``: corner ``c`` sees the voxels
  ``c - 1 + (a, b, d)``, which set bit ``7 - (4a + 2b + d)``; in 2D ``3 - (2b + d)``) or the
  boundary-voxel flags (1 on foreground voxels with a background face neighbour, the outside
  of the array counting as background).
* :func:`surface_moments` — per item, over its surface elements (code neither 0 nor ``FULL``)
  with weight ``table[code]`` and distance ``d = sqrt(f)``: the sums ``sum w``, ``sum w d``,
  ``sum w [d within the tolerance]`` and ``max d``, as per-program partials (float64).
* :func:`weighted_histogram` — one round of a radix selection: the weights of the elements whose
  float32 squared distance ``f`` matches a slot's known high bits, binned by the next bits.

Work is restricted to per-item boxes held on the device (int32 ``(z0, z1, y0, y1, x0, x1)``,
inclusive), so nothing here waits for the host.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from c2w_fast.kernels import cdiv, host_to_device
from c2w_fast.kernels.edt import is_site

SURFEL, BOUNDARY = 0, 1


@triton.jit
def _voxel(item_ptr, z, y, x, nz, ny, nx):
    """uint8 mask values at (z, y, x) (a tile), 0 outside the array."""
    inside = (z >= 0) & (z < nz) & (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
    offset = (z.to(tl.int64) * ny + y) * nx + x
    return (tl.load(item_ptr + offset, mask=inside, other=0) != 0).to(tl.int32)


@triton.jit
def _tile(box_ptr, nz, ny, nx, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    """This program's (z, y-tile, x-tile) of a grid and whether it meets the box."""
    y_blocks, x_blocks = tl.cdiv(ny, BLOCK_Y), tl.cdiv(nx, BLOCK_X)
    tile = tl.program_id(0)
    z = tile // (y_blocks * x_blocks)
    y = (tile // x_blocks % y_blocks) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    x = (tile % x_blocks) * BLOCK_X + tl.arange(0, BLOCK_X)
    inside = ((y >= tl.load(box_ptr + 2)) & (y <= tl.load(box_ptr + 3)))[:, None] \
        & ((x >= tl.load(box_ptr + 4)) & (x <= tl.load(box_ptr + 5)))[None, :]
    z_inside = (z >= tl.load(box_ptr + 0)) & (z <= tl.load(box_ptr + 1))
    meets = z_inside & (tl.max(tl.max(inside.to(tl.int32), axis=1), axis=0) > 0)
    # z as a (1, 1) tile: scalar-and-tile masks trip Triton's interpreter
    return z + tl.zeros([1, 1], tl.int32), y[:, None], x[None, :], inside, meets


@triton.jit
def _codes_kernel(mask_ptr, out_ptr, box_ptr, nz, ny, nx, oz, oy, ox,
                  KIND: tl.constexpr, NDIM: tl.constexpr, BOX_DIV: tl.constexpr,
                  BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    item = tl.program_id(1)
    z, y, x, inside, meets = _tile(box_ptr + (item // BOX_DIV) * 6, oz, oy, ox, BLOCK_Y, BLOCK_X)
    if meets:
        mask = mask_ptr + item.to(tl.int64) * nz * ny * nx
        if KIND == 0:  # surfel codes on the corner grid
            if NDIM == 3:
                code = (_voxel(mask, z - 1, y - 1, x - 1, nz, ny, nx) << 7) \
                    | (_voxel(mask, z - 1, y - 1, x, nz, ny, nx) << 6) \
                    | (_voxel(mask, z - 1, y, x - 1, nz, ny, nx) << 5) \
                    | (_voxel(mask, z - 1, y, x, nz, ny, nx) << 4) \
                    | (_voxel(mask, z, y - 1, x - 1, nz, ny, nx) << 3) \
                    | (_voxel(mask, z, y - 1, x, nz, ny, nx) << 2) \
                    | (_voxel(mask, z, y, x - 1, nz, ny, nx) << 1) \
                    | _voxel(mask, z, y, x, nz, ny, nx)
            else:
                code = (_voxel(mask, z, y - 1, x - 1, nz, ny, nx) << 3) \
                    | (_voxel(mask, z, y - 1, x, nz, ny, nx) << 2) \
                    | (_voxel(mask, z, y, x - 1, nz, ny, nx) << 1) \
                    | _voxel(mask, z, y, x, nz, ny, nx)
        else:  # boundary voxels: inside, with a face neighbour outside
            interior = _voxel(mask, z, y, x - 1, nz, ny, nx) & _voxel(mask, z, y, x + 1, nz, ny, nx) \
                & _voxel(mask, z, y - 1, x, nz, ny, nx) & _voxel(mask, z, y + 1, x, nz, ny, nx)
            if NDIM == 3:
                interior = interior & _voxel(mask, z - 1, y, x, nz, ny, nx) & _voxel(mask, z + 1, y, x, nz, ny, nx)
            code = _voxel(mask, z, y, x, nz, ny, nx) & (1 - interior)
        offset = item.to(tl.int64) * oz * oy * ox + (z.to(tl.int64) * oy + y) * ox + x
        tl.store(out_ptr + offset, code.to(tl.uint8), mask=inside)


@triton.jit
def _load_elements(f_ptr, code_ptr, table_ptr, item, z, y, x, inside, nz, ny, nx, FULL: tl.constexpr):
    """Squared distances, weights (float64) and surface flags of a tile of one item's grid."""
    offset = item.to(tl.int64) * nz * ny * nx + (z.to(tl.int64) * ny + y) * nx + x
    code = tl.load(code_ptr + offset, mask=inside, other=0)
    element = inside & is_site(code, 2, FULL)
    f = tl.load(f_ptr + offset, mask=element, other=0.0)
    weight = tl.load(table_ptr + code.to(tl.int32), mask=element, other=0.0)
    return f, weight, element


@triton.jit
def _near_partner(code_ptr, item, z, y, x, band, offsets_ptr, n_offsets, nz, ny, nx, FULL: tl.constexpr):
    """Where ``band`` is set: whether the partner item (``item ^ 1``) has a surface element at one of
    the ``n_offsets`` grid offsets (int32 (dz, dy, dx) rows)."""
    partner = code_ptr + (item ^ 1).to(tl.int64) * nz * ny * nx
    hit = band & False
    if tl.max(tl.max(band.to(tl.int32), axis=1), axis=0) > 0:  # a tile without band elements skips the lookups
        for j in range(n_offsets):
            zz = z + tl.load(offsets_ptr + 3 * j)
            yy = y + tl.load(offsets_ptr + 3 * j + 1)
            xx = x + tl.load(offsets_ptr + 3 * j + 2)
            look = band & (zz >= 0) & (zz < nz) & (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            code = tl.load(partner + (zz.to(tl.int64) * ny + yy) * nx + xx, mask=look, other=0)
            hit = hit | (look & is_site(code, 2, FULL))
    return hit


@triton.jit
def _moments_kernel(f_ptr, code_ptr, table_ptr, box_ptr, partial_ptr, nz, ny, nx, bounds_ptr, offsets_ptr, n_offsets,
                    FULL: tl.constexpr, BOX_DIV: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    item = tl.program_id(1)
    z, y, x, inside, meets = _tile(box_ptr + (item // BOX_DIV) * 6, nz, ny, nx, BLOCK_Y, BLOCK_X)
    out = partial_ptr + (item.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * 4
    if meets:
        f, weight, element = _load_elements(f_ptr, code_ptr, table_ptr, item, z, y, x, inside, nz, ny, nx, FULL)
        distance = tl.sqrt(f.to(tl.float64))  # float64: PTX has only the IEEE-rounded sqrt.rn.f64
        lower, upper = tl.load(bounds_ptr), tl.load(bounds_ptr + 1)  # float64: Python floats would arrive as float32
        band = element & (distance > lower) & (distance <= upper)
        within = (distance <= lower) | _near_partner(code_ptr, item, z, y, x, band, offsets_ptr, n_offsets,
                                                     nz, ny, nx, FULL)
        tl.store(out + 0, tl.sum(tl.sum(weight, axis=1), axis=0))
        tl.store(out + 1, tl.sum(tl.sum(weight * distance, axis=1), axis=0))
        tl.store(out + 2, tl.sum(tl.sum(tl.where(within, weight, 0.0), axis=1), axis=0))
        tl.store(out + 3, tl.max(tl.max(tl.where(element, distance, 0.0), axis=1), axis=0))


@triton.jit
def _histogram_kernel(f_ptr, code_ptr, table_ptr, box_ptr, prefix_ptr, hist_ptr, nz, ny, nx,
                      FULL: tl.constexpr, BOX_DIV: tl.constexpr, GROUP_DIV: tl.constexpr, SLOTS: tl.constexpr,
                      SHIFT: tl.constexpr, KNOWN: tl.constexpr, BINS: tl.constexpr,
                      BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    item = tl.program_id(1)
    z, y, x, inside, meets = _tile(box_ptr + (item // BOX_DIV) * 6, nz, ny, nx, BLOCK_Y, BLOCK_X)
    if meets:
        f, weight, element = _load_elements(f_ptr, code_ptr, table_ptr, item, z, y, x, inside, nz, ny, nx, FULL)
        bits = f.to(tl.int32, bitcast=True)  # f >= 0: the bit patterns sort as the values
        bin_ = (bits >> SHIFT) & (BINS - 1)
        for s in tl.static_range(SLOTS):
            slot = (item // GROUP_DIV) * SLOTS + s
            prefix = tl.load(prefix_ptr + slot)
            match = element & ((bits >> KNOWN) == (prefix >> KNOWN))
            # the lowest bin (most often exact zeros: coinciding surfaces) is summed here first,
            # so that its many elements cost one atomic per program, not one each
            lowest = match & (bin_ == 0)
            hist = hist_ptr + slot.to(tl.int64) * BINS
            tl.atomic_add(hist, tl.sum(tl.sum(tl.where(lowest, weight, 0.0), axis=1), axis=0))
            tl.atomic_add(hist + bin_, weight, mask=match & (bin_ != 0))


def _grid(shape, block_y: int, block_x: int) -> tuple[int, int]:
    items, nz, ny, nx = shape
    return nz * cdiv(ny, block_y) * cdiv(nx, block_x), items


def _check(tensor: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if tensor.dtype != dtype or tensor.ndim != 4 or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous (items, z, y, x) {dtype} tensor, "
                         f"got {tensor.dtype} {tuple(tensor.shape)}")


def surface_codes(masks: torch.Tensor, boxes: torch.Tensor, *, kind: int, ndim: int, box_div: int = 1,
                  block_y: int = 16, block_x: int = 64) -> torch.Tensor:
    """Surfel codes (``kind=SURFEL``, on the corner grid) or boundary flags (``BOUNDARY``) of a
    (items, z, y, x) uint8 batch; ``ndim`` 2 for (items, 1, y, x) views of 2D masks. ``boxes``
    (items // box_div, 6) bound the output grid's work; the rest of the output is 0."""
    _check(masks, "masks", torch.uint8)
    items, nz, ny, nx = masks.shape
    if kind == SURFEL:
        shape = (items, nz + 1 if ndim == 3 else 1, ny + 1, nx + 1)
    else:
        shape = tuple(masks.shape)
    out = torch.zeros(shape, dtype=torch.uint8, device=masks.device)
    if out.numel():
        _codes_kernel[_grid(shape, block_y, block_x)](masks, out, boxes, nz, ny, nx, *shape[1:], KIND=kind,
                                                      NDIM=ndim, BOX_DIV=box_div, BLOCK_Y=block_y, BLOCK_X=block_x)
    return out


def surface_moments(f: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, boxes: torch.Tensor, *,
                    lower: float, upper: float, offsets, full: int, box_div: int = 1, block_y: int = 16,
                    block_x: int = 64) -> torch.Tensor:
    """(items, 4) float64: ``sum w``, ``sum w d``, ``sum w [within]``, ``max d`` over each item's
    surface elements (``d = sqrt(f)`` in mm, ``w = table[code]``). ``within``: ``d <= lower``, or
    ``d <= upper`` and the partner item ``i ^ 1`` has a surface element at one of ``offsets``
    (int (n, 3) grid steps; ``c2w_fast.ops._within.WithinRule``)."""
    _check(f, "f", torch.float32)
    _check(codes, "codes", torch.uint8)
    grid = _grid(tuple(f.shape), block_y, block_x)
    partial = torch.zeros((f.shape[0], grid[0], 4), dtype=torch.float64, device=f.device)
    if f.numel():
        bounds = host_to_device([lower, upper], torch.float64, f.device)
        steps = np.array(offsets, dtype=np.int32).reshape(-1, 3)  # a copy: the rule's array is read-only
        steps_t = host_to_device(steps if len(steps) else np.zeros((1, 3), np.int32), torch.int32, f.device)
        _moments_kernel[grid](f, codes, table, boxes, partial, *f.shape[1:], bounds, steps_t, len(steps), FULL=full,
                              BOX_DIV=box_div, BLOCK_Y=block_y, BLOCK_X=block_x)
    sums = partial[..., :3].sum(dim=1)
    return torch.cat([sums, partial[..., 3].amax(dim=1, keepdim=True)], dim=1)


def weighted_histogram(f: torch.Tensor, codes: torch.Tensor, table: torch.Tensor, boxes: torch.Tensor,
                       prefix: torch.Tensor, *, shift: int, known: int, bins: int, full: int, box_div: int = 1,
                       group_div: int = 1, block_y: int = 16, block_x: int = 64) -> torch.Tensor:
    """(slots, bins) float64 weights of one radix-selection round.

    Item ``i`` feeds the ``prefix.numel() // groups`` slots of group ``i // group_div``; an element
    counts in a slot when ``f``'s bits above ``known`` equal the slot's ``prefix`` there, in bin
    ``(bits >> shift) & (bins - 1)``.
    """
    items = f.shape[0]
    slots = prefix.numel() // (items // group_div)
    hist = torch.zeros((prefix.numel(), bins), dtype=torch.float64, device=f.device)
    if f.numel():
        _histogram_kernel[_grid(tuple(f.shape), block_y, block_x)](
            f, codes, table, boxes, prefix, hist, *f.shape[1:], FULL=full, BOX_DIV=box_div, GROUP_DIV=group_div,
            SLOTS=slots, SHIFT=shift, KNOWN=known, BINS=bins, BLOCK_Y=block_y, BLOCK_X=block_x)
    return hist
