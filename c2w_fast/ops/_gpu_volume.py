"""Device-side plumbing of the GPU backends: (items, z, y, x) views and boxes that never leave the device.

The Triton/CUDA kernels work on C-contiguous uint8 batches of shape (items, z, y, x) — a 2D
mask is one item of shape (1, 1, y, x) — and restrict their work to one box per item, held
on the device as int32 ``(z0, z1, y0, y1, x0, x1)`` (inclusive; empty when ``z0 > z1``).
Boxes are computed with torch reductions, so a batch of any size needs no host sync to
decide where to work.
"""
from __future__ import annotations

import numpy as np
import torch

from c2w_fast.kernels import host_to_device

EMPTY_BOX = (0, -1, 0, -1, 0, -1)


def as_items(mask: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """A contiguous uint8 (items, z, y, x) view of a bool tensor whose last ``spatial_dims``
    (2 or 3) axes are (y, x) or (z, y, x); leading axes become items (copy only when needed)."""
    spatial = tuple(mask.shape[mask.ndim - spatial_dims:])
    spatial = (1,) * (3 - spatial_dims) + spatial
    return mask.contiguous().view(torch.uint8).reshape(-1, *spatial)


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """int32 (items, 6) inclusive bounding boxes of the nonzero voxels of a uint8/bool (items, z, y, x)
    batch; ``EMPTY_BOX`` for an empty item."""
    items = masks.shape[0]
    rows = masks.reshape(items, masks.shape[1], masks.shape[2], -1).amax(dim=3) != 0  # (items, z, y)
    columns = masks.amax(dim=(1, 2)) != 0  # (items, x)
    extents = []
    for hits in (rows.any(dim=2), rows.any(dim=1), columns):
        n = hits.shape[1]
        first = hits.to(torch.uint8).argmax(dim=1)
        last = n - 1 - hits.flip(1).to(torch.uint8).argmax(dim=1)
        extents += [first, last]
    boxes = torch.stack(extents, dim=1).to(torch.int32)
    empty = ~columns.any(dim=1, keepdim=True)
    return torch.where(empty, host_to_device(EMPTY_BOX, torch.int32, masks.device), boxes).contiguous()


def grow_boxes(boxes: torch.Tensor, low, high, shape) -> torch.Tensor:
    """Boxes grown by ``low`` below and ``high`` above per axis (z, y, x), clipped to ``shape``;
    empty boxes stay empty."""
    low_t, high_t, limit = host_to_device([[-int(low[0]), 0, -int(low[1]), 0, -int(low[2]), 0],
                                           [0, int(high[0]), 0, int(high[1]), 0, int(high[2])],
                                           [0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1]],
                                          torch.int32, boxes.device)
    grown = boxes + low_t + high_t
    grown = torch.where(torch.arange(6, device=boxes.device) % 2 == 0, grown.clamp(min=0), torch.minimum(grown, limit))
    empty = (boxes[:, 0] > boxes[:, 1]).unsqueeze(1)
    return torch.where(empty, boxes, grown).contiguous()


def whole_boxes(items: int, shape, device) -> torch.Tensor:
    """Boxes covering every voxel of ``items`` grids of ``shape`` (z, y, x)."""
    box = [0, shape[0] - 1, 0, shape[1] - 1, 0, shape[2] - 1]
    return host_to_device([box] * items, torch.int32, device).reshape(items, 6)


def to_kind(result: torch.Tensor, original):
    """``result`` as the kind of array ``original`` is: torch stays torch (on its device); a numpy
    input (the Triton interpreter on the CPU) gets numpy back."""
    if isinstance(original, torch.Tensor) or not isinstance(original, np.ndarray):
        return result
    return result.cpu().numpy()
