"""Triton and CUDA backends of the connected-component ops (:mod:`c2w_fast.ops.components`).

Union-find on the device (``kernels/components.py``) gives every foreground voxel the linear
index of its component's first voxel in raster order; the labels 1..count follow by a prefix
sum over those roots, so they are numbered exactly as ``scipy.ndimage.label`` numbers them.
Component sizes come from one scatter-add, so keep-largest and remove-small never wait for
the host; only ``label_components`` reads the count back.
"""
from __future__ import annotations

from functools import partial

import torch

from c2w_fast.kernels.components import component_roots, component_roots_cuda
from c2w_fast.ops._arrays import as_tensor
from c2w_fast.ops._gpu_volume import as_items, bounding_boxes, to_kind


def _kernel_connectivity(connectivity: int) -> int:
    return {4: 6, 8: 26}.get(connectivity, connectivity)  # a 2D mask is one slice


def _roots(tensor: torch.Tensor, connectivity: int, kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """(foreground flags, roots) of a 2D/3D bool tensor, both flat; roots 0 on background."""
    items = as_items(tensor, tensor.ndim)
    roots = kernel(items, bounding_boxes(items), _kernel_connectivity(connectivity))
    foreground = items.reshape(-1) != 0
    return foreground, torch.where(foreground, roots.reshape(-1), 0)


def _sizes(foreground: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """Voxels per root index (int32, one entry per voxel; 0 for non-roots)."""
    return torch.zeros_like(roots).index_add_(0, roots, foreground.to(torch.int32))


def _label(mask, connectivity, kernel):
    tensor = as_tensor(mask)
    foreground, roots = _roots(tensor, connectivity, kernel)
    is_root = foreground & (roots == torch.arange(roots.numel(), device=roots.device, dtype=torch.int32))
    number = torch.cumsum(is_root, dim=0, dtype=torch.int32)
    labels = torch.where(foreground, number[roots], 0)
    count = int(number[-1]) if number.numel() else 0  # the op returns the count: its one host sync
    return to_kind(labels.reshape(tensor.shape), mask), count


def _keep_largest(mask, connectivity, kernel):
    tensor = as_tensor(mask)
    foreground, roots = _roots(tensor, connectivity, kernel)
    largest = torch.argmax(_sizes(foreground, roots)) if roots.numel() else 0  # first of equal sizes
    return to_kind((foreground & (roots == largest)).reshape(tensor.shape), mask)


def _remove_small(mask, min_voxels, connectivity, kernel):
    tensor = as_tensor(mask)
    foreground, roots = _roots(tensor, connectivity, kernel)
    keep = foreground & (_sizes(foreground, roots)[roots] >= min_voxels)
    return to_kind(keep.reshape(tensor.shape), mask)


label_triton = partial(_label, kernel=component_roots)
label_cuda = partial(_label, kernel=component_roots_cuda)
keep_largest_triton = partial(_keep_largest, kernel=component_roots)
keep_largest_cuda = partial(_keep_largest, kernel=component_roots_cuda)
remove_small_triton = partial(_remove_small, kernel=component_roots)
remove_small_cuda = partial(_remove_small, kernel=component_roots_cuda)
