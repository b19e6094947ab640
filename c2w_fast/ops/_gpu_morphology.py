"""Triton backends of :func:`~c2w_fast.ops.binary_dilation` and :func:`~c2w_fast.ops.binary_erosion`.

The element is :func:`c2w_fast.ops.morphology.ball`, passed to the kernel row by row (the
x half-width of each (dz, dy) row, ``kernels/morphology.py``), so the result is bit-identical
to scipy's with that element. A dilation can only reach the mask's bounding box grown by the
element's half extents, an erosion only the box itself; the kernels work there.
"""
from __future__ import annotations

import torch

from c2w_fast.kernels.morphology import dilate_or_erode
from c2w_fast.ops._arrays import as_tensor
from c2w_fast.ops._gpu_volume import as_items, bounding_boxes, grow_boxes, to_kind
from c2w_fast.ops.morphology import _row_halfwidths, ball


def _morphology_triton(mask, radius, spacing, erode: bool):
    tensor = as_tensor(mask)
    items = as_items(tensor, tensor.ndim)
    element = ball(radius, spacing, tensor.ndim, within=tensor.shape)
    box = bounding_boxes(items)
    if not erode:
        half = (0,) * (3 - element.ndim) + tuple(n // 2 for n in element.shape)
        box = grow_boxes(box, half, half, items.shape[1:])
    out = dilate_or_erode(items[0], box[0].contiguous(), _row_halfwidths(element), erode=erode)
    return to_kind(out.view(torch.bool).reshape(tensor.shape), mask)


def dilation_triton(mask, radius, spacing):
    return _morphology_triton(mask, radius, spacing, erode=False)


def erosion_triton(mask, radius, spacing):
    return _morphology_triton(mask, radius, spacing, erode=True)
