"""Surface distances and their summaries on the GPU (Triton), for batches, without host syncs.

The definitions are those of :mod:`c2w_fast.ops.surface`; this module computes them for a
batch of mask pairs at once:

1. the masks are interleaved into items ``(pred_0, gt_0, pred_1, gt_1, ...)`` and each pair's
   union bounding box is found on the device;
2. surface codes (surfel neighbour codes on the corner grid, or boundary-voxel flags) are
   written inside the box (``kernels/surface.py``);
3. each item's squared distances to its partner's surface are computed at its own surface
   elements by the exact separable EDT restricted to the box (``kernels/edt.py``) — the box
   holds every surface element, so the restriction changes no distance;
4. weighted sums and the maximum come from one reduction kernel, and each percentile from a
   three-round radix selection over the float32 bit patterns of the squared distances
   (11 + 11 + 9 bits, weighted histograms): the exact order statistic without sorting.

Distances are ``sqrt`` (in float64) of float32 squared distances, as on the CPU backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from c2w_fast.kernels import edt as edt_kernels
from c2w_fast.kernels import host_to_device
from c2w_fast.kernels import surface as surface_kernels
from c2w_fast.ops._arrays import as_tensor
from c2w_fast.ops._gpu_volume import EMPTY_BOX, as_items, bounding_boxes, to_kind
from c2w_fast.ops._surfels import surfel_area_table
from c2w_fast.ops._within import within_rule
from c2w_fast.ops.surface import SurfaceDistances, SurfaceSummary, weighted_fraction

# radix-selection rounds over the 31 value bits of a non-negative float32: (shift, known, bins)
_ROUNDS = ((20, 31, 2048), (9, 20, 2048), (0, 9, 512))
MAX_GRID_Y = 65535  # CUDA's limit on a launch grid's y (and z) dimension, which counts the items
CHUNK_BYTES = 2 * 2**30  # buffers per chunk of evaluate_rows: a 44x640x640 pair needs ~0.4 GB, so five go at once


@dataclass(frozen=True)
class SurfaceFields:
    """Per item (``2b`` = pred of pair ``b``, ``2b + 1`` = its gt) on one (z, y, x) grid:
    ``codes`` (uint8 surface codes), ``squared`` (float32 squared distance in mm^2 from each of
    the item's surface elements to its partner's surface; undefined elsewhere), the pairs'
    grid boxes (int32 (pairs, 6)), the weight per code (float64) and the all-inside code."""

    codes: torch.Tensor
    squared: torch.Tensor
    boxes: torch.Tensor
    weights: torch.Tensor
    full: int


def surface_fields(pred: torch.Tensor, gt: torch.Tensor, spacing: tuple[float, ...], convention: str, *,
                   skip: torch.Tensor | None = None) -> SurfaceFields:
    """The fields of :class:`SurfaceFields` for bool (pairs, *spatial) tensors, spatial 2D or 3D.
    The pairs flagged in ``skip`` (bool (pairs,)) get an empty box: no work, and summaries that
    the caller replaces (a pair with an empty mask, whose distances to nothing would search
    whole columns)."""
    ndim = len(spacing)
    items = as_items(torch.stack((pred, gt), dim=1), ndim)
    voxel_boxes = bounding_boxes(as_items(pred | gt, ndim))
    if skip is not None:
        voxel_boxes = torch.where(skip[:, None], host_to_device(EMPTY_BOX, torch.int32, pred.device), voxel_boxes)
    surfel = convention == "surfel"
    if surfel:
        # corners c0 .. c1 + 1 surround voxels c0 .. c1; a 2D grid keeps its single z slice
        grow = host_to_device([0, 1, 0, 1, 0, 1] if ndim == 3 else [0, 0, 0, 1, 0, 1], torch.int32, pred.device)
        empty = (voxel_boxes[:, 0] > voxel_boxes[:, 1]).unsqueeze(1)
        boxes = torch.where(empty, voxel_boxes, voxel_boxes + grow).contiguous()
        table = surfel_area_table(spacing)
        full = 2 ** (2 ** ndim) - 1
    else:
        boxes = voxel_boxes
        table = np.array([0.0, 1.0])
        full = 255  # boundary flags are 0/1: every flagged voxel is an element
    kind = surface_kernels.SURFEL if surfel else surface_kernels.BOUNDARY
    codes = surface_kernels.surface_codes(items, boxes, kind=kind, ndim=ndim, box_div=2)
    squared = edt_kernels.squared_distance_to_sites(
        codes, boxes, (1.0,) * (3 - ndim) + tuple(spacing), site=edt_kernels.SITE_SURFACE, full=full,
        paired=True, queries=codes, method="search")  # surfaces are mostly close: short searches
    weights = host_to_device(table, torch.float64, pred.device)
    return SurfaceFields(codes, squared, boxes, weights, full)


def _select(fields: SurfaceFields, targets: torch.Tensor, group_div: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group (``item // group_div``) and target ``t`` (columns of ``targets``, float64): the
    smallest squared distance ``v`` whose elements with squared distance ``<= v`` weigh at least
    ``t`` (the largest one when the group's total stays below ``t``), and that weight."""
    prefix = torch.zeros(targets.numel(), dtype=torch.int32, device=targets.device)
    below = torch.zeros(targets.numel(), dtype=torch.float64, device=targets.device)
    flat_targets = targets.reshape(-1, 1)
    reached = below
    for shift, known, bins in _ROUNDS:
        hist = surface_kernels.weighted_histogram(
            fields.squared, fields.codes, fields.weights, fields.boxes, prefix, shift=shift, known=known,
            bins=bins, full=fields.full, box_div=2, group_div=group_div)
        cumulative = below.unsqueeze(1) + hist.cumsum(dim=1)
        occupied = hist > 0
        reach = (cumulative >= flat_targets) & occupied
        first = reach.to(torch.uint8).argmax(dim=1)
        highest = bins - 1 - occupied.flip(1).to(torch.uint8).argmax(dim=1)
        chosen = torch.where(reach.any(dim=1), first, highest).unsqueeze(1)
        reached = cumulative.gather(1, chosen).squeeze(1)
        below = reached - hist.gather(1, chosen).squeeze(1)
        prefix = prefix | (chosen.squeeze(1).to(torch.int32) << shift)
    return prefix.view(torch.float32).reshape(targets.shape), reached.reshape(targets.shape)


