"""Patch sampling policies: where in a training volume the next patch is centred.

* ``center`` — the volume's centre (C2W: the stored volume is already the ROI);
* ``random`` — uniform over the positions that keep the patch inside the volume;
* ``foreground`` — with probability ``foreground_prob`` a random voxel of any foreground
  class, else ``random`` (MBAS stage 1: 0.25). Each sample draws on its own, which is
  nnU-Net's "probabilistic oversampling";
* ``classes`` — a foreground voxel of a class drawn with ``class_weights`` among the
  classes present in the case (MBAS stage 2: wall 0.5, RA 0.25, LA 0.25).

Foreground voxels are drawn from at most :data:`MAX_LOCATIONS` stored locations per class
(as nnU-Net does), so sampling costs nothing per patch. Coordinates are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LOCATIONS = 10_000


def class_locations(target: np.ndarray, num_classes: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to :data:`MAX_LOCATIONS` random (z, y, x) voxel indices of every class 1..num_classes-1."""
    flat = target.ravel()
    out = {}
    for c in range(1, num_classes):
        where = np.flatnonzero(flat == c)
        if len(where) > MAX_LOCATIONS:
            where = rng.choice(where, MAX_LOCATIONS, replace=False)
        out[c] = np.stack(np.unravel_index(np.sort(where), target.shape), 1).astype(np.int32)
    return out


@dataclass(frozen=True)
class SamplingPolicy:
    """How patch centres are chosen; ``class_weights`` maps class index → weight."""

    kind: str = "center"
    foreground_prob: float = 0.0
    class_weights: dict[int, float] | None = None

    def centre(self, shape, patch, locations: dict[int, np.ndarray], rng: np.random.Generator) -> tuple[int, int, int]:
        """The (z, y, x) centre of the next patch of size ``patch`` in a volume of ``shape``."""
        if self.kind == "center":
            return tuple(n // 2 for n in shape)
        if self.kind == "foreground" and rng.random() < self.foreground_prob:
            found = _voxel_of(list(locations), locations, rng, None)
            if found is not None:
                return found
        if self.kind == "classes":
            found = _voxel_of(list(locations), locations, rng, self.class_weights)
            if found is not None:
                return found
        return _random_centre(shape, patch, rng)


def _voxel_of(classes, locations, rng, weights) -> tuple[int, int, int] | None:
    present = [c for c in classes if len(locations[c])]
    if weights is not None:
        present = [c for c in present if weights.get(c, 0) > 0]
    if not present:
        return None
    p = np.array([weights[c] if weights is not None else 1.0 for c in present], float)
    c = present[rng.choice(len(present), p=p / p.sum())]
    points = locations[c]
    return tuple(int(v) for v in points[rng.integers(len(points))])


def _random_centre(shape, patch, rng) -> tuple[int, int, int]:
    """A centre keeping the patch inside the volume on axes where it fits, else the middle."""
    out = []
    for n, p in zip(shape, patch):
        if n <= p:
            out.append(n // 2)
        else:
            out.append(int(rng.integers(p // 2, n - (p - p // 2) + 1)))
    return tuple(out)
