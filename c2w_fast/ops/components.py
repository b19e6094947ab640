"""Connected components of a 2D/3D mask: labelling, keep the largest, remove the small ones.

Connectivity says which neighbours touch: in 3D 6 (faces), 18 (faces and edges) or 26
(faces, edges and corners); in 2D 4 (edges) or 8 (edges and corners). Components are
numbered 1..count in raster (z, y, x) order of their first voxel, exactly as
``scipy.ndimage.label`` with ``generate_binary_structure(ndim, rank)`` numbers them.
Outputs are of the input's kind: numpy in, numpy out; torch in, torch out on its device.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from c2w_fast.ops._arrays import as_numpy, device_of, is_int
from c2w_fast.ops._dispatch import COMPILED_FIRST, Op
from c2w_fast.ops._lazy import lazy
from c2w_fast.ops._volume import box_3d, check_mask, host_uint8_3d, like
from c2w_fast.ops.bounding_box import bounding_box

CONNECTIVITY_RANK = {3: {6: 1, 18: 2, 26: 3}, 2: {4: 1, 8: 2}}


def check_connectivity(connectivity, ndim: int) -> int:
    """``connectivity`` as an int valid for ``ndim`` (26 in 3D means 8 in 2D and so on)."""
    allowed = CONNECTIVITY_RANK[ndim]
    if ndim == 2 and connectivity in (6, 18, 26):  # the 3D defaults read naturally in 2D too
        connectivity = {6: 4, 18: 8, 26: 8}[connectivity]
    if connectivity not in allowed:
        raise ValueError(f"connectivity must be one of {sorted(allowed)} for a {ndim}D mask, got {connectivity!r}")
    return int(connectivity)


def _label_reference(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    structure = ndimage.generate_binary_structure(mask.ndim, CONNECTIVITY_RANK[mask.ndim][connectivity])
    labels, count = ndimage.label(mask, structure=structure, output=np.int32)
    return labels, int(count)


def _sizes(labels: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=count + 1)


def _label(mask, connectivity):
    labels, count = _label_reference(as_numpy(mask), connectivity)
    return like(labels, mask), count


def _keep_largest(mask, connectivity):
    labels, count = _label_reference(as_numpy(mask), connectivity)
    if count == 0:
        return like(np.zeros(labels.shape, bool), mask)
    sizes = _sizes(labels, count)
    return like(labels == 1 + int(np.argmax(sizes[1:])), mask)


def _remove_small(mask, min_voxels, connectivity):
    labels, count = _label_reference(as_numpy(mask), connectivity)
    keep = _sizes(labels, count) >= min_voxels
    keep[0] = False
    return like(keep[labels], mask)


def _kernel_connectivity(connectivity: int) -> int:
    """The C++ kernels see 2D masks as one slice: 4 behaves as 6 and 8 as 26."""
    return {4: 6, 8: 26}.get(connectivity, connectivity)


def _in_box_cpu(kernel, mask, dtype, *args):
    """``kernel(mask, box, *args, out)`` on the mask's bounding box (components never leave
    it), writing into zeros; returns the result and what the kernel returned."""
    out = np.zeros(tuple(mask.shape), np.int32 if dtype == np.int32 else np.uint8)
    box = bounding_box(mask, backend="cpu")
    if box is None:
        return like(out.view(dtype), mask), 0
    returned = kernel(host_uint8_3d(mask), box_3d(box), *args, out.reshape((1,) * (3 - out.ndim) + out.shape))
    return like(out.view(dtype), mask), returned


def _label_cpu(mask, connectivity):
    from c2w_fast import _cpu

    labels, count = _in_box_cpu(_cpu.label_components, mask, np.int32, _kernel_connectivity(connectivity))
    return labels, int(count)


def _keep_largest_cpu(mask, connectivity):
    from c2w_fast import _cpu

    return _in_box_cpu(_cpu.keep_largest_component, mask, bool, _kernel_connectivity(connectivity))[0]


def _remove_small_cpu(mask, min_voxels, connectivity):
    from c2w_fast import _cpu

    return _in_box_cpu(_cpu.remove_small_components, mask, bool, min_voxels, _kernel_connectivity(connectivity))[0]


LABEL = Op("label_components", {"reference": _label, "cpu": _label_cpu,
                                       "triton": lazy("c2w_fast.ops._gpu_components", "label_triton"),
                                       "cuda": lazy("c2w_fast.ops._gpu_components", "label_cuda")},
           preferred=COMPILED_FIRST)
KEEP_LARGEST = Op("keep_largest_component", {"reference": _keep_largest, "cpu": _keep_largest_cpu,
                                            "triton": lazy("c2w_fast.ops._gpu_components", "keep_largest_triton"),
                                            "cuda": lazy("c2w_fast.ops._gpu_components", "keep_largest_cuda")},
                  preferred=COMPILED_FIRST)
REMOVE_SMALL = Op("remove_small_components", {"reference": _remove_small, "cpu": _remove_small_cpu,
                                              "triton": lazy("c2w_fast.ops._gpu_components", "remove_small_triton"),
                                              "cuda": lazy("c2w_fast.ops._gpu_components", "remove_small_cuda")},
                  preferred=COMPILED_FIRST)


def label_components(mask, connectivity: int = 26, *, backend: str = "auto"):
    """Label the connected components of ``mask``.

    Args:
        mask: 2D (y, x) or 3D (z, y, x) array (numpy or torch, any layout); nonzero = foreground.
        connectivity: 6, 18 or 26 in 3D; 4 or 8 in 2D (26 and 18 mean 8, 6 means 4 there).
        backend: see :mod:`c2w_fast.ops`.

    Returns:
        ``(labels, count)``: int32 labels of ``mask``'s shape and kind, 0 on background and
        1..count numbered in raster order of each component's first voxel
        (as ``scipy.ndimage.label``), and the number of components.
    """
    mask = check_mask(mask, "mask")
    connectivity = check_connectivity(connectivity, mask.ndim)
    return LABEL.select(backend, device_of(mask))(mask, connectivity)


def keep_largest_component(mask, connectivity: int = 26, *, backend: str = "auto"):
    """Only the largest connected component of ``mask`` (most voxels; on a tie, the first in
    raster order). An empty mask stays empty.

    Args and kinds as :func:`label_components`; returns a bool mask.
    """
    mask = check_mask(mask, "mask")
    connectivity = check_connectivity(connectivity, mask.ndim)
    return KEEP_LARGEST.select(backend, device_of(mask))(mask, connectivity)


def remove_small_components(mask, min_voxels: int, connectivity: int = 26, *, backend: str = "auto"):
    """``mask`` without its connected components of fewer than ``min_voxels`` voxels.

    Components with at least ``min_voxels`` voxels are kept whole; ``min_voxels <= 1`` keeps
    everything. Args and kinds as :func:`label_components`; returns a bool mask.
    """
    mask = check_mask(mask, "mask")
    connectivity = check_connectivity(connectivity, mask.ndim)
    if not is_int(min_voxels) or min_voxels < 0:
        raise ValueError(f"min_voxels must be a non-negative int, got {min_voxels!r}")
    min_voxels = min(int(min_voxels), int(np.prod(mask.shape)) + 1)  # more than all voxels: the same, and fits int64
    return REMOVE_SMALL.select(backend, device_of(mask))(mask, min_voxels, connectivity)