def _percentiles(fields: SurfaceFields, totals: torch.Tensor, percentile: float, convention: str,
                 group_div: int) -> torch.Tensor:
    """The percentile distance (mm, float64) of each group, by the convention's rule."""
    if convention == "surfel":  # weighted: smallest d carrying at least that fraction of the weight
        values, _ = _select(fields, (weighted_fraction(percentile) * totals).unsqueeze(1), group_div)
        return values[:, 0].double().sqrt()
    # voxel: numpy's linear interpolation between the order statistics at floor and ceil of q (n - 1)
    position = (totals - 1) * (percentile / 100.0)
    lower = position.floor()
    gamma = position - lower
    ranks = torch.stack([lower + 1, torch.minimum(lower + 2, totals)], dim=1)
    values, _ = _select(fields, ranks, group_div)
    a, b = values[:, 0].double().sqrt(), values[:, 1].double().sqrt()
    return torch.where(gamma >= 0.5, b - (b - a) * (1 - gamma), a + (b - a) * gamma)


def summaries(fields: SurfaceFields, spacing: tuple[float, ...], *, convention: str, tolerance_mm: float,
              percentile: float, percentile_rule: str) -> torch.Tensor:
    """float64 (pairs, 4): hd, hd_percentile, assd, surface_dice of each pair (both surfaces
    non-empty; otherwise the values are meaningless and the caller applies the empty rules)."""
    rule = within_rule(tolerance_mm, spacing, convention)
    moments = surface_kernels.surface_moments(fields.squared, fields.codes, fields.weights, fields.boxes,
                                              lower=rule.lower, upper=rule.upper, offsets=rule.offsets,
                                              full=fields.full, box_div=2)
    pairs = moments.reshape(-1, 2, 4)
    total = pairs[..., 0].sum(dim=1)
    hd = pairs[..., 3].amax(dim=1)
    assd = pairs[..., 1].sum(dim=1) / total
    surface_dice = pairs[..., 2].sum(dim=1) / total
    if percentile_rule == "pooled":
        hd_percentile = _percentiles(fields, total, percentile, convention, group_div=2)
    else:
        hd_percentile = _percentiles(fields, moments[:, 0], percentile, convention, group_div=1)
        hd_percentile = hd_percentile.reshape(-1, 2).amax(dim=1)
    return torch.stack([hd, hd_percentile, assd, surface_dice], dim=1)


