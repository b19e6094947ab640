"""Exact Euclidean distance transform and signed distance of a 2D/3D mask, anisotropic spacing in mm.

Definitions (voxel centres, spacing ``s`` in mm; ``s = 1`` gives distances in voxels):

* ``distance_transform(mask)[v]`` = min over voxels ``w`` with ``mask[w] == 0`` of
  ``sqrt(sum_i ((v_i - w_i) * s_i)^2)`` for a nonzero voxel ``v``, and 0 on zero voxels —
  ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``. Only voxels inside the
  array count: the image border is not background.
* ``signed_distance(mask)`` = ``distance_transform(~mask) - distance_transform(mask)``:
  outside the mask the (positive) distance to the nearest mask voxel, inside it minus the
  distance to the nearest voxel outside. No voxel is 0: the voxels on either side of the
  boundary get plus/minus the step to the other side.

Degenerate masks: without any zero voxel (all foreground) there is nothing to measure to and
``distance_transform`` is ``+inf`` everywhere (scipy returns an artefact there), so
``signed_distance`` is ``-inf`` everywhere for an all-foreground mask and ``+inf`` everywhere
for an empty one; clip it before using it as a network input.

Outputs are float32 (the fast backends keep squared distances in float32: relative error
below 1e-6 against scipy's float64, exact for integer voxel distances) and of the input's
kind: numpy in, numpy out; torch in, torch out on the input's device.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from c2w_fast.ops._arrays import as_numpy, device_of
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op
from c2w_fast.ops._lazy import lazy
from c2w_fast.ops._volume import check_mask, check_spacing, embed, host_uint8_3d, like, spacing_3d
from c2w_fast.ops.bounding_box import bounding_box

TOLERANCE = {"rtol": 1e-6, "atol": 0.0}  # fast backends vs the float64 reference, read by the tests


def _edt_reference(mask: np.ndarray, spacing) -> np.ndarray:
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    return ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)


def _distance_reference(mask, spacing):
    return like(_edt_reference(as_numpy(mask), spacing), mask)


def _signed_reference(mask, spacing):
    array = as_numpy(mask)
    return like(_edt_reference(~array, spacing) - _edt_reference(array, spacing), mask)


def _edt_cpu(mask, spacing, to_nonzero: bool) -> np.ndarray:
    from c2w_fast import _cpu

    return _cpu.distance_transform(host_uint8_3d(mask), spacing_3d(spacing), to_nonzero).reshape(mask.shape)


def _inside_cpu(mask, spacing) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    """Distances inside the mask, computed in its bounding box grown by one voxel: every
    voxel outside that box is background and each one's nearest background voxel lies in it."""
    box = bounding_box(mask, margin=1, backend="cpu")
    return (None, None) if box is None else (box, _edt_cpu(mask[box], spacing, False))


def _distance_cpu(mask, spacing):
    box, inside = _inside_cpu(mask, spacing)
    if box is None:
        return like(np.zeros(tuple(mask.shape), np.float32), mask)
    return like(embed(inside, box, tuple(mask.shape)), mask)


def _signed_cpu(mask, spacing):
    signed = _edt_cpu(mask, spacing, True)  # distance to the mask, over the whole volume
    box, inside = _inside_cpu(mask, spacing)
    if box is not None:
        signed[box] -= inside
    return like(signed, mask)


DISTANCE_TRANSFORM = Op("distance_transform", {"reference": _distance_reference, "cpu": _distance_cpu,
                         "triton": lazy("c2w_fast.ops._gpu_distance", "distance_triton")},
                        preferred=COMPILED_FIRST)
SIGNED_DISTANCE = Op("signed_distance", {"reference": _signed_reference, "cpu": _signed_cpu,
                      "triton": lazy("c2w_fast.ops._gpu_distance", "signed_triton")},
                     preferred=COMPILED_FIRST)


def distance_transform(mask, spacing=None, *, backend: str = "auto"):
    """Euclidean distance (mm) of every nonzero voxel of ``mask`` to the nearest zero voxel; 0 on zero voxels.

    Args:
        mask: 2D (y, x) or 3D (z, y, x) array (numpy or torch, any layout); nonzero = foreground.
        spacing: voxel size in mm, (z, y, x) or (y, x); ``None`` = 1 (distances in voxels).
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        float32 array of ``mask``'s shape and kind; ``+inf`` everywhere when ``mask`` has no
        zero voxel. Matches ``scipy.ndimage.distance_transform_edt`` to ``TOLERANCE``.
    """
    mask = check_mask(mask, "mask")
    spacing = check_spacing(spacing, mask.ndim)
    return DISTANCE_TRANSFORM.select(backend, device_of(mask))(mask, spacing)


def signed_distance(mask, spacing=None, *, backend: str = "auto"):
    """Signed Euclidean distance (mm) to the mask's boundary: negative inside, positive outside.

    ``signed_distance(mask) = distance_transform(~mask) - distance_transform(mask)``: a voxel
    outside gets its distance to the nearest mask voxel, a voxel inside minus its distance to
    the nearest voxel outside (centre to centre), so no voxel is 0. ``+inf`` everywhere for an
    empty mask, ``-inf`` everywhere for an all-foreground one.

    Args:
        mask: 2D (y, x) or 3D (z, y, x) array (numpy or torch, any layout); nonzero = inside.
        spacing: voxel size in mm, (z, y, x) or (y, x); ``None`` = 1.
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        float32 array of ``mask``'s shape and kind.
    """
    mask = check_mask(mask, "mask")
    spacing = check_spacing(spacing, mask.ndim)
    return SIGNED_DISTANCE.select(backend, device_of(mask))(mask, spacing)
