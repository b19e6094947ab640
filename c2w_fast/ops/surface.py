"""Surface distances between two masks and the summaries built on them (HD, HDp, ASSD, Surface Dice).

Two conventions decide what "the surface" is and how its elements are weighted:

* ``"surfel"`` (DeepMind ``surface-distance``): the surface elements are the voxel corners
  whose 2x2x2 neighbourhood is mixed (see :mod:`c2w_fast.ops._surfels`); each carries the
  marching-cubes area of its neighbour code (mm²; in 2D the contour length in mm). The
  distance of an element is the Euclidean distance (mm) from its corner to the nearest
  surface corner of the other mask.
* ``"voxel"`` (MONAI, medpy): the surface elements are the boundary voxels — foreground
  voxels with at least one background face neighbour (6-connectivity in 3D, 4 in 2D, the
  outside of the array counting as background), each of weight 1. The distance of an
  element is the Euclidean distance (mm) between its centre and the nearest boundary voxel
  centre of the other mask.

From the directed distances ``d_pg`` (every pred element to gt) and ``d_gp`` with weights
``a_p``, ``a_g``:

* ``hd`` = the largest distance of both directions;
* ``hd_percentile`` at ``q`` (95 for HD95): with ``percentile_rule="max"`` the larger of
  the two directed percentiles, with ``"pooled"`` the percentile of both directions pooled
  (medpy's ``hd95``). The percentile of weighted distances (surfel) is the smallest
  distance ``d`` whose elements with distance <= ``d`` carry at least ``q`` % of the total
  weight — DeepMind's ``compute_robust_hausdorff`` (no interpolation). A cumulative weight
  within ``PERCENTILE_TIE_RTOL`` of the total below ``q`` % counts as reaching it: where it
  equals ``q`` % exactly (symmetric shapes, equal areas), summation order would otherwise decide,
  so backends and DeepMind's float cumsum could each take a different distance. In the voxel
  convention it is numpy's/torch's linear-interpolation percentile: sort the ``n``
  distances, take position ``q / 100 * (n - 1)`` and interpolate between its neighbours
  (MONAI's ``torch.quantile``, medpy's ``np.percentile``);
* ``assd`` = ``(sum d_pg a_p + sum d_gp a_g) / (sum a_p + sum a_g)``, the weighted mean of
  both directions pooled (surfel: area-weighted; voxel: MONAI's symmetric ASD = medpy's assd);
* ``surface_dice`` at tolerance ``t`` mm = ``(sum a_p [d_pg <= t] + sum a_g [d_gp <= t]) /
  (sum a_p + sum a_g)``; a distance equal to ``t`` up to rounding is decided as the
  convention's peer decides it (:mod:`c2w_fast.ops._within`).

Empty masks (decided here, before any backend runs) give the values of each convention's peer:

=====================  ===========================  ===========================
                       surfel (surface-distance)    voxel (MONAI)
=====================  ===========================  ===========================
one mask empty         hd, hd_percentile, assd inf;  hd, assd inf; hd_percentile nan
                       surface_dice 0               (quantile of infinite distances);
                                                    surface_dice 0
both masks empty       hd, hd_percentile inf;        everything nan
                       assd, surface_dice nan
=====================  ===========================  ===========================
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from c2w_fast.ops._arrays import as_numpy, device_of, real_number
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op
from c2w_fast.ops._lazy import lazy
from c2w_fast.ops._within import decision_threshold, within_rule
from c2w_fast.ops._surfels import neighbour_codes, surfel_area_table
from c2w_fast.ops._volume import check_pair, check_spacing, host_uint8_3d, like, spacing_3d, union_box

CONVENTIONS = ("surfel", "voxel")
PERCENTILE_RULES = ("max", "pooled")
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}  # fast backends vs the float64 reference, read by the tests
# An exact tie of the weighted percentile is reached whatever the summation order: float64 sums of
# up to 10^7 weights err by far less. A cumulative weight short of the target by less than this without
# being equal to it counts as reaching it too (none in 3 000 random pairs at extreme spacings).
PERCENTILE_TIE_RTOL = 1e-9


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances (mm) and element weights of one pair of masks.

    Elements are listed in raster (z, y, x) order of their corner (surfel) or voxel (voxel
    convention). ``pred_to_gt[i]`` is the distance of pred's element ``i`` to gt's surface
    (``inf`` when gt is empty) and ``pred_areas[i]`` its area in mm² (length in mm in 2D;
    1 in the voxel convention); likewise for gt. float64 arrays of the inputs' kind.
    """

    pred_to_gt: object
    gt_to_pred: object
    pred_areas: object
    gt_areas: object
    convention: str


