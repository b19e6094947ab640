"""Shared plumbing of the volume ops: spacing checks, crops, 3D views, results shaped like the input.

Every op here works on 2D (y, x) or 3D (z, y, x) masks. The C++ kernels see 3D C-contiguous
uint8 arrays only; a 2D mask is viewed as (1, y, x) and its spacing padded with a 1 mm z step
that never matters (there is only one slice).
"""
from __future__ import annotations

import numpy as np
import torch

from c2w_fast.ops._arrays import as_mask, as_numpy, as_tensor, check_same_device, is_cupy, real_number
from c2w_fast.ops.bounding_box import bounding_box

Box = tuple[slice, ...]


def check_mask(mask, name: str, ndims=(2, 3)):
    """``mask`` as a boolean array of its own kind (numpy or torch), with 2 or 3 dimensions."""
    mask = as_mask(mask, name)
    if mask.ndim not in ndims:
        wanted = " or ".join(f"{n}D" for n in ndims)
        axes = {2: "(y, x)", 3: "(z, y, x)"}
        hint = f" (drop the leading axis: {name}[0])" if mask.ndim == max(ndims) + 1 and mask.shape[0] == 1 else ""
        raise ValueError(f"{name} must be {wanted} {' or '.join(axes[n] for n in ndims)}, "
                         f"got shape {tuple(mask.shape)}{hint}")
    return mask


def check_pair(pred, gt):
    """Both masks checked, of one shape and on one device."""
    pred, gt = check_mask(pred, "pred"), check_mask(gt, "gt")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    check_same_device(pred, gt)
    return same_kind(pred, gt)


def same_kind(a, b):
    """``a`` and ``b`` as one kind of array: a numpy array with a (CPU) tensor become both tensors."""
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        return as_tensor(a), as_tensor(b)
    return a, b


# Voxel sizes (mm) the float32 distance kernels represent without overflow or underflow.
SPACING_RANGE = (1e-6, 1e6)


def check_spacing(spacing, ndim: int, name: str = "spacing") -> tuple[float, ...]:
    """``spacing`` as ``ndim`` positive finite floats in mm (``None`` means 1 mm on every axis),
    each within ``SPACING_RANGE`` (a nanometre to a kilometre)."""
    if spacing is None:
        return (1.0,) * ndim
    axes = "(z, y, x)" if ndim == 3 else "(y, x)"
    problem = f"{name} must have {ndim} positive values {axes} in mm, got {spacing!r}"
    if isinstance(spacing, (str, bytes)):
        raise ValueError(problem)
    try:  # numbers only: a bool would pass for 1 mm, a string be parsed
        values = tuple(real_number(s) for s in (spacing.tolist() if hasattr(spacing, "tolist") else spacing))
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(problem)
    low, high = SPACING_RANGE
    if not all(low <= v <= high for v in values):
        raise ValueError(f"{name} {values} mm is outside [{low:g}, {high:g}] mm; is the unit right?")
    return values


def spacing_3d(spacing: tuple[float, ...]) -> tuple[float, float, float]:
    """A 2D (y, x) spacing padded to (1, y, x); a 3D one unchanged."""
    return (1.0,) * (3 - len(spacing)) + tuple(spacing)


def host_uint8_3d(mask) -> np.ndarray:
    """A C-contiguous uint8 (z, y, x) numpy view (copy only when needed) of a CPU boolean mask."""
    array = np.ascontiguousarray(as_numpy(mask))
    return array.view(np.uint8).reshape((1,) * (3 - array.ndim) + array.shape)


def box_3d(box: Box) -> tuple[int, int, int, int, int, int]:
    """``box`` of a 2D or 3D array as the kernels' (z0, z1, y0, y1, x0, x1) of its 3D view."""
    box = (slice(0, 1),) * (3 - len(box)) + tuple(box)
    return tuple(int(v) for s in box for v in (s.start, s.stop))


def union(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box holding both boxes (``None`` stands for an empty mask)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(s.start, t.start), max(s.stop, t.stop)) for s, t in zip(a, b))


def union_box(pred, gt, backend: str = "auto") -> Box | None:
    """The union bounding box of two masks (``None`` when both are empty)."""
    return union(bounding_box(pred, backend=backend), bounding_box(gt, backend=backend))


def like(result: np.ndarray, original):
    """``result`` (numpy) as the kind of array ``original`` is: numpy, or torch on its device."""
    if isinstance(original, torch.Tensor) or is_cupy(original):
        device = original.device if isinstance(original, torch.Tensor) else torch.device("cuda")
        return torch.from_numpy(np.ascontiguousarray(result)).to(device)
    return result


def embed(crop_result: np.ndarray, box: Box, shape) -> np.ndarray:
    """A full-``shape`` array holding ``crop_result`` at ``box`` and zeros elsewhere (the
    result itself when the box is the whole array)."""
    if tuple(crop_result.shape) == tuple(shape):
        return crop_result
    out = np.zeros(shape, dtype=crop_result.dtype)
    out[box] = crop_result
    return out