def _pairs_per_chunk(spatial_shape, convention: str) -> int:
    """Pairs evaluated at once so that one chunk's buffers stay within ``CHUNK_BYTES``."""
    grid = int(np.prod([n + 1 for n in spatial_shape])) if convention == "surfel" else int(np.prod(spatial_shape))
    per_pair = 2 * grid * (1 + 2 * 4) + 4 * int(np.prod(spatial_shape))  # codes, two float32 passes; masks
    return max(1, min(CHUNK_BYTES // per_pair, MAX_GRID_Y // 2))  # two items a pair on the grid's y axis


def evaluate_rows(pred: torch.Tensor, gt: torch.Tensor, spacing: tuple[float, ...], *, tolerance_mm: float,
                  convention: str, percentile: float, percentile_rule: str) -> torch.Tensor:
    """float64 (pairs, 7) on the device: voxel counts of pred, gt and their overlap, then hd,
    hd_percentile, assd and surface_dice, for bool (pairs, *spatial) tensors. Queued without
    any host sync; the rows of pairs with an empty mask hold meaningless summaries."""
    spatial = tuple(range(1, pred.ndim))
    counts = torch.stack([pred.sum(dim=spatial), gt.sum(dim=spatial), (pred & gt).sum(dim=spatial)], dim=1)
    one_sided = (counts[:, :2] == 0).any(dim=1)  # their rows follow the empty-mask rule
    step = _pairs_per_chunk(pred.shape[1:], convention)
    parts = []
    for start in range(0, pred.shape[0], step):
        chunk = slice(start, start + step)
        fields = surface_fields(pred[chunk], gt[chunk], spacing, convention, skip=one_sided[chunk])
        parts.append(summaries(fields, spacing, convention=convention, tolerance_mm=tolerance_mm,
                               percentile=percentile, percentile_rule=percentile_rule))
    return torch.cat([counts.double(), torch.cat(parts, dim=0)], dim=1)


def summary_triton(pred, gt, spacing, convention, tolerance_mm, percentile, percentile_rule) -> SurfaceSummary:
    fields = surface_fields(as_tensor(pred)[None], as_tensor(gt)[None], spacing, convention)
    row = summaries(fields, spacing, convention=convention, tolerance_mm=tolerance_mm, percentile=percentile,
                    percentile_rule=percentile_rule)[0]
    return SurfaceSummary(*row.tolist())


def distances_triton(pred, gt, spacing, convention) -> SurfaceDistances:
    fields = surface_fields(as_tensor(pred)[None], as_tensor(gt)[None], spacing, convention)
    codes = fields.codes
    elements = (codes != 0) & (codes != fields.full)
    distances = [fields.squared[i][elements[i]].double().sqrt() for i in (0, 1)]
    weights = [fields.weights[codes[i][elements[i]].long()] for i in (0, 1)]
    arrays = (distances[0], distances[1], weights[0], weights[1])
    return SurfaceDistances(*(to_kind(a, pred) for a in arrays), convention=convention)
