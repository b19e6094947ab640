"""Is a volume what a tool expects? Cheap checks on a strided sample of its voxels: an LGE-MRI image
holds hundreds of distinct values and spans a heart's field of view; a label map holds a few whole codes."""
from __future__ import annotations

import math

import numpy as np
import torch

from c2w_fast.ops._arrays import as_numpy

LABEL_MAP_VALUES = 8        # at most this many distinct whole values: a label map, not an MRI (hundreds)
IMAGE_VALUES = 64           # more distinct values than this: an image, not a label map of a few structures
SAMPLED_VOXELS = 2 ** 18    # the checks look at about this many voxels (a strided subsample)
MIN_HEART_EXTENT_MM = 40.0  # a heart MRI spans more than a 4 cm atrium along at least two axes
MIN_VOXEL_MM = 0.2          # finer than any cardiac MRI: a voxel size in cm, or 10x too small
MAX_VOXEL_MM = 10.0         # coarser than any cardiac MRI (LGE slices are 1-5 mm): a voxel size in the wrong unit


def sampled_values(volume) -> np.ndarray:
    """The sorted distinct values of a strided subsample of about :data:`SAMPLED_VOXELS` voxels of ``volume``
    (numpy, or torch on any device: only the subsample comes to the host)."""
    step = max(1, round((math.prod(volume.shape) / SAMPLED_VOXELS) ** (1 / 3)))
    return np.unique(as_numpy(_reducible(volume[(slice(None, None, step),) * volume.ndim])))


def _reducible(volume):
    """``volume``, or for a bf16 or unsigned torch tensor (which torch cannot reduce, numpy cannot hold) its
    float64 copy (exact for both)."""
    if isinstance(volume, torch.Tensor) and volume.dtype in (torch.bfloat16, torch.uint16, torch.uint32, torch.uint64):
        return volume.double()
    return volume


def implausible_image(image, spacing) -> list[str]:
    """Why ``image`` (z, y, x; numpy, or torch on any device) with ``spacing`` (mm) is unlikely to be a heart
    LGE-MRI: constant, a label map, or a field of view or voxel size no heart MRI has (a unit mix-up in the
    header); one sentence each, for a warning (``predict``: the networks segment whatever they are given) or
    an error."""
    problems, reducible = [], _reducible(image)
    if math.prod(image.shape) and (low := reducible.min().item()) == reducible.max().item():
        problems.append(f"the image is constant (every voxel {low}): its prediction means nothing")
    elif (values := label_map_values(image)) is not None:
        problems.append(f"the image holds only a few whole values ({values} in a sample of its voxels): a "
                        "label map, not an MRI?")
    extent = tuple(round(n * float(h), 2) for n, h in zip(image.shape, spacing))
    if (min(spacing) < MIN_VOXEL_MM or max(spacing) > MAX_VOXEL_MM
            or sum(e < MIN_HEART_EXTENT_MM for e in extent) >= 2):
        problems.append(f"voxels of {tuple(float(h) for h in spacing)} mm (from the header) make the image span "
                        f"{extent} mm, not a heart MRI's field of view: is the header's voxel size in mm?")
    return problems


def label_map_values(image) -> list | None:
    """The distinct values of ``image`` when they are few whole numbers (a label map), else None;
    read from a strided subsample (:func:`sampled_values`; an MRI has hundreds)."""
    values = sampled_values(image)
    if not values.size or len(values) > LABEL_MAP_VALUES or not np.array_equal(values, np.round(values)):
        return None
    return values.tolist()