class SurfaceSummary(NamedTuple):
    """The surface metrics of one pair of masks, in mm (``surface_dice`` in [0, 1])."""

    hd: float
    hd_percentile: float
    assd: float
    surface_dice: float


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def _boundary_voxels(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _distances_reference_numpy(pred: np.ndarray, gt: np.ndarray, spacing, convention: str):
    """(d_pg, d_gp, a_p, a_g) as float64 numpy arrays: scipy's EDT over the whole array."""
    if convention == "surfel":
        codes_pred, codes_gt = neighbour_codes(pred), neighbour_codes(gt)
        full = 2 ** (2 ** pred.ndim) - 1
        surface_pred = (codes_pred != 0) & (codes_pred != full)
        surface_gt = (codes_gt != 0) & (codes_gt != full)
        table = surfel_area_table(spacing)
        areas_pred, areas_gt = table[codes_pred[surface_pred]], table[codes_gt[surface_gt]]
    else:
        surface_pred, surface_gt = _boundary_voxels(pred), _boundary_voxels(gt)
        areas_pred, areas_gt = np.ones(int(surface_pred.sum())), np.ones(int(surface_gt.sum()))

    def distances_to(surface, queries):
        if not surface.any():
            return np.full(int(queries.sum()), np.inf)
        return ndimage.distance_transform_edt(~surface, sampling=spacing)[queries]

    return distances_to(surface_gt, surface_pred), distances_to(surface_pred, surface_gt), areas_pred, areas_gt


def weighted_fraction(percentile: float) -> float:
    """The fraction of the total weight the weighted percentile must reach, on every backend:
    ``percentile`` % less ``PERCENTILE_TIE_RTOL``."""
    return max(percentile / 100.0 - PERCENTILE_TIE_RTOL, 0.0)


def weighted_percentile(distances: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    """Smallest distance whose elements at or below it carry ``percentile`` % of the weight
    (DeepMind's rule: cumulative weights in ascending distance order, first index reaching it,
    up to ``PERCENTILE_TIE_RTOL``)."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(weights[order])
    total = np.sum(weights)
    index = int(np.searchsorted(cumulative, weighted_fraction(percentile) * total))
    return float(distances[order][min(index, len(distances) - 1)])


def _percentile(distances, weights, percentile, convention) -> float:
    if convention == "surfel":
        return weighted_percentile(distances, weights, percentile)
    return float(np.percentile(distances, percentile))


def summarise(d_pg, d_gp, a_p, a_g, *, convention, tolerance_mm, percentile, percentile_rule) -> SurfaceSummary:
    """The definitions of the module docstring on non-empty float64 numpy distance sets."""
    if percentile_rule == "max":
        hd_percentile = max(_percentile(d_pg, a_p, percentile, convention),
                            _percentile(d_gp, a_g, percentile, convention))
    else:
        hd_percentile = _percentile(np.concatenate([d_pg, d_gp]), np.concatenate([a_p, a_g]), percentile, convention)
    total = a_p.sum() + a_g.sum()
    within = decision_threshold(tolerance_mm, convention)
    return SurfaceSummary(
        hd=float(max(d_pg.max(), d_gp.max())),
        hd_percentile=float(hd_percentile),
        assd=float((d_pg @ a_p + d_gp @ a_g) / total),
        surface_dice=float((a_p[d_pg <= within].sum() + a_g[d_gp <= within].sum()) / total),
    )


def _distances_reference(pred, gt, spacing, convention) -> SurfaceDistances:
    arrays = _distances_reference_numpy(as_numpy(pred), as_numpy(gt), spacing, convention)
    return SurfaceDistances(*(like(a, pred) for a in arrays), convention=convention)


def _summary_reference(pred, gt, spacing, convention, tolerance_mm, percentile, percentile_rule) -> SurfaceSummary:
    arrays = _distances_reference_numpy(as_numpy(pred), as_numpy(gt), spacing, convention)
    return summarise(*arrays, convention=convention, tolerance_mm=tolerance_mm,
                     percentile=percentile, percentile_rule=percentile_rule)


def _cpu_arguments(pred, gt, spacing, convention):
    """The C++ kernels' arguments for the masks' union bounding box (all the surfaces lie in it)."""
    box = union_box(pred, gt, backend="cpu")
    surfel = convention == "surfel"
    table = surfel_area_table(spacing) if surfel else np.zeros(2 ** (2 ** pred.ndim))
    return (host_uint8_3d(pred[box]), host_uint8_3d(gt[box]), spacing_3d(spacing), pred.ndim == 2, surfel, table)


def _distances_cpu(pred, gt, spacing, convention) -> SurfaceDistances:
    from c2w_fast import _cpu

    if not (_any(pred) or _any(gt)):  # no surface at all: nothing to crop to
        arrays = (np.zeros(0),) * 4
    else:
        arrays = _cpu.surface_distances(*_cpu_arguments(pred, gt, spacing, convention))
    return SurfaceDistances(*(like(a, pred) for a in arrays), convention=convention)


def _summary_cpu(pred, gt, spacing, convention, tolerance_mm, percentile, percentile_rule) -> SurfaceSummary:
    from c2w_fast import _cpu

    rule = within_rule(tolerance_mm, spacing, convention)
    quantile = weighted_fraction(percentile) if convention == "surfel" else percentile / 100.0
    return SurfaceSummary(*_cpu.surface_summary(*_cpu_arguments(pred, gt, spacing, convention),
                                                rule.lower, rule.upper, rule.offsets, quantile,
                                                percentile_rule == "pooled"))


SURFACE_DISTANCES = Op("surface_distances", {"reference": _distances_reference, "cpu": _distances_cpu,
                                            "triton": lazy("c2w_fast.ops._gpu_surface", "distances_triton")},
                       preferred=COMPILED_FIRST)
SURFACE_SUMMARY = Op("surface_summary", {"reference": _summary_reference, "cpu": _summary_cpu,
                                        "triton": lazy("c2w_fast.ops._gpu_surface", "summary_triton")},
                     preferred=COMPILED_FIRST)


def _empty_summary(pred_empty: bool, gt_empty: bool, convention: str) -> SurfaceSummary:
    if pred_empty and gt_empty:
        hd = np.inf if convention == "surfel" else np.nan
        return SurfaceSummary(hd, hd, np.nan, np.nan)
    return SurfaceSummary(np.inf, np.inf if convention == "surfel" else np.nan, np.inf, 0.0)


def check_summary_options(tolerance_mm, percentile, percentile_rule: str) -> tuple[float, float]:
    """``(tolerance_mm, percentile)`` as floats, after checking them and ``percentile_rule``."""
    if percentile_rule not in PERCENTILE_RULES:
        raise ValueError(f"percentile_rule must be one of {PERCENTILE_RULES}, got {percentile_rule!r}")
    given = tolerance_mm, percentile
    try:
        tolerance_mm, percentile = real_number(tolerance_mm), real_number(percentile)
    except (TypeError, ValueError):
        raise ValueError(f"tolerance_mm and percentile must be numbers, got {given[0]!r} and {given[1]!r}") from None
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    if 0 < percentile < 1:
        warnings.warn(f"percentile is in percent (95 for HD95): {percentile:g} asks for the {percentile:g}th "
                      "percentile, near the smallest distance", UserWarning, stacklevel=3)
    return tolerance_mm, percentile


def _any(mask) -> bool:
    return bool(mask.any())


def surface_distances(pred, gt, spacing=None, *, convention: str = "surfel", backend: str = "auto") -> SurfaceDistances:
    """Directed distances between the surfaces of ``pred`` and ``gt`` and the elements' weights.

    Args:
        pred, gt: 2D (y, x) or 3D (z, y, x) masks of one shape (numpy or torch, bool or 0/1).
        spacing: voxel size in mm, (z, y, x) or (y, x); ``None`` = 1 mm.
        convention: ``"surfel"`` or ``"voxel"`` (module docstring).
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        :class:`SurfaceDistances`; the direction out of an empty mask is empty, the one into
        it all ``inf``.
    """
    pred, gt = check_pair(pred, gt)
    spacing = check_spacing(spacing, pred.ndim)
    check_convention(convention)
    return SURFACE_DISTANCES.select(backend, device_of(pred))(pred, gt, spacing, convention)


def surface_summary(pred, gt, spacing=None, *, convention: str = "surfel", tolerance_mm: float = 1.0,
                    percentile: float = 95.0, percentile_rule: str = "max", backend: str = "auto") -> SurfaceSummary:
    """HD, HD at ``percentile``, ASSD and Surface Dice at ``tolerance_mm`` of two masks (module docstring).

    Args:
        pred, gt: 2D (y, x) or 3D (z, y, x) masks of one shape (numpy or torch, bool or 0/1).
        spacing: voxel size in mm, (z, y, x) or (y, x); ``None`` = 1 mm.
        convention: ``"surfel"`` or ``"voxel"``.
        tolerance_mm: Surface Dice tolerance (mm), >= 0.
        percentile: in [0, 100].
        percentile_rule: ``"max"`` (larger directed percentile) or ``"pooled"`` (medpy).
        backend: see :mod:`c2w_fast.ops`.
    """
    pred, gt = check_pair(pred, gt)
    spacing = check_spacing(spacing, pred.ndim)
    check_convention(convention)
    tolerance_mm, percentile = check_summary_options(tolerance_mm, percentile, percentile_rule)
    implementation = SURFACE_SUMMARY.select(backend, device_of(pred))  # a bad backend is refused for any masks
    pred_empty, gt_empty = not _any(pred), not _any(gt)
    if pred_empty or gt_empty:
        return _empty_summary(pred_empty, gt_empty, convention)
    return implementation(pred, gt, spacing, convention, tolerance_mm, percentile, percentile_rule)
