"""Random test masks shared by the metrics and morphology tests: smooth blobs of odd sizes."""
import numpy as np
from scipy import ndimage


def blobs(rng, shape, fill=0.5, sigma=1.5):
    """A mask of smooth random blobs covering about ``fill`` of ``shape`` (they touch the border)."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma, mode="wrap")
    return field > np.quantile(field, 1 - fill)


def perturbed(rng, mask, flips=0.02):
    """``mask`` with its boundary moved: a random ~``flips`` fraction of voxels near it toggled."""
    near = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    toggle = near & (rng.random(mask.shape) < 0.3) | (rng.random(mask.shape) < flips / 10)
    return mask ^ toggle


def anisotropic_spacing(rng, ndim=3):
    """Random spacing in mm with a thick first axis, as in LGE-MRI."""
    spacing = rng.uniform(0.4, 1.2, ndim)
    spacing[0] *= rng.uniform(1.5, 4.0)
    return tuple(float(s) for s in spacing)


F32_1_2 = float(np.float32(1.2))  # 1.2 mm as a float32 image header stores it
# (spacing, tolerance_mm, shift in voxels): most boundary distances equal the tolerance in real
# arithmetic, and float64 / float32 rounding decide (3 x 0.1 > 0.3 in float64, 3 x 1.1 > 3.3,
# 1.2000000476837158 > 1.2, 2 x 0.7 == 1.4, sqrt(0.3^2 + 0.4^2) vs 0.5 ...); in the last two, grid
# distances equal in real arithmetic fall on both sides (one 1.2 mm step is within 1.2 mm, three
# 0.4 mm steps, 1.2000000000000002 mm, are not), closer than float32 can tell apart
TIE_CASES = [
    ((1.0, 1.0, 0.1), 0.3, (0, 0, 3)),
    ((2.5, F32_1_2, F32_1_2), 1.2, (0, 0, 1)),
    ((0.3, 0.3, 0.3), 0.3, (0, 1, 0)),
    ((0.7, 0.7, 0.7), 1.4, (0, 2, 0)),
    ((1.1, 1.1, 1.1), 3.3, (3, 0, 0)),
    ((0.3, 0.4, 0.4), 0.5, (1, 1, 0)),
    ((2.5, 0.625, 0.625), 1.25, (0, 2, 0)),
    ((0.1, 0.1), 0.3, (0, 3)),
    ((1.2, 0.4, 0.4), 1.2, (1, 0, 0)),
    ((0.2, 0.6), 0.6, (0, 1)),
]


def tie_pair(rng, shift):
    """A blob and its copy shifted by ``shift`` voxels (the shape fits 2D and 3D cases)."""
    shape = (10, 12, 14)[-len(shift):]
    gt = blobs(rng, shape, 0.4)
    return np.roll(gt, shift, axis=tuple(range(len(shift)))), gt


def percentile_tie_pair():
    """A pair whose gt-to-pred cumulative area reaches exactly 95 % at sqrt(10) mm, where float64
    cumulative sums land 4e-16 below it or not, by their order (surface-distance's: below, so sqrt(13))."""
    pred = np.zeros((4, 3, 1), bool)
    pred[3, 2, 0] = True
    gt = np.zeros((4, 3, 1), bool)
    gt[[0, 0, 1, 2, 3], [0, 2, 1, 2, 0], 0] = True
    return pred, gt
