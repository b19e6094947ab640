"""distance_transform and signed_distance: every backend against scipy's float64 EDT."""
import numpy as np
import pytest
import torch
from masks import anisotropic_spacing, blobs
from scipy import ndimage

from c2w_fast.ops import distance_transform, signed_distance
from c2w_fast.ops.distance_transform import TOLERANCE

BACKENDS = ["reference", "cpu"]


def scipy_edt(mask, spacing):
    return ndimage.distance_transform_edt(mask, sampling=spacing)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7, 13, 11), (1, 9, 30), (17, 5, 4), (21, 19), (40, 1),
                                   (70, 3, 5), (3, 81, 4), (90, 7)])  # axes over 64 take the envelope pass
def test_matches_scipy_on_random_anisotropic_masks(backend, shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    for fill in (0.1, 0.6, 0.97):
        mask = blobs(rng, shape, fill, sigma=1.0)
        ours = distance_transform(mask, spacing, backend=backend)
        assert ours.dtype == np.float32 and ours.shape == mask.shape
        np.testing.assert_allclose(ours, scipy_edt(mask, spacing), **TOLERANCE)
        np.testing.assert_allclose(distance_transform(mask, backend=backend), scipy_edt(mask, None), **TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend, rng):
    shape, spacing = (6, 9, 5), anisotropic_spacing(rng)
    empty = np.zeros(shape, bool)
    np.testing.assert_array_equal(distance_transform(empty, spacing, backend=backend), 0)
    assert np.all(np.isposinf(distance_transform(~empty, spacing, backend=backend)))
    hole = ~empty
    hole[tuple(rng.integers(0, shape))] = False  # a single background voxel
    np.testing.assert_allclose(distance_transform(hole, spacing, backend=backend), scipy_edt(hole, spacing),
                               **TOLERANCE)
    border = empty.copy()
    border[:, :, -3:] = True  # foreground touching the border: the border is not background
    np.testing.assert_allclose(distance_transform(border, spacing, backend=backend), scipy_edt(border, spacing),
                               **TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_distance_definition(backend, rng):
    shape, spacing = (7, 10, 9), anisotropic_spacing(rng)
    mask = blobs(rng, shape, 0.4)
    expected = scipy_edt(~mask, spacing) - scipy_edt(mask, spacing)
    ours = signed_distance(mask, spacing, backend=backend)
    np.testing.assert_allclose(ours, expected, **TOLERANCE)
    assert np.all(ours[mask] < 0) and np.all(ours[~mask] > 0)
    assert np.all(np.isposinf(signed_distance(np.zeros(shape), spacing, backend=backend)))
    assert np.all(np.isneginf(signed_distance(np.ones(shape), spacing, backend=backend)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out_and_any_layout(backend, rng):
    mask = blobs(rng, (5, 8, 7), 0.5)
    spacing = anisotropic_spacing(rng)
    expected = scipy_edt(mask, spacing)
    out = distance_transform(torch.from_numpy(mask.astype(np.uint8)), spacing, backend=backend)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, **TOLERANCE)
    view = mask.transpose(1, 2, 0)
    np.testing.assert_allclose(distance_transform(view, tuple(spacing[i] for i in (1, 2, 0)), backend=backend),
                               expected.transpose(1, 2, 0), **TOLERANCE)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm"):
        distance_transform(np.ones((2, 2, 2)), (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="mask must be 2D or 3D") as error:
        signed_distance(np.ones((2, 2, 2, 2)))
    assert "leading axis" not in str(error.value)  # the hint is for a leading axis of size 1 only
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 2, 2\) \(drop the leading axis: mask\[0\]\)"):
        distance_transform(np.ones((1, 2, 2, 2)))
