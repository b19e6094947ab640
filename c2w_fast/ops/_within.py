"""When a surface distance counts as within the Surface Dice tolerance: one rule for every backend.

A distance equal to the tolerance in real arithmetic (three 0.1 mm steps at 0.3 mm; one step of a
1.2 mm spacing read from a float32 header, 1.2000000476837158 mm, at 1.2 mm) is decided by
rounding, and each convention follows its peer:

* surfel (surface-distance): float64 ``d <= t``, with ``d = sqrt(sum_i (k_i s_i)^2)`` summed over
  the axes in order, as scipy's distance transform computes it (``k`` the offset in voxels);
* voxel (MONAI): ``d <= t`` with both rounded to float32 (MONAI's distances are float32 tensors).

Both rules are a float64 threshold on ``d`` (:func:`decision_threshold`); the reference backend
compares its float64 distances with it. The fast backends hold squared distances in float32, a
few float32 ulps off, which cannot tell apart grid distances that differ by less than that (one
1.2 mm step and three 0.4 mm steps: 1.2 and 1.2000000000000002 in float64, kept and rejected
by the surfel rule). So they follow :class:`WithinRule`: a distance clearly below the threshold
is within, one clearly above is not, and one in the narrow band between is within exactly when
the other surface has an element at one of the grid offsets whose float64 distance the rule
keeps — the decision the reference makes from its exact distance, whenever the nearest element
at the float64 distance is the one scipy's transform reports. Only tolerances spanning more than
``MAX_OFFSETS`` offsets fall back to comparing with the threshold itself.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

BAND = 2.0**-19  # relative; several times the fast backends' float32 distance error
MAX_OFFSETS = 1_000_000  # offsets listed on the two axes not solved for


def decision_threshold(tolerance_mm: float, convention: str) -> float:
    """The largest float64 distance (mm) that counts as within ``tolerance_mm`` under the convention's rule."""
    if convention == "surfel":
        return tolerance_mm
    with np.errstate(over="ignore"):
        t32 = np.float32(tolerance_mm)
    if not np.isfinite(t32):
        return np.inf
    above = np.nextafter(t32, np.float32(np.inf))
    halfway = (float(t32) + float(above)) / 2  # exact in float64; rounds to even, i.e. to t32 when t32's is
    return halfway if int(t32.view(np.uint32)) % 2 == 0 else float(np.nextafter(halfway, -np.inf))


@dataclass(frozen=True)
class WithinRule:
    """The decision for distances derived from float32 squared distances: ``d <= lower`` is within,
    ``d > upper`` is not, and ``lower < d <= upper`` is within when the other surface has an
    element at one of ``offsets`` (int32 (n, 3) grid steps (z, y, x), every sign; z 0 in 2D)."""

    lower: float
    upper: float
    offsets: np.ndarray


@functools.lru_cache(maxsize=64)
def within_rule(tolerance_mm: float, spacing: tuple[float, ...], convention: str) -> WithinRule:
    """The :class:`WithinRule` of ``tolerance_mm`` on a grid of ``spacing`` (mm, 2 or 3 axes)."""
    threshold = decision_threshold(tolerance_mm, convention)
    near = _grid_offsets_near(threshold, np.asarray(spacing, dtype=np.float64))
    if near is None:
        return WithinRule(threshold, threshold, np.zeros((0, 3), np.int32))
    offsets, distances = near
    kept = offsets[distances <= threshold]
    signed = {tuple(sign * k for sign, k in zip(signs, offset))
              for offset in kept.tolist() for signs in itertools.product((1, -1), repeat=len(offset))}
    rows = np.array(sorted(signed), dtype=np.int32).reshape(-1, len(spacing))
    rows = np.pad(rows, ((0, 0), (3 - len(spacing), 0)))  # 2D: no z step
    rows.flags.writeable = False  # shared by the cache
    return WithinRule(threshold * (1 - BAND / 2), threshold * (1 + BAND / 2), rows)


def _grid_offsets_near(threshold: float, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The offsets ``k >= 0`` (int (n, axes)) whose distances ``sqrt(sum_i (k_i s_i)^2)`` (float64,
    summed in axis order) lie within ``BAND`` of ``threshold``, and those distances; None when there
    are too many offsets to list."""
    lo, hi = threshold * (1 - BAND), threshold * (1 + BAND)
    if not np.isfinite(hi):
        return None
    steps = np.floor(hi / spacing) + 1  # offsets per axis up to hi
    solved = int(np.argmax(steps))  # the longest axis is solved for, the others listed
    listed = [axis for axis in range(len(spacing)) if axis != solved]
    if math.prod(steps[listed].tolist()) > MAX_OFFSETS:  # Python floats: a huge tolerance gives inf, no warning
        return None
    offsets = np.zeros((len(spacing), int(np.prod(steps[listed]))))
    offsets[listed] = [grid.ravel() for grid in np.meshgrid(*(np.arange(steps[a]) for a in listed), indexing="ij")]
    rest = ((offsets[listed] * spacing[listed, None]) ** 2).sum(axis=0)
    first = np.ceil(np.sqrt(np.maximum(lo * lo - rest, 0)) / spacing[solved]) - 1
    last = np.floor(np.sqrt(np.maximum(hi * hi - rest, 0)) / spacing[solved]) + 1
    width = int(np.max(last - first, initial=0)) + 1
    if width * offsets.shape[1] > 16 * MAX_OFFSETS:
        return None
    candidates = np.repeat(offsets, width, axis=1)
    candidates[solved] = np.maximum((first[:, None] + np.arange(width)).ravel(), 0)
    terms = (candidates * spacing[:, None]) ** 2
    total = terms[0]
    for term in terms[1:]:  # scipy sums the axes in order
        total = total + term
    distances = np.sqrt(total)
    near = (distances >= lo) & (distances <= hi)
    return candidates[:, near].T.astype(np.int64), distances[near]
