"""Triton backends of :func:`~c2w_fast.ops.distance_transform` and :func:`~c2w_fast.ops.signed_distance`.

Definitions in :mod:`c2w_fast.ops.distance_transform`. Distances inside the mask are computed
in its bounding box grown by one voxel (clipped): every voxel outside that box is background,
and the nearest background voxel of a voxel inside lies in it (clamping any outside candidate
onto the box's rim only brings it closer). Distances outside the mask (signed distance) need
the whole grid.
"""
from __future__ import annotations

import torch

from c2w_fast.kernels import edt as edt_kernels
from c2w_fast.ops._arrays import as_tensor
from c2w_fast.ops._gpu_volume import as_items, bounding_boxes, grow_boxes, to_kind, whole_boxes
from c2w_fast.ops._volume import spacing_3d


def _inside(items: torch.Tensor, spacing) -> torch.Tensor:
    """float32 distance (mm) of every foreground voxel to the background; 0 elsewhere."""
    boxes = grow_boxes(bounding_boxes(items), (1, 1, 1), (1, 1, 1), items.shape[1:])
    squared = edt_kernels.squared_distance_to_sites(items, boxes, spacing_3d(spacing), site=edt_kernels.SITE_ZERO)
    return torch.where(items != 0, squared.sqrt(), 0.0)


def distance_triton(mask, spacing):
    tensor = as_tensor(mask)
    items = as_items(tensor, tensor.ndim)
    return to_kind(_inside(items, spacing).reshape(tensor.shape), mask)


def signed_triton(mask, spacing):
    tensor = as_tensor(mask)
    items = as_items(tensor, tensor.ndim)
    to_mask = edt_kernels.squared_distance_to_sites(
        items, whole_boxes(1, items.shape[1:], items.device), spacing_3d(spacing), site=edt_kernels.SITE_NONZERO)
    signed = torch.where(items != 0, -_inside(items, spacing), to_mask.sqrt())
    return to_kind(signed.reshape(tensor.shape), mask)
