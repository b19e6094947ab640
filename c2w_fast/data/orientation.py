"""Voxel orientation: the canonical arrangement of axes that networks are trained on and applied in.

Scans store their voxels in any order and direction: axial, coronal or sagittal slices, rows
running left to right or right to left. A network trained on one arrangement sees another as
a turned or mirrored heart, and segments nothing. So training reads every case, and
``predict`` every image, rearranged to one canonical arrangement — the (z, y, x) axes pointing,
as nearly as the voxel grid allows, to superior, anterior and right (``CANONICAL = "SAR"``, the
default axes of :func:`c2w_fast.data.io.affine_from_spacing` and of an axial scan stored RAS) —
by transposing and flipping, which moves voxels without interpolating them. Predictions are
moved back, so they keep the input's exact grid. Checkpoints record the arrangement; those
without the record were trained on each file's own voxel order and are applied that way.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

CANONICAL = "SAR"  # what the canonical (z, y, x) axes point to
_WORLD = "RAS"  # nibabel's numbering of world axes, each pointing to the letter's side


@dataclass(frozen=True)
class Reorientation:
    """The transposition and flips that take a volume to the canonical arrangement: canonical
    axis ``i`` is the volume's axis ``order[i]``, reversed where ``flips[i]``."""

    order: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def of(cls, affine) -> Reorientation:
        """The rearrangement of a volume whose (z, y, x) voxel index maps to RAS mm by ``affine``
        (an oblique axis counts as the world axis it is nearest; nibabel resolves ties)."""
        from nibabel.orientations import io_orientation

        order, flips = [0, 0, 0], [False, False, False]
        for axis, (world, sign) in enumerate(io_orientation(np.asarray(affine, dtype=float))):
            position = CANONICAL.index(_WORLD[int(world)])
            order[position], flips[position] = axis, bool(sign < 0)
        return cls(tuple(order), tuple(flips))

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2) and not any(self.flips)

    @property
    def source_codes(self) -> str:
        """Where the volume's own (z, y, x) axes point, e.g. ``"RAS"`` for a sagittal stack."""
        opposite = dict(zip("SARIPL", "IPLSAR"))
        codes = {axis: opposite[code] if flip else code for axis, code, flip in zip(self.order, CANONICAL, self.flips)}
        return "".join(codes[axis] for axis in range(3))

    def apply(self, array):
        """``array`` (..., z, y, x; numpy or torch) in the canonical arrangement, contiguous (the
        same object when nothing moves)."""
        lead = array.ndim - 3
        return _rearranged(array, [lead + axis for axis in self.order],
                           [lead + i for i, flip in enumerate(self.flips) if flip])

    def undo(self, array):
        """``array`` (..., z, y, x) in the canonical arrangement back in the volume's own."""
        lead = array.ndim - 3
        return _rearranged(array, [lead + int(i) for i in np.argsort(self.order)],
                           [lead + axis for axis, flip in zip(self.order, self.flips) if flip])

    def spacing(self, spacing) -> tuple[float, float, float]:
        """A (z, y, x) voxel size along the canonical axes."""
        return tuple(float(spacing[axis]) for axis in self.order)

    def affine(self, affine, shape) -> np.ndarray:
        """The affine of the rearranged volume: every voxel keeps its world position."""
        index = np.zeros((4, 4))  # canonical voxel index -> the volume's own
        index[3, 3] = 1.0
        for i, (axis, flip) in enumerate(zip(self.order, self.flips)):
            index[axis, i] = -1.0 if flip else 1.0
            index[axis, 3] = shape[axis] - 1.0 if flip else 0.0
        return np.asarray(affine, dtype=float) @ index

    def volume(self, volume):
        """A :class:`c2w_fast.data.io.Volume` rearranged, with the affine that keeps every voxel's world
        position (and no header, which described the file's own arrangement)."""
        if self.is_identity:
            return volume
        return replace(volume, array=self.apply(volume.array), affine=self.affine(volume.affine, volume.shape),
                       header=None)


def _rearranged(array, axes: list[int], flips: list[int]):
    """``array`` with its last axes transposed to ``axes``, then ``flips`` reversed: one copy, or none
    when nothing moves."""
    axes = [*range(array.ndim - len(axes)), *axes]
    if axes == sorted(axes) and not flips:
        return array
    if isinstance(array, torch.Tensor):
        moved = array.permute(*axes)
        return (moved.flip(flips) if flips else moved).contiguous()
    return np.ascontiguousarray(np.flip(np.transpose(array, axes), tuple(flips)))


def check_same_arrangement(helper: str | None, user: str | None, helper_name: str, user_name: str) -> None:
    """A ValueError unless a helper run trained on volumes arranged as ``helper`` (a checkpoint's recorded
    orientation) fits a stage that works in ``user``'s: a run from before the recording saw each file's
    own voxel order, and would see other volumes than it was trained on."""
    if helper != user:
        raise ValueError(f"{helper_name} was trained on {_arrangement(helper)} but {user_name} on "
                         f"{_arrangement(user)}; retrain the older run with this version of c2w_fast")


def _arrangement(orientation: str | None) -> str:
    if orientation:
        return f"volumes in the canonical voxel arrangement ({orientation})"
    return "volumes in each file's own voxel order (before c2w_fast recorded the arrangement)"
