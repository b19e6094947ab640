"""Bounding box of a mask: where the metrics, morphology and ROI crops restrict their work."""
from __future__ import annotations

import numpy as np
import torch

from c2w_fast.ops._arrays import as_mask, as_tensor, device_of, is_int
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op

Extent = list[tuple[int, int]]  # (first, last + 1) per axis


def _reference(mask) -> Extent | None:
    if isinstance(mask, torch.Tensor):
        if not bool(mask.any()):
            return None
        extent = []
        for axis in range(mask.ndim):
            others = [a for a in range(mask.ndim) if a != axis]
            hits = torch.nonzero(mask.any(dim=others) if others else mask).flatten()
            extent.append((int(hits[0]), int(hits[-1]) + 1))
        return extent
    if not mask.any():
        return None
    extent = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others) if others else mask)
        extent.append((int(hits[0]), int(hits[-1]) + 1))
    return extent


def _as_3d(shape) -> tuple[int, int, int]:
    return (1,) * (3 - len(shape)) + tuple(shape)


def _from_flat_box(box, ndim: int) -> Extent | None:
    """Turn the kernels' (z0, z1, y0, y1, x0, x1) over a 3D view back into ``ndim`` axes."""
    if box[1] <= box[0]:
        return None
    pairs = [(int(box[2 * a]), int(box[2 * a + 1])) for a in range(3)]
    return pairs[3 - ndim:]


def _cpu(mask) -> Extent | None:
    from c2w_fast import _cpu as cpu_kernels
    array = np.ascontiguousarray(mask.numpy() if isinstance(mask, torch.Tensor) else mask)
    box = cpu_kernels.bounding_box(array.view(np.uint8).reshape(_as_3d(array.shape)))
    return _from_flat_box(box, array.ndim)


def _triton(mask) -> Extent | None:
    from c2w_fast.kernels.bounding_box import bounding_box_triton
    tensor = as_tensor(mask).contiguous()
    box = bounding_box_triton(tensor.view(torch.uint8).reshape(_as_3d(tensor.shape)))
    return _from_flat_box(box, tensor.ndim)


def _cuda(mask) -> Extent | None:
    from c2w_fast.kernels.bounding_box import bounding_box_cuda
    tensor = as_tensor(mask).contiguous()
    box = bounding_box_cuda(tensor.view(torch.uint8).reshape(_as_3d(tensor.shape)))
    return _from_flat_box(box, tensor.ndim)


BOUNDING_BOX = Op(
    "bounding_box",
    {"reference": _reference, "cpu": _cpu, "triton": _triton, "cuda": _cuda},
    preferred=COMPILED_FIRST,
)


def bounding_box(mask, *, margin: int | tuple[int, ...] = 0, backend: str = "auto") -> tuple[slice, ...] | None:
    """Smallest box holding every nonzero voxel of ``mask``, grown by ``margin`` voxels per side.

    Args:
        mask: 1D-3D array (numpy, torch on any device, or cupy); nonzero means inside.
        margin: voxels added on each side, one int >= 0 for all axes or one per axis; the box is
            clipped to the array, so it never reaches outside it.
        backend: see :mod:`c2w_fast.ops` (``auto``, ``reference``, ``cpu``, ``triton``, ``cuda``).

    Returns:
        One ``slice(start, stop)`` per axis (``mask[box]`` is the crop), or ``None`` when
        the mask is empty.
    """
    mask = as_mask(mask, "mask")
    if not 1 <= mask.ndim <= 3:
        raise ValueError(f"mask must be 1D, 2D or 3D, got shape {tuple(mask.shape)}")
    try:
        margins = (margin,) * mask.ndim if np.isscalar(margin) else tuple(margin)
    except TypeError:  # not iterable
        margins = ()
    if len(margins) != mask.ndim or not all(is_int(m) and m >= 0 for m in margins):
        raise ValueError(f"margin must be one non-negative int or {mask.ndim} of them, got {margin!r}")
    extent = BOUNDING_BOX.select(backend, device_of(mask))(mask)
    if extent is None:
        return None
    return tuple(slice(max(lo - int(m), 0), min(hi + int(m), size))
                 for (lo, hi), m, size in zip(extent, margins, mask.shape))
