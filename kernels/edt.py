"""Exact anisotropic squared Euclidean distance transform on (items, z, y, x) grids: Triton kernels.

The transform is separable. Pass x finds, per row, the nearest site left and right by two
sweeps over chunks of the row (a triangular max/min inside each chunk, carried between
chunks). Passes y and z then take ``d(v) = min_w f(w) + s^2 (v - w)^2`` along their axis in
one of two ways:

* search: outwards from ``v``, stopping at the step ``k`` where ``s^2 k^2`` reaches the best
  value found, since no farther ``w`` can beat it (``f >= 0``). The cost follows the distances
  themselves, not the line length, every step of a tile reads whole rows of neighbouring x
  (coalesced), and a last pass can be restricted to query points. Best for short distances.
* envelope: Felzenszwalb & Huttenlocher's lower envelope of parabolas, one lane per column,
  linear in the column length whatever the distances (breakpoints in float64, as the CPU
  backend keeps them).

Every kernel works inside a per-item box ``(z0, z1, y0, y1, x0, x1)`` (inclusive, int32, on
the device; empty when a low end exceeds its high end) and leaves the rest of the output
untouched, so batches of items with different boxes need no host synchronisation. Values are
float32 squared distances in mm^2, ``+inf`` where no site lies in the box.

Which grid points are sites (``SITE``): 0 = value zero (distance to the background), 1 =
value nonzero (distance to the mask), 2 = a surface code, neither 0 nor ``FULL``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from c2w_fast.kernels import cdiv

SITE_ZERO, SITE_NONZERO, SITE_SURFACE = 0, 1, 2
SEARCH_LENGTH = 64  # "auto": axes up to this long are searched, longer ones take the envelope


@triton.jit
def is_site(value, SITE: tl.constexpr, FULL: tl.constexpr):
    """Which grid values are sites (module docstring)."""
    if SITE == 0:
        result = value == 0
    elif SITE == 1:
        result = value != 0
    else:
        result = (value != 0) & (value != FULL)
    return result


@triton.jit
def running_extreme(position, FORWARD: tl.constexpr, CHUNK: tl.constexpr):
    """Per row of a (rows, CHUNK) tile, the max of ``position`` over columns at or before each
    column (``FORWARD``), or the min over columns at or after it: a triangular reduction, which
    costs CHUNK operations per element in registers and no scan."""
    column = tl.arange(0, CHUNK)
    if FORWARD:
        reach = column[None, :] <= column[:, None]  # [i, j]: j at or before i
        result = tl.max(tl.where(reach[None, :, :], position[:, None, :], -1), axis=2)
    else:
        reach = column[None, :] >= column[:, None]
        result = tl.min(tl.where(reach[None, :, :], position[:, None, :], 2**30), axis=2)
    return result


@triton.jit
def _pass_x_kernel(src_ptr, out_ptr, box_ptr, nz, ny, nx, step2,
                   PAIRED: tl.constexpr, BOX_DIV: tl.constexpr, SITE: tl.constexpr, FULL: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program: BLOCK_R rows (z, y) of one item, swept along x in chunks of BLOCK_X.
    item = tl.program_id(1)
    box = box_ptr + (item // BOX_DIV) * 6
    z0, z1 = tl.load(box + 0), tl.load(box + 1)
    y0, y1 = tl.load(box + 2), tl.load(box + 3)
    x0, x1 = tl.load(box + 4), tl.load(box + 5)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    z, y = rows // ny, rows % ny
    live = (rows < nz * ny) & (z >= z0) & (z <= z1) & (y >= y0) & (y <= y1)
    if (tl.max(live.to(tl.int32), axis=0) > 0) & (x0 <= x1):
        site_item = item
        if PAIRED:  # paired items measure to their partner's sites
            site_item = item ^ 1
        row_offset = rows.to(tl.int64) * nx
        # item first: a size of 1 arrives as a constexpr int on a GPU (Triton specialises it), not a tensor
        src_rows = src_ptr + site_item.to(tl.int64) * nz * ny * nx + row_offset
        out_rows = out_ptr + item.to(tl.int64) * nz * ny * nx + row_offset
        chunks = tl.cdiv(x1 - x0 + 1, BLOCK_X)
        # forward: steps back to the last site at or before x (stored, then refined)
        last = tl.full([BLOCK_R], -1, tl.int32)
        for c in range(chunks):
            x = x0 + c * BLOCK_X + tl.arange(0, BLOCK_X)
            inside = live[:, None] & (x <= x1)[None, :]
            value = tl.load(src_rows[:, None] + x[None, :], mask=inside, other=0)
            position = tl.where(is_site(value, SITE, FULL) & inside, x[None, :], -1)
            position = tl.maximum(running_extreme(position, True, BLOCK_X), last[:, None])
            steps = tl.where(position >= 0, (x[None, :] - position).to(tl.float32), float("inf"))
            tl.store(out_rows[:, None] + x[None, :], steps, mask=inside)
            last = tl.max(position, axis=1)
        # the backward sweep reads what the forward one stored, perhaps from other threads
        tl.debug_barrier()
        # backward: steps on to the next site, the nearer of both, squared in mm^2
        following = tl.full([BLOCK_R], 2**30, tl.int32)
        for c in range(chunks):
            x = x1 - (c + 1) * BLOCK_X + 1 + tl.arange(0, BLOCK_X)
            inside = live[:, None] & (x >= x0)[None, :]
            value = tl.load(src_rows[:, None] + x[None, :], mask=inside, other=0)
            position = tl.where(is_site(value, SITE, FULL) & inside, x[None, :], 2**30)
            position = tl.minimum(running_extreme(position, False, BLOCK_X), following[:, None])
            ahead = tl.where(position < 2**30, (position - x[None, :]).to(tl.float32), float("inf"))
            steps = tl.minimum(tl.load(out_rows[:, None] + x[None, :], mask=inside, other=0.0), ahead)
            # steps^2 is exact in float32 below 4096 steps, so the square costs one rounding
            tl.store(out_rows[:, None] + x[None, :], steps * steps * step2, mask=inside)
            following = tl.min(position, axis=1)


@triton.jit
def _columns(box_ptr, item, nz, ny, nx, AXIS: tl.constexpr, BOX_DIV: tl.constexpr):
    """Geometry of a pass along AXIS (1 = z, planes are y; 2 = y, planes are z): the axis length,
    the box's range along it, across the planes and along x, and the strides of axis and plane."""
    box = box_ptr + (item // BOX_DIV) * 6
    x0, x1 = tl.load(box + 4), tl.load(box + 5)
    if AXIS == 1:
        n_axis, a0, a1 = nz, tl.load(box + 0), tl.load(box + 1)
        o0, o1 = tl.load(box + 2), tl.load(box + 3)
        stride_a, stride_o = ny * nx, nx
    else:
        n_axis, a0, a1 = ny, tl.load(box + 2), tl.load(box + 3)
        o0, o1 = tl.load(box + 0), tl.load(box + 1)
        stride_a, stride_o = nx, ny * nx
    return n_axis, a0, a1, o0, o1, x0, x1, stride_a, stride_o


@triton.jit
def _search_kernel(in_ptr, out_ptr, box_ptr, query_ptr, nz, ny, nx, step2,
                   AXIS: tl.constexpr, BOX_DIV: tl.constexpr, QUERY: tl.constexpr, FULL: tl.constexpr,
                   BLOCK_A: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program: a BLOCK_A x BLOCK_X tile (along AXIS, along x) of one plane across AXIS;
    # program_id(0) runs over (plane, tile along AXIS, tile along x), program_id(1) over items.
    item = tl.program_id(1)
    n_axis, a0, a1, o0, o1, x0, x1, stride_a, stride_o = _columns(box_ptr, item, nz, ny, nx, AXIS, BOX_DIV)
    a_blocks, x_blocks = tl.cdiv(n_axis, BLOCK_A), tl.cdiv(nx, BLOCK_X)
    tile = tl.program_id(0)
    plane = tile // (a_blocks * x_blocks)
    a = (tile // x_blocks % a_blocks) * BLOCK_A + tl.arange(0, BLOCK_A)
    x = (tile % x_blocks) * BLOCK_X + tl.arange(0, BLOCK_X)
    live = ((a >= a0) & (a <= a1))[:, None] & ((x >= x0) & (x <= x1))[None, :]
    if (plane >= o0) & (plane <= o1) & (tl.max(tl.max(live.to(tl.int32), axis=1), axis=0) > 0):
        base = item.to(tl.int64) * nz * ny * nx + plane.to(tl.int64) * stride_o + x[None, :]
        best = tl.load(in_ptr + base + a[:, None].to(tl.int64) * stride_a, mask=live, other=0.0)
        need = live
        if QUERY:  # only the query points (surface elements) need the final value
            code = tl.load(query_ptr + base + a[:, None].to(tl.int64) * stride_a, mask=live, other=0)
            need = live & is_site(code, 2, FULL)
        limit = tl.max(tl.max(tl.where(need, best, 0.0), axis=1), axis=0)
        k = 1
        while (k <= a1 - a0) & (step2 * (k * k).to(tl.float32) < limit):
            reach = step2 * (k * k).to(tl.float32)
            open_ = need & (best > reach)
            for sign in tl.static_range(2):
                w = a + (2 * sign - 1) * k
                take = open_ & ((w >= a0) & (w <= a1))[:, None]
                f = tl.load(in_ptr + base + w[:, None].to(tl.int64) * stride_a, mask=take, other=float("inf"))
                best = tl.minimum(best, f + reach)
            limit = tl.max(tl.max(tl.where(need, best, 0.0), axis=1), axis=0)
            k += 1
        tl.store(out_ptr + base + a[:, None].to(tl.int64) * stride_a, best, mask=need)


@triton.jit
def _meet(fq, q, fp, p, w):
    """Abscissa (float64) where the parabolas w (x - q)^2 + fq and w (x - p)^2 + fp meet (p < q)."""
    return (fq.to(tl.float64) - fp.to(tl.float64)) / (2.0 * w * (q - p).to(tl.float64)) \
        + 0.5 * (q + p).to(tl.float64)


@triton.jit
def _envelope_kernel(in_ptr, out_ptr, box_ptr, vertex_ptr, bound_ptr, nz, ny, nx, step2_ptr,
                     AXIS: tl.constexpr, BOX_DIV: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program: BLOCK_X columns (neighbouring x) of one plane; each lane runs Felzenszwalb &
    # Huttenlocher's lower envelope of parabolas along its column, its stack of parabola roots
    # (vertex) and breakpoints (bound, float64 as on the CPU) in scratch rows [k, lane].
    item = tl.program_id(1)
    n_axis, a0, a1, o0, o1, x0, x1, stride_a, stride_o = _columns(box_ptr, item, nz, ny, nx, AXIS, BOX_DIV)
    x_blocks = tl.cdiv(nx, BLOCK_X)
    plane = tl.program_id(0) // x_blocks
    x = (tl.program_id(0) % x_blocks) * BLOCK_X + tl.arange(0, BLOCK_X)
    lanes = (x >= x0) & (x <= x1)
    if (plane >= o0) & (plane <= o1) & (tl.max(lanes.to(tl.int32), axis=0) > 0):
        base = item.to(tl.int64) * nz * ny * nx + plane.to(tl.int64) * stride_o + x
        scratch = ((item.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * (n_axis + 1)) * BLOCK_X \
            + tl.arange(0, BLOCK_X)
        w = tl.load(step2_ptr)  # float64 spacing^2 (a Python float argument would arrive as float32)
        top = tl.full([BLOCK_X], -1, tl.int32)  # stack height - 1 per lane
        for q in range(a0, a1 + 1):
            fq = tl.load(in_ptr + base + q * stride_a.to(tl.int64), mask=lanes, other=float("inf"))
            finite = lanes & (fq < float("inf"))
            meet = tl.full([BLOCK_X], float("-inf"), tl.float64)
            popping = finite & (top >= 0)
            while tl.max(popping.to(tl.int32), axis=0) > 0:
                p = tl.load(vertex_ptr + scratch + top.to(tl.int64) * BLOCK_X, mask=popping, other=0)
                fp = tl.load(in_ptr + base + p.to(tl.int64) * stride_a, mask=popping, other=0.0)
                meet = tl.where(popping, _meet(fq, q, fp, p, w), meet)
                bound = tl.load(bound_ptr + scratch + top.to(tl.int64) * BLOCK_X, mask=popping, other=0.0)
                keep = popping & (meet > bound)
                top = tl.where(popping & ~keep, top - 1, top)
                popping = popping & ~keep & (top >= 0)
            top = tl.where(finite, top + 1, top)
            at = scratch + top.to(tl.int64) * BLOCK_X
            tl.store(vertex_ptr + at, tl.zeros([BLOCK_X], tl.int32) + q, mask=finite)
            tl.store(bound_ptr + at, tl.where(top == 0, float("-inf"), meet), mask=finite)
            tl.debug_barrier()  # the stack is read back next, perhaps by another thread holding the lane
        has_sites = lanes & (top >= 0)
        j = tl.zeros([BLOCK_X], tl.int32)  # the stacks are complete: the barrier above ordered them
        for q in range(a0, a1 + 1):
            # move to the parabola whose interval holds q: while the next breakpoint lies before q
            advancing = has_sites & (j < top)
            advancing = advancing & (tl.load(bound_ptr + scratch + (j + 1).to(tl.int64) * BLOCK_X,
                                             mask=advancing, other=0.0) < q)
            while tl.max(advancing.to(tl.int32), axis=0) > 0:
                j = tl.where(advancing, j + 1, j)
                advancing = advancing & (j < top)
                advancing = advancing & (tl.load(bound_ptr + scratch + (j + 1).to(tl.int64) * BLOCK_X,
                                                 mask=advancing, other=0.0) < q)
            p = tl.load(vertex_ptr + scratch + j.to(tl.int64) * BLOCK_X, mask=has_sites, other=0)
            fp = tl.load(in_ptr + base + p.to(tl.int64) * stride_a, mask=has_sites, other=0.0)
            step = (q - p).to(tl.float64)
            value = (w * step * step + fp.to(tl.float64)).to(tl.float32)  # one rounding, as on the CPU
            tl.store(out_ptr + base + q * stride_a.to(tl.int64), tl.where(has_sites, value, float("inf")), mask=lanes)


def _check(grid: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    if grid.dtype != dtype or grid.ndim != 4 or not grid.is_contiguous():
        raise ValueError(f"{name} must be a contiguous (items, z, y, x) {dtype} tensor, "
                         f"got {grid.dtype} {tuple(grid.shape)}")


def squared_distance_to_sites(sites: torch.Tensor, boxes: torch.Tensor, spacing, *, site: int, full: int = 255,
                              paired: bool = False, queries: torch.Tensor | None = None, method: str = "auto",
                              block_r: int = 8, chunk_x: int = 32, block_a: int = 16, block_x: int = 64,
                              envelope_x: int = 64) -> torch.Tensor:
    """Squared distance (mm^2, float32) from every grid point to the nearest site, in each item's box.

    Args:
        sites: contiguous (items, z, y, x) uint8 grid; which values are sites says ``site``.
        boxes: int32 (items // box_div, 6) inclusive boxes on the device; ``box_div`` is 2 when
            ``paired`` (both items of a pair share their box), else 1.
        spacing: (sz, sy, sx) in mm (squared in float32 by the kernels).
        site: ``SITE_ZERO``, ``SITE_NONZERO`` or ``SITE_SURFACE`` (with ``full`` the all-inside code).
        paired: item ``i`` measures to the sites of item ``i ^ 1`` (the two masks of a pair).
        queries: optional uint8 grid of surface codes like ``sites``; when given, the last pass
            searches only at its surface points (elsewhere the output is undefined).
        method: how the y and z passes run: ``"search"`` (cost grows with the distances: best
            when they are short, as between two surfaces), ``"envelope"`` (lower envelope of
            parabolas: linear in the column length whatever the distances; int32 and float64
            scratch of the pass's size), or ``"auto"``: the envelope along axes longer than
            ``SEARCH_LENGTH``, the search along shorter ones (at most that many steps). A
            query-restricted last pass always searches.

    Returns:
        float32 (items, z, y, x); outside the boxes undefined (``torch.empty``).
    """
    _check(sites, "sites", torch.uint8)
    items, nz, ny, nx = sites.shape
    box_div = 2 if paired else 1
    if boxes.dtype != torch.int32 or tuple(boxes.shape) != (items // box_div, 6) or not boxes.is_contiguous():
        raise ValueError(f"boxes must be a contiguous int32 ({items // box_div}, 6) tensor, "
                         f"got {boxes.dtype} {tuple(boxes.shape)}")
    if queries is not None:
        _check(queries, "queries", torch.uint8)
    if method not in ("auto", "search", "envelope"):
        raise ValueError(f"method must be 'auto', 'search' or 'envelope', got {method!r}")
    sz, sy, sx = (float(s) for s in spacing)
    first = torch.empty(sites.shape, dtype=torch.float32, device=sites.device)
    if first.numel() == 0:
        return first
    _pass_x_kernel[(cdiv(nz * ny, block_r), items)](
        sites, first, boxes, nz, ny, nx, sx * sx, PAIRED=paired, BOX_DIV=box_div, SITE=site, FULL=full,
        BLOCK_R=block_r, BLOCK_X=chunk_x)
    passes = [(2, ny, nz, sy)] + ([(1, nz, ny, sz)] if nz > 1 else [])
    current = first
    del first  # two grids live at a time: each pass frees its input (stream-ordered) once it has run
    for index, (axis, length, planes, step) in enumerate(passes):
        last = index == len(passes) - 1
        following = torch.empty_like(current)
        restricted = last and queries is not None
        envelope = not restricted and (method == "envelope" or (method == "auto" and length > SEARCH_LENGTH))
        if envelope:
            grid = (planes * cdiv(nx, envelope_x), items)
            vertex = torch.empty((items, grid[0], length + 1, envelope_x), dtype=torch.int32, device=sites.device)
            bound = torch.empty(vertex.shape, dtype=torch.float64, device=sites.device)
            step2 = torch.full((1,), step * step, dtype=torch.float64, device=sites.device)  # a fill, not a copy
            _envelope_kernel[grid](current, following, boxes, vertex, bound, nz, ny, nx, step2, AXIS=axis,
                                   BOX_DIV=box_div, BLOCK_X=envelope_x, num_warps=max(1, envelope_x // 32))
        else:
            grid = (planes * cdiv(length, block_a) * cdiv(nx, block_x), items)
            _search_kernel[grid](
                current, following, boxes, queries if restricted else sites,
                nz, ny, nx, step * step, AXIS=axis, BOX_DIV=box_div, QUERY=restricted, FULL=full,
                BLOCK_A=block_a, BLOCK_X=block_x)
        current = following
    return current
