"""Segmentation metrics, exact in two conventions: Dice, HD, HD95, ASSD and Surface Dice.

>>> from c2w_fast import metrics
>>> r = metrics.evaluate(pred, gt, spacing=(2.5, 0.625, 0.625), tolerance_mm=1.0)
>>> r.dice, r.hd, r.hd95, r.assd, r.surface_dice

Inputs are two masks of one shape — 2D (y, x) or 3D (z, y, x), numpy or torch, bool or
0/1 (any nonzero value is foreground; fractional values, as in a probability map, are
refused), any memory layout — and the spacing in mm in the same axis order (``None`` =
1 mm). Distances are in mm.

Definitions (``c2w_fast.ops.surface`` has the full text):

* ``dice`` = ``2 |P ∩ G| / (|P| + |G|)`` over voxels; ``overlap`` = ``|P ∩ G| / |G|`` (the
  MBAS paper's eq. 3: how much of the ground truth a high-recall stage-1 region covers).
* ``convention="surfel"`` (default) reproduces DeepMind ``surface-distance``: the surface
  is made of voxel-corner surface elements weighted by their marching-cubes area, distances
  run from each element's corner to the nearest surface corner of the other mask,
  ``hd95`` is the larger of the two directed area-weighted 95th percentiles (no
  interpolation), ``assd`` the area-weighted mean of both directions pooled, and
  ``surface_dice`` the area fraction of both surfaces within ``tolerance_mm``.
* ``convention="voxel"`` reproduces MONAI (``compute_hausdorff_distance``,
  ``compute_average_surface_distance(symmetric=True)``, ``compute_surface_dice``): the
  surface is the set of boundary voxels (foreground with a background face neighbour),
  each of weight 1, distances run between voxel centres, percentiles interpolate linearly.
* ``percentile_rule="max"`` (default) takes the larger of the two directed percentiles;
  ``"pooled"`` takes the percentile of both directions' distances together, as medpy's
  ``hd95`` does (with ``convention="voxel"`` it reproduces ``medpy.metric.binary.hd95``).

Empty masks never raise; they give the values of the convention's peer:

=================  ===============================  ==================================
                   surfel (surface-distance)        voxel (MONAI)
=================  ===============================  ==================================
pred empty         dice 0, hd/hd95/assd inf,        dice 0, hd/assd inf, hd95 nan,
                   surface_dice 0                   surface_dice 0
gt empty           as pred empty                    as pred empty, but dice nan
                                                    (``DiceMetric`` ignores empty gt)
both empty         dice/assd/surface_dice nan,      everything nan
                   hd/hd95 inf
=================  ===============================  ==================================

Every function but :func:`overlap` (a count) takes ``backend=`` (see :mod:`c2w_fast.ops`); the
work runs in the inputs' union bounding box, which changes no result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from c2w_fast.ops._arrays import as_mask, as_tensor, check_same_device, device_of, is_cupy, is_int
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op
from c2w_fast.ops._volume import check_pair, check_spacing, same_kind, union_box
from c2w_fast.ops.bounding_box import bounding_box
from c2w_fast.ops.surface import (
    SurfaceDistances,
    SurfaceSummary,
    _empty_summary,
    check_convention,
    check_summary_options,
    surface_distances,
    surface_summary,
)

__all__ = ["Metrics", "SurfaceDistances", "evaluate", "evaluate_batch", "evaluate_labels", "dice", "overlap", "hd",
           "hd95", "assd", "surface_dice", "surface_distances"]


@dataclass(frozen=True)
class Metrics:
    """Metrics of one pair of masks: ``dice`` and ``surface_dice`` in [0, 1], the rest in mm."""

    dice: float
    hd: float
    hd95: float
    assd: float
    surface_dice: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _count(mask) -> int:
    """Foreground voxels; ``count_nonzero`` of the whole tensor, as ``sum`` would convert it to int64 first."""
    return int(torch.count_nonzero(mask)) if isinstance(mask, torch.Tensor) else int(np.count_nonzero(mask))


def _dice_from_counts(n_pred: int, n_gt: int, n_overlap: int, convention: str) -> float:
    if n_gt == 0 and (convention == "voxel" or n_pred == 0):
        return math.nan
    return 2.0 * n_overlap / (n_pred + n_gt)


def _crop_and_count(pred, gt, backend):
    """Both masks cut to their union bounding box (as they are when both are empty) and the voxel
    counts of pred, gt and their overlap, for Dice: the counts then cost no full-volume pass."""
    box = union_box(pred, gt, backend)
    if box is None:
        return pred, gt, (0, 0, 0)
    pred, gt = pred[box], gt[box]
    return pred, gt, (_count(pred), _count(gt), _count(pred & gt))


def _metrics(dice_value: float, summary: SurfaceSummary) -> Metrics:
    return Metrics(dice=dice_value, hd=summary.hd, hd95=summary.hd_percentile, assd=summary.assd,
                   surface_dice=summary.surface_dice)


def _evaluate_pair(pred, gt, spacing, tolerance_mm, convention, percentile_rule, backend) -> Metrics:
    """:func:`evaluate` of one checked pair through the ops, each on ``backend``."""
    pred_c, gt_c, counts = _crop_and_count(pred, gt, backend)  # both empty: the op returns the empty rule
    summary = surface_summary(pred_c, gt_c, spacing, convention=convention, tolerance_mm=tolerance_mm,
                              percentile=95.0, percentile_rule=percentile_rule, backend=backend)
    return _metrics(_dice_from_counts(*counts, convention), summary)


def _each_on(ops_backend: str):
    """:func:`evaluate` of each pair of a batch through the ops, all on ``ops_backend``."""
    def evaluate_each(pred, gt, spacing, tolerance_mm, convention, percentile_rule) -> list[Metrics]:
        return [_evaluate_pair(p, g, spacing, tolerance_mm, convention, percentile_rule, ops_backend)
                for p, g in zip(pred, gt)]
    return evaluate_each


def _metrics_from_row(row: list[float], convention: str) -> Metrics:
    """:class:`Metrics` from a GPU row (counts of pred, gt, overlap; hd, hd95, assd, surface dice)."""
    n_pred, n_gt, n_overlap = (int(v) for v in row[:3])
    empty = n_pred == 0 or n_gt == 0
    summary = _empty_summary(n_pred == 0, n_gt == 0, convention) if empty else SurfaceSummary(*row[3:])
    return _metrics(_dice_from_counts(n_pred, n_gt, n_overlap, convention), summary)


def _evaluate_batch_triton(pred, gt, spacing, tolerance_mm, convention, percentile_rule) -> list[Metrics]:
    from c2w_fast.ops._gpu_surface import evaluate_rows

    rows = evaluate_rows(as_tensor(pred), as_tensor(gt), spacing, tolerance_mm=tolerance_mm, convention=convention,
                         percentile=95.0, percentile_rule=percentile_rule)
    return [_metrics_from_row(row, convention) for row in rows.tolist()]  # the batch's one host sync


# one GPU pass for a whole batch (triton), or one pair at a time through the ops on the same backend: a missing
# C++ extension makes evaluate itself fall back, with one warning, instead of each op it calls
EVALUATE_BATCH = Op("evaluate", {"reference": _each_on("reference"), "cpu": _each_on("cpu"),
                                 "triton": _evaluate_batch_triton}, preferred=COMPILED_FIRST)


def _evaluate_checked(pred, gt, spacing, tolerance_mm, convention, percentile_rule, backend) -> list[Metrics]:
    """Checked (pairs, *spatial) batches: one GPU pass (``triton``, or ``auto`` on CUDA inputs) or
    one :func:`evaluate` per pair through the ops (``reference``, ``cpu``, ``auto`` on CPU inputs)."""
    check_convention(convention)
    tolerance_mm, _ = check_summary_options(tolerance_mm, 95.0, percentile_rule)
    implementation = EVALUATE_BATCH.select(backend, device_of(pred))
    return implementation(pred, gt, spacing, tolerance_mm, convention, percentile_rule)


def evaluate(pred, gt, spacing=None, *, tolerance_mm: float = 1.0, convention: str = "surfel",
             percentile_rule: str = "max", backend: str = "auto") -> Metrics:
    """Dice, HD, HD95, ASSD and Surface Dice at ``tolerance_mm`` of ``pred`` against ``gt``.

    Args:
        pred, gt: masks of one shape, 2D (y, x) or 3D (z, y, x): numpy, torch (CPU or CUDA) or
            cupy, bool or 0/1. CUDA tensors and cupy arrays (zero-copy) are evaluated on the
            GPU with one host sync.
        spacing: voxel size in mm in the masks' axis order; ``None`` = 1 mm.
        tolerance_mm: Surface Dice tolerance in mm (a distance equal to it counts as within).
        convention: ``"surfel"`` (DeepMind surface-distance) or ``"voxel"`` (MONAI).
        percentile_rule: ``"max"`` or ``"pooled"`` (medpy) for ``hd95``.
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        :class:`Metrics` (floats; empty masks as in the module docstring).
    """
    pred, gt = check_pair(pred, gt)
    spacing = check_spacing(spacing, pred.ndim)
    return _evaluate_checked(pred[None], gt[None], spacing, tolerance_mm, convention, percentile_rule, backend)[0]


def evaluate_batch(pred, gt, spacing=None, *, tolerance_mm: float = 1.0, convention: str = "surfel",
                   percentile_rule: str = "max", backend: str = "auto") -> list[Metrics]:
    """:func:`evaluate` for each pair of a batch: one GPU pass and one host sync for the whole batch.

    Meant for validation loops: on CUDA tensors (or cupy arrays) every pair is evaluated on the
    GPU (in chunks that fit a 24 GB card) and the results are read back once at the end. On
    CPU inputs it evaluates the pairs one by one with the CPU backend. Results equal
    :func:`evaluate` on each pair.

    Args:
        pred, gt: batches of masks of one shape, (B, y, x) or (B, z, y, x): numpy, torch
            (CPU or CUDA) or cupy, bool or 0/1.
        spacing: voxel size in mm of one item, (y, x) or (z, y, x); ``None`` = 1 mm.
        tolerance_mm, convention, percentile_rule, backend: as :func:`evaluate`.

    Returns:
        ``B`` :class:`Metrics`, in batch order.
    """
    check_convention(convention)
    check_summary_options(tolerance_mm, 95.0, percentile_rule)
    pred, gt = as_mask(pred, "pred"), as_mask(gt, "gt")
    for name, batch in (("pred", pred), ("gt", gt)):
        if batch.ndim not in (3, 4):
            raise ValueError(f"{name} must be a batch of 2D or 3D masks, (B, y, x) or (B, z, y, x), "
                             f"got shape {tuple(batch.shape)}")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    check_same_device(pred, gt)
    pred, gt = same_kind(pred, gt)
    spacing = check_spacing(spacing, pred.ndim - 1)
    if pred.shape[0] == 0:
        return []
    return _evaluate_checked(pred, gt, spacing, tolerance_mm, convention, percentile_rule, backend)


def _label_values(labels) -> dict[str, tuple[int, ...]]:
    if isinstance(labels, Mapping):
        items = labels.items()
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        items = ((str(v), v) for v in labels)
    else:
        raise ValueError(f"labels must be a dict {{name: value}} or a list of label values, got {labels!r}")
    out = {}
    for name, value in items:
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not values or not all(is_int(v) for v in values):
            hint = " (is it the spacing? it comes after the labels)" if isinstance(labels, Sequence) else ""
            raise ValueError(f"label {name!r} must map to an int or a list of ints, got {value!r}{hint}")
        if str(name) in out:
            raise ValueError(f"labels name {name!r} twice")
        out[str(name)] = tuple(int(v) for v in values)
    if not out:
        raise ValueError("labels must name at least one label")
    return out


def _fill_is_in(mask, label_map, values) -> None:
    """Set the zeroed ``mask`` where ``label_map`` holds one of ``values``, in place: comparisons
    (unlike ``isin``, which is ~3x slower on numpy and refuses some torch dtypes) into ``mask`` itself."""
    if isinstance(label_map, torch.Tensor):
        if label_map.dtype != torch.bool:  # a value the dtype cannot hold matches nothing (== would wrap it)
            info = torch.iinfo(label_map.dtype)
            values = [v for v in values if info.min <= v <= info.max]
        equal = torch.eq
    else:
        label_map = label_map.view(np.uint8) if label_map.dtype == bool else label_map  # == refuses ints > int64
        equal = np.equal
    if values:
        first, *rest = values
        equal(label_map, first, out=mask)
        for value in rest:
            mask |= label_map == value


def _label_masks(label_map, named: dict[str, tuple[int, ...]]):
    """The (labels, *spatial) boolean stack of ``label_map``'s labels, filled in place: no per-label
    copies, so it peaks at the stack itself."""
    shape = (len(named), *label_map.shape)
    if isinstance(label_map, torch.Tensor):
        stack = torch.zeros(shape, dtype=torch.bool, device=label_map.device)
    else:
        stack = np.zeros(shape, bool)
    for mask, values in zip(stack, named.values()):
        _fill_is_in(mask, label_map, values)
    return stack


def _check_label_map(label_map, name: str):
    if is_cupy(label_map):
        label_map = as_tensor(label_map)
    if not isinstance(label_map, torch.Tensor):
        label_map = np.asarray(label_map)
    dtype = label_map.dtype
    integer = (not dtype.is_floating_point and not dtype.is_complex) if isinstance(label_map, torch.Tensor) \
        else (np.issubdtype(dtype, np.integer) or dtype == bool)
    if not integer:
        raise TypeError(f"{name} must be an integer label map, got dtype {dtype}")
    return label_map


def evaluate_labels(pred, gt, labels, spacing=None, *, tolerance_mm: float = 1.0, convention: str = "surfel",
                    percentile_rule: str = "max", backend: str = "auto") -> dict[str, Metrics]:
    """:func:`evaluate` for each label of two integer label maps (on the GPU all labels in one
    batch, with one host sync).

    Args:
        pred, gt: integer label maps of one shape, 2D or 3D (numpy, torch or cupy).
        labels: ``{name: value}`` (a value may be a list of values, evaluated as their union,
            e.g. ``{"atria": [1, 2, 3]}``), or a list of values named by ``str(value)``.
        spacing, tolerance_mm, convention, percentile_rule, backend: as :func:`evaluate`.

    Returns:
        ``{name: Metrics}`` in the order of ``labels``.
    """
    pred, gt = _check_label_map(pred, "pred"), _check_label_map(gt, "gt")
    pred, gt = same_kind(pred, gt)
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred and gt must be 2D (y, x) or 3D (z, y, x) label maps, got shape {tuple(pred.shape)}")
    named = _label_values(labels)
    results = evaluate_batch(_label_masks(pred, named), _label_masks(gt, named), spacing, tolerance_mm=tolerance_mm,
                             convention=convention, percentile_rule=percentile_rule, backend=backend)
    return dict(zip(named, results))


def dice(pred, gt, *, convention: str = "surfel", backend: str = "auto") -> float:
    """Dice ``2 |P ∩ G| / (|P| + |G|)``; nan when both are empty (and, with
    ``convention="voxel"``, whenever gt is empty, as MONAI). ``backend`` finds the union bounding box."""
    pred, gt = check_pair(pred, gt)
    check_convention(convention)
    return _dice_from_counts(*_crop_and_count(pred, gt, backend)[2], convention)


def overlap(pred, gt) -> float:
    """Overlap ``|P ∩ G| / |G|`` (MBAS eq. 3), the fraction of the ground truth ``pred`` covers;
    nan when gt is empty. Numpy, torch or cupy masks of one shape; counted in gt's bounding box."""
    pred, gt = check_pair(pred, gt)
    box = bounding_box(gt)
    return math.nan if box is None else _count(pred[box] & gt[box]) / _count(gt[box])


def hd(pred, gt, spacing=None, *, convention: str = "surfel", backend: str = "auto") -> float:
    """Hausdorff distance (mm): the largest surface distance of both directions."""
    return evaluate(pred, gt, spacing, convention=convention, backend=backend).hd


def hd95(pred, gt, spacing=None, *, convention: str = "surfel", percentile_rule: str = "max",
         backend: str = "auto") -> float:
    """95th-percentile Hausdorff distance (mm) under ``convention`` and ``percentile_rule``."""
    return evaluate(pred, gt, spacing, convention=convention, percentile_rule=percentile_rule, backend=backend).hd95


def assd(pred, gt, spacing=None, *, convention: str = "surfel", backend: str = "auto") -> float:
    """Average symmetric surface distance (mm): the weighted mean of both directions pooled."""
    return evaluate(pred, gt, spacing, convention=convention, backend=backend).assd


def surface_dice(pred, gt, spacing=None, *, tolerance_mm: float = 1.0, convention: str = "surfel",
                 backend: str = "auto") -> float:
    """Surface Dice: the weighted fraction of both surfaces within ``tolerance_mm`` of the other."""
    return evaluate(pred, gt, spacing, tolerance_mm=tolerance_mm, convention=convention, backend=backend).surface_dice
