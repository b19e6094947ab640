"""Preprocessing of one volume: z-score, resampling, target labels, centre of mass, ROI crop and paste.

Arrays are (z, y, x) (images may carry a leading channel axis), spacing in mm. Crops are
described by a :class:`Box` — the crop's start in the volume (may be negative or run past
the end: those voxels are padding) and its size — so a prediction on a crop can be pasted
back exactly where it came from. Every function takes numpy arrays or torch tensors (CPU or
CUDA, where inference runs them) and returns the kind it was given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TARGET_CLASSES = {  # target -> {foreground class name: canonical codes (1 wall, 2 RA, 3 LA)}, in index order
    "la_cavity": {"LA": (3,)},
    "wall": {"wall": (1,)},
    "atria": {"atria": (1, 2, 3)},
    "multiclass": {"wall": (1,), "RA": (2,), "LA": (3,)},
}


ZSCORE_CHUNK = 1 << 22  # voxels converted to float64 at a time


def zscore(image, box: "Box | None" = None):
    """``(image - mean) / std`` over the whole volume (population std, float64), float32;
    a constant image becomes zeros. Worked through in chunks, so the float64 arithmetic
    needs no full-volume float64 copy. With ``box`` only that crop is normalised and
    returned (the statistics still the whole volume's; outside the volume 0, the mean):
    an ROI stage would otherwise normalise the whole volume only to crop it."""
    if not isinstance(image, torch.Tensor):
        return zscore(torch.from_numpy(np.require(image, np.float32, "W")), box).numpy()  # "W": torch needs it
    chunks = image.reshape(-1).split(ZSCORE_CHUNK)
    count = max(image.numel(), 1)
    mean = sum(chunk.double().sum() for chunk in chunks) / count
    std = (sum(((chunk.double() - mean) ** 2).sum() for chunk in chunks) / count).sqrt()
    std = torch.where(std > 0, std, 1.0)
    volume, inside = box._overlap(tuple(image.shape)) if box is not None else ((...,), (...,))
    out = torch.zeros(box.size if box is not None else image.shape, dtype=torch.float32, device=image.device)
    planes = max(1, ZSCORE_CHUNK // max(1, image[0].numel()))
    for source, target in zip(image[volume].split(planes), out[inside].split(planes)):
        target.copy_((source.double() - mean) / std)
    return out


def target_labels(labels: np.ndarray, target: str) -> np.ndarray:
    """Canonical labels (0 bg, 1 wall, 2 RA, 3 LA) → class indices 0..C-1 of ``target`` (uint8)."""
    if target not in TARGET_CLASSES:
        raise ValueError(f"target must be one of {sorted(TARGET_CLASSES)}, got {target!r}")
    out = np.zeros(labels.shape, np.uint8)
    for index, codes in enumerate(TARGET_CLASSES[target].values(), start=1):
        out[np.isin(labels, codes)] = index
    return out


def resampled_shape(shape, spacing, new_spacing) -> tuple[int, int, int]:
    """Voxels per axis covering the same field of view at ``new_spacing``: round(n · h / h')."""
    return tuple(max(1, int(round(n * h / g))) for n, h, g in zip(shape, spacing, new_spacing))


def resample(array, shape, *, labels: bool = False) -> np.ndarray | torch.Tensor:
    """``array`` ((z, y, x) or (C, z, y, x)) resampled to ``shape`` (z, y, x).

    Voxel centres are aligned (``align_corners=False``); images are interpolated trilinearly,
    label maps take the nearest voxel (``nearest-exact``). Numpy in → numpy out.
    """
    is_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if is_numpy else array
    if tuple(tensor.shape[-3:]) == tuple(shape):
        return array
    batched = tensor.reshape(1, -1, *tensor.shape[-3:])
    if labels:
        out = F.interpolate(batched.float(), size=tuple(shape), mode="nearest-exact").to(tensor.dtype)
    else:
        out = F.interpolate(batched.float(), size=tuple(shape), mode="trilinear", align_corners=False)
    out = out.reshape(*tensor.shape[:-3], *shape)
    return out.numpy() if is_numpy else out


def center_of_mass(mask) -> tuple[float, float, float] | None:
    """Mean (z, y, x) voxel index of the nonzero voxels, or None for an empty mask.

    From per-axis counts (no index list of every voxel); on the CPU with numpy's
    ``count_nonzero``, which converts nothing, where a torch sum of a bool volume makes an
    int64 or float64 copy of it (300 MB at 88x640x640)."""
    if isinstance(mask, torch.Tensor) and mask.device.type != "cpu":
        mask = mask != 0
        profiles = [mask.sum(dim=[a for a in range(mask.ndim) if a != axis], dtype=torch.float64).cpu().numpy()
                    for axis in range(mask.ndim)]
    else:
        array = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        profiles = [np.count_nonzero(array, axis=tuple(a for a in range(array.ndim) if a != axis))
                    for axis in range(array.ndim)]
    total = float(profiles[0].sum())
    if total == 0:
        return None
    return tuple(float(np.dot(profile, np.arange(len(profile), dtype=np.float64))) / total for profile in profiles)


@dataclass(frozen=True)
class Box:
    """A crop of ``size`` voxels starting at ``start`` (z, y, x) in a volume; may reach outside it."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    @staticmethod
    def around(center, size) -> "Box":
        """The box of ``size`` whose centre voxel is ``center`` (rounded)."""
        start = tuple(int(round(c)) - s // 2 for c, s in zip(center, size))
        return Box(start, tuple(int(s) for s in size))

    def _overlap(self, shape):
        """Slices of the volume inside the box, and of the box inside the volume."""
        volume, crop = [], []
        for s0, n, total in zip(self.start, self.size, shape):
            lo, hi = max(s0, 0), min(s0 + n, total)
            hi = max(hi, lo)
            volume.append(slice(lo, hi))
            crop.append(slice(lo - s0, hi - s0))
        return tuple(volume), tuple(crop)


def _full(like, shape, fill):
    """An array of ``like``'s kind, dtype (and device) filled with ``fill``."""
    if isinstance(like, torch.Tensor):
        return torch.full(tuple(shape), fill, dtype=like.dtype, device=like.device)
    return np.full(tuple(shape), fill, dtype=like.dtype)


def crop(array, box: Box, pad_value=0):
    """The ``box`` of ``array`` ((z, y, x) or (C, z, y, x)); voxels outside the volume are ``pad_value``."""
    lead = tuple(array.shape[:-3])
    volume, inside = box._overlap(tuple(array.shape[-3:]))
    if all(v.start == 0 and v.stop == n for v, n in zip(inside, box.size)):
        return array[(..., *volume)]
    out = _full(array, (*lead, *box.size), pad_value)
    out[(..., *inside)] = array[(..., *volume)]
    return out


def paste(values, box: Box, shape, fill=0):
    """A volume of ``shape`` (z, y, x) (and ``values``' leading axes): ``values`` at ``box``, ``fill`` elsewhere."""
    lead = tuple(values.shape[:-3])
    out = _full(values, (*lead, *shape), fill)
    volume, inside = box._overlap(tuple(shape))
    out[(..., *volume)] = values[(..., *inside)]
    return out
