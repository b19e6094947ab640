"""Binary dilation and erosion of a 2D/3D mask by a ball of radius in voxels or in mm.

The structuring element is the ball ``B = {offset o : sum_i (o_i * s_i)^2 <= radius^2}``
with ``s`` the spacing (mm; ``spacing=None`` means ``s = 1`` and a radius in voxels),
evaluated in float64 exactly as :func:`ball` writes it, so an offset on the sphere is in.
Results are bit-identical to ``scipy.ndimage.binary_dilation`` / ``binary_erosion`` with
``structure=ball(radius, spacing)`` and scipy's default ``border_value=0``:

* dilation: ``out[v] = 1`` iff some ``mask[v + o] = 1`` with ``o`` in ``B``;
* erosion: ``out[v] = 1`` iff ``mask[v + o] = 1`` for every ``o`` in ``B``, where a
  ``v + o`` outside the array counts as 0 — objects touching the border are eroded from it.

Outputs are bool, of the input's kind: numpy in, numpy out; torch in, torch out on its device.
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from c2w_fast.ops._arrays import as_numpy, device_of
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op
from c2w_fast.ops._lazy import lazy
from c2w_fast.ops._volume import box_3d, check_mask, check_spacing, host_uint8_3d, like
from c2w_fast.ops.bounding_box import bounding_box


MAX_BALL_ELEMENTS = 2**27  # offsets of a ball without ``within`` (its float64 temporaries take 1 GiB each)


def ball(radius: float, spacing=None, ndim: int = 3, *, within=None) -> np.ndarray:
    """The structuring element: bool array of odd sizes ``2 * h_i + 1``, true at offsets ``o``
    from the centre with ``sum_i (o_i * s_i)^2 <= radius^2`` (float64), ``h_i`` the largest
    offset on axis ``i`` alone that is in.

    ``within``: the shape of the array it will be applied to; offsets beyond ``within[i]`` are
    left out, which changes neither a dilation nor an erosion of that array (such an offset
    leaves it from every voxel, and the axis offset ``within[i]`` that stays has the same
    effect), so a huge radius costs no more than the array. Without ``within`` a ball of more
    than ``MAX_BALL_ELEMENTS`` offsets raises a ``ValueError`` instead of exhausting memory.
    """
    spacing = np.asarray(check_spacing(spacing, ndim), dtype=np.float64)
    radius = _check_radius(radius)
    steps = np.floor(radius / spacing)
    if within is not None:
        steps = np.minimum(steps, np.asarray(within, dtype=np.float64))
    half = steps + (((steps + 1) * spacing) ** 2 <= radius * radius)  # the division may round an on-sphere offset down
    if within is not None:
        half = np.minimum(half, np.asarray(within, dtype=np.float64))
    elements = np.prod(2 * half + 1)  # in float64: no overflow before the check
    if within is None and elements > MAX_BALL_ELEMENTS:
        raise ValueError(f"radius {radius} gives a ball of {elements:.3g} offsets, more than MAX_BALL_ELEMENTS "
                         "= 2**27; pass within= (the shape of the array it is applied to) to clip it")
    half = half.astype(np.int64)
    grids = np.meshgrid(*[np.arange(-h, h + 1, dtype=np.float64) for h in half], indexing="ij", sparse=True)
    squared = sum((g * s) ** 2 for g, s in zip(grids, spacing))
    return squared <= radius * radius


def _check_radius(radius) -> float:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a non-negative number (voxels, or mm with spacing), got {radius!r}")
    return float(radius)


def _dilation_reference(mask, radius, spacing):
    array = as_numpy(mask)
    return like(ndimage.binary_dilation(array, structure=ball(radius, spacing, array.ndim, within=array.shape)), mask)


def _erosion_reference(mask, radius, spacing):
    array = as_numpy(mask)
    return like(ndimage.binary_erosion(array, structure=ball(radius, spacing, array.ndim, within=array.shape)), mask)


def _row_halfwidths(element: np.ndarray) -> np.ndarray:
    """int32 (dz, dy) table of the element's x half-width per row, -1 for an empty row.
    A ball's rows are centred intervals: (o_x s_x)^2 grows with |o_x| in float64 too."""
    element = element.reshape((1,) * (3 - element.ndim) + element.shape)
    widths = element.sum(axis=2)
    return np.where(widths > 0, (widths - 1) // 2, -1).astype(np.int32)


def _morphology_cpu(mask, radius, spacing, erode: bool):
    from c2w_fast import _cpu

    element = ball(radius, spacing, mask.ndim, within=mask.shape)
    # dilation reaches the element's half extent beyond the mask; erosion stays inside it
    box = bounding_box(mask, margin=0 if erode else tuple(n // 2 for n in element.shape), backend="cpu")
    out = np.zeros(tuple(mask.shape), np.uint8)
    if box is not None:
        _cpu.dilate_or_erode(host_uint8_3d(mask), box_3d(box), _row_halfwidths(element), erode,
                             out.reshape((1,) * (3 - out.ndim) + out.shape))
    return like(out.view(bool), mask)


def _dilation_cpu(mask, radius, spacing):
    return _morphology_cpu(mask, radius, spacing, erode=False)


def _erosion_cpu(mask, radius, spacing):
    return _morphology_cpu(mask, radius, spacing, erode=True)


DILATION = Op("binary_dilation", {"reference": _dilation_reference, "cpu": _dilation_cpu,
                                 "triton": lazy("c2w_fast.ops._gpu_morphology", "dilation_triton")},
              preferred=COMPILED_FIRST)
EROSION = Op("binary_erosion", {"reference": _erosion_reference, "cpu": _erosion_cpu,
                               "triton": lazy("c2w_fast.ops._gpu_morphology", "erosion_triton")},
             preferred=COMPILED_FIRST)


def binary_dilation(mask, radius: float, *, spacing=None, backend: str = "auto"):
    """``mask`` dilated by the ball of ``radius`` (voxels, or mm when ``spacing`` is given).

    Args:
        mask: 2D (y, x) or 3D (z, y, x) array (numpy or torch, any layout); nonzero = foreground.
        radius: ball radius, >= 0; 0 returns the mask unchanged.
        spacing: voxel size in mm, (z, y, x) or (y, x); ``None`` = radius in voxels.
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        bool array of ``mask``'s shape and kind, identical to
        ``scipy.ndimage.binary_dilation(mask, structure=ball(radius, spacing))``.
    """
    mask = check_mask(mask, "mask")
    radius = _check_radius(radius)
    spacing = None if spacing is None else check_spacing(spacing, mask.ndim)
    return DILATION.select(backend, device_of(mask))(mask, radius, spacing)


def binary_erosion(mask, radius: float, *, spacing=None, backend: str = "auto"):
    """``mask`` eroded by the ball of ``radius`` (voxels, or mm when ``spacing`` is given).

    Outside the array counts as background (scipy's default ``border_value=0``), so a
    voxel closer to the border than the ball reaches is removed.
    Args, kinds and result as :func:`binary_dilation`, identical to
    ``scipy.ndimage.binary_erosion(mask, structure=ball(radius, spacing))``.
    """
    mask = check_mask(mask, "mask")
    radius = _check_radius(radius)
    spacing = None if spacing is None else check_spacing(spacing, mask.ndim)
    return EROSION.select(backend, device_of(mask))(mask, radius, spacing)
