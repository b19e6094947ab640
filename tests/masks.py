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
