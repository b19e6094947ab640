"""GPU augmentation (run here on CPU tensors): each transform against its definition."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import exposure

from c2w_fast.config import AugmentConfig
from c2w_fast.data.augment import (QUANTILES, _draw_angles, _elastic_field, _grid, _rotation, augment_batch,
                                   initial_patch_size, match_histogram)

OFF = dict(flip_prob=0.0)


def _batch(rng, size=(10, 20, 20), b=2, channels=1):
    image = torch.from_numpy(rng.normal(size=(b, channels, *size)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 4, (b, *size)).astype(np.uint8))
    region = torch.from_numpy(rng.random((b, *size)) > 0.5)
    return image, target, region


def _centre(t, patch):
    start = [(n - p) // 2 for n, p in zip(t.shape[-3:], patch)]
    return t[(..., *[slice(s, s + p) for s, p in zip(start, patch)])]


def test_nothing_drawn_is_an_exact_centre_crop(rng):
    image, target, region = _batch(rng)
    out = augment_batch(image, target, region, (6, 12, 12), (1.0, 1.0, 1.0), AugmentConfig(**OFF), [1, 2])
    for got, original in zip(out, (image, target, region)):
        assert torch.equal(got, _centre(original, (6, 12, 12)))


def test_in_plane_quarter_turn_equals_rot90(rng):
    image, target, region = _batch(rng, size=(6, 16, 16))
    aug = AugmentConfig(rotation_prob=1.0, rotation_deg=[90.0, 90.0], **OFF)
    x, y, r = augment_batch(image, target, region, (6, 12, 12), (2.5, 0.8, 0.8), aug, [3, 4])
    # out(y, x) = in(-x, y) about the patch centre, i.e. torch.rot90 with k = -1 on (y, x)
    torch.testing.assert_close(x, torch.rot90(_centre(image, (6, 12, 12)), -1, (3, 4)), atol=1e-5, rtol=0)
    assert torch.equal(y, torch.rot90(_centre(target, (6, 12, 12)), -1, (2, 3)))
    assert torch.equal(r, torch.rot90(_centre(region, (6, 12, 12)), -1, (2, 3)))


def test_rotations_act_in_mm_on_anisotropic_voxels():
    """A linear-in-mm image sampled by the rotated grid equals the linear function at the
    rotated points (trilinear interpolation is exact on linear functions)."""
    size, patch, spacing = (12, 16, 24), (4, 8, 8), (2.0, 1.0, 1.0)
    axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(size, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    image = torch.from_numpy((3 * zz - yy + xx).astype(np.float32))[None, None]
    aug = AugmentConfig(rotation_prob=1.0, rotation_deg=[30.0, 30.0], in_plane=False, **OFF)
    x, _, _ = augment_batch(image, torch.zeros((1, *size), dtype=torch.uint8), None, patch, spacing, aug, [0])
    out_axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(patch, spacing)]
    points = np.stack(np.meshgrid(*out_axes, indexing="ij"), -1) @ _rotation([math.radians(30.0)] * 3).T
    expected = 3 * points[..., 0] - points[..., 1] + points[..., 2]
    inside = np.all(np.abs(points) <= [(n - 1) / 2 * h for n, h in zip(size, spacing)], axis=-1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(x[0, 0].numpy()[inside], expected[inside], atol=1e-4)


@pytest.mark.parametrize("in_plane", [True, False])
@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_scaling_zooms_about_the_centre(in_plane, factor):
    size, patch = (16, 16, 16), (8, 8, 8)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in size], indexing="ij")
    image = torch.from_numpy((grids[0] + 2 * grids[1] - grids[2]).astype(np.float32))[None, None]
    aug = AugmentConfig(scaling_prob=1.0, scaling_range=[factor, factor], in_plane=in_plane, **OFF)
    x, _, _ = augment_batch(image, torch.zeros((1, *size), dtype=torch.uint8), None, patch, (1.0, 1.0, 1.0), aug, [0])
    o = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in patch], indexing="ij")
    # nnU-Net's convention: sampling coordinates times the factor (> 1 shrinks the anatomy); in-plane: z unscaled
    expected = (1.0 if in_plane else factor) * o[0] + factor * (2 * o[1] - o[2])
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-5)


def test_elastic_keeps_label_values_and_zero_magnitude_is_identity(rng):
    image, target, region = _batch(rng, size=(8, 24, 24))
    aug = AugmentConfig(elastic_prob=1.0, elastic_sigma_mm=6.0, elastic_magnitude_mm=2.0, **OFF)
    x, y, r = augment_batch(image, target, region, (8, 16, 16), (1.0, 1.0, 1.0), aug, [5, 6])
    assert torch.isfinite(x).all() and set(y.unique().tolist()) <= {0, 1, 2, 3} and r.dtype == torch.bool
    assert not torch.equal(y, _centre(target, (8, 16, 16)))
    aug.elastic_magnitude_mm = 0.0
    x, y, _ = augment_batch(image, target, region, (8, 16, 16), (1.0, 1.0, 1.0), aug, [5, 6])
    torch.testing.assert_close(x, _centre(image, (8, 16, 16)), atol=1e-5, rtol=0)
    assert torch.equal(y, _centre(target, (8, 16, 16)))


@pytest.mark.parametrize("in_plane", [True, False])
def test_initial_patch_holds_every_rotated_and_zoomed_patch(in_plane, rng):
    aug = AugmentConfig(rotation_prob=1.0, rotation_deg=[-180.0, 180.0], scaling_prob=1.0, scaling_range=[0.7, 1.4],
                        in_plane=in_plane)
    patch, spacing = (20, 64, 56), (2.5, 0.97, 0.97)
    size = initial_patch_size(patch, spacing, aug)
    assert all((s - p) % 2 == 0 for s, p in zip(size, patch))
    scale = np.diag([1.0 if in_plane else 1.4, 1.4, 1.4])
    for _ in range(20):
        matrix = _rotation(_draw_angles(aug, rng)) @ scale
        grid = _grid(patch, size, spacing, torch.tensor(matrix, dtype=torch.float32), None, "cpu")
        # every sample point lies inside the crop (normalised coordinates of voxel centres)
        limit = 1 - 1 / torch.tensor(size[::-1], dtype=torch.float32)
        assert (grid.abs() <= limit + 2e-2).all()


def test_initial_patch_bounds_every_3d_rotation_not_only_sampled_ones(rng):
    """(-1, -15, 15) degrees needs a larger crop than the range's corners and 512 random draws gave."""
    aug = AugmentConfig(rotation_prob=1.0, rotation_deg=[-15.0, 15.0], in_plane=False)
    patch, spacing = np.array([44, 256, 256]), np.array([0.625] * 3)
    size = np.array(initial_patch_size(patch, spacing, aug))
    half = patch * spacing / 2
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * half
    angles = [np.radians([-1.0, -15.0, 15.0])] + [np.radians(rng.uniform(-15, 15, 3)) for _ in range(2000)]
    needed = np.max([2 * np.abs(corners @ _rotation(a).T).max(0) / spacing for a in angles], axis=0)
    assert needed[0] > 171 and (size >= np.ceil(needed)).all() and size[0] < 200
    whole_turns = AugmentConfig(rotation_prob=1.0, rotation_deg=[-180.0, 180.0], in_plane=False)
    diagonal = math.ceil(math.sqrt(3) * 128)  # no rotation of a 128^3 cube needs more
    assert max(initial_patch_size((128,) * 3, (1.0,) * 3, whole_turns)) <= diagonal + 1


def test_elastic_displacement_stays_within_the_room_left_for_it():
    aug = AugmentConfig(elastic_prob=1.0, elastic_sigma_mm=2.0, elastic_magnitude_mm=1.5, in_plane=False)
    generator = torch.Generator().manual_seed(0)
    field = _elastic_field((10, 40, 40), (1.0, 1.0, 1.0), aug, generator, "cpu")
    assert float(field.abs().max()) <= 3 * 1.5 + 1e-6 and float(field.std()) > 0.5


def test_a_crop_margin_of_odd_size_is_refused(rng):
    image, target, region = _batch(rng, size=(10, 17, 20))
    with pytest.raises(ValueError, match="even margin on every axis"):
        augment_batch(image, target, region, (6, 8, 8), (1.0, 1.0, 1.0), AugmentConfig(**OFF), [1, 2])


def test_flips_follow_flip_axes(rng):
    image, target, region = _batch(rng, size=(4, 6, 8))
    aug = AugmentConfig(flip_prob=1.0, flip_axes=[0, 2])
    x, y, r = augment_batch(image, target, region, (4, 6, 8), (1.0, 1.0, 1.0), aug, [0, 1])
    assert torch.equal(x, image.flip([2, 4])) and torch.equal(y, target.flip([1, 3]))
    assert torch.equal(r, region.flip([1, 3]))


def _single(aug, x, seed=0):
    out, _, _ = augment_batch(x[None, None], torch.zeros((1, *x.shape), dtype=torch.uint8), None, x.shape,
                              (1.0, 1.0, 1.0), aug, [seed])
    return out[0, 0]


def test_brightness_multiplies_and_contrast_keeps_mean_and_range(rng):
    x = torch.from_numpy(rng.normal(size=(6, 12, 12)).astype(np.float32))
    y = _single(AugmentConfig(brightness_prob=1.0, brightness_range=[1.2, 1.2], **OFF), x)
    torch.testing.assert_close(y, 1.2 * x)
    y = _single(AugmentConfig(contrast_prob=1.0, contrast_range=[0.5, 0.5], **OFF), x)
    torch.testing.assert_close(y, (x - x.mean()) * 0.5 + x.mean())
    y = _single(AugmentConfig(contrast_prob=1.0, contrast_range=[2.0, 2.0], **OFF), x)
    assert y.min() >= x.min() and y.max() <= x.max()


@pytest.mark.parametrize("key", ["gamma", "inverse_gamma"])
def test_gamma_keeps_mean_and_std_and_order(key, rng):
    x = torch.from_numpy(rng.gamma(2.0, size=(6, 12, 12)).astype(np.float32))
    y = _single(AugmentConfig(**{f"{key}_prob": 1.0, f"{key}_range": [1.5, 1.5]}, **OFF), x)
    assert float(y.mean()) == pytest.approx(float(x.mean()), abs=1e-4)
    assert float(y.std()) == pytest.approx(float(x.std()), rel=1e-4)
    order = torch.argsort(x.ravel())
    assert (torch.diff(y.ravel()[order]) >= -1e-5).all()  # monotonic map
    assert not torch.allclose(y, x, atol=1e-3)


def test_noise_variance_and_blur_match_definitions(rng):
    x = torch.zeros((8, 32, 32))
    y = _single(AugmentConfig(noise_prob=1.0, noise_variance=[0.09, 0.09], **OFF), x)
    assert float(y.std()) == pytest.approx(0.09, rel=0.05)  # batchgenerators: the drawn value is the std
    x = torch.from_numpy(rng.normal(size=(8, 20, 20)).astype(np.float32))
    y = _single(AugmentConfig(blur_prob=1.0, blur_sigma=[0.8, 0.8], in_plane=True, **OFF), x)
    expected = ndimage.gaussian_filter(x.numpy().astype(np.float64), (0, 0.8, 0.8), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)


def test_lowres_simulation_is_blocky_then_smooth(rng):
    x = torch.from_numpy(rng.normal(size=(4, 16, 16)).astype(np.float32))
    y = _single(AugmentConfig(lowres_prob=1.0, lowres_scale=[0.5, 0.5], in_plane=True, **OFF), x)
    assert y.shape == x.shape and float((y - x).abs().mean()) > 0.1
    # an image constant over 2x2 in-plane blocks loses nothing at half resolution except at the borders
    blocks = x[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)
    z = _single(AugmentConfig(lowres_prob=1.0, lowres_scale=[0.5, 0.5], in_plane=True, **OFF), blocks)
    assert float((z - blocks).abs().mean()) < float((y - x).abs().mean())


def test_histogram_matching_maps_quantiles_onto_the_reference(rng):
    x = torch.from_numpy(rng.normal(size=(8, 30, 30)).astype(np.float32))
    reference = torch.from_numpy(np.quantile(rng.exponential(2.0, 100_000), QUANTILES.numpy()).astype(np.float32))
    y = match_histogram(x, reference)
    got = torch.quantile(y.ravel(), QUANTILES[10:91:10])
    torch.testing.assert_close(got, reference[10:91:10], atol=0.02, rtol=0.02)
    np.testing.assert_allclose(y.numpy(), exposure.match_histograms(x.numpy(), reference_sample(reference)),
                               rtol=0.02, atol=0.02)


def reference_sample(quantiles: torch.Tensor) -> np.ndarray:
    """An image whose intensity distribution has ``quantiles`` (piecewise uniform between them)."""
    ranks = np.linspace(0, 1, 100_001)
    return np.interp(ranks, QUANTILES.numpy(), quantiles.numpy()).astype(np.float32).reshape(1, 1, -1)


def test_histogram_matching_sends_a_block_of_equal_values_to_its_middle_rank(rng):
    x = torch.from_numpy(rng.uniform(1.0, 5.0, size=(8, 30, 30)).astype(np.float32))
    x.view(-1)[: x.numel() * 3 // 10] = 0.0  # 30 % padding zeros: ranks 0 to 0.3
    reference = torch.linspace(-1.0, 1.0, len(QUANTILES))  # the uniform distribution on [-1, 1]
    y = match_histogram(x, reference)
    assert float(y.view(-1)[0]) == pytest.approx(-0.7, abs=0.005)  # rank 0.15 (the minimum would be -1)
    assert float(y.view(-1)[x.numel() * 3 // 10:].min()) > -0.41 and float(y.mean()) == pytest.approx(0.0, abs=0.02)


def test_same_seeds_same_batch_other_seeds_differ(rng):
    aug = AugmentConfig(rotation_prob=0.5, scaling_prob=0.5, noise_prob=0.5, gamma_prob=0.5, flip_prob=0.5)
    image, target, region = _batch(rng, size=(10, 30, 30), b=3)
    patch = (6, 16, 16)
    a = augment_batch(image, target, region, patch, (1.0, 1.0, 1.0), aug, [7, 8, 9])
    b = augment_batch(image, target, region, patch, (1.0, 1.0, 1.0), aug, [7, 8, 9])
    c = augment_batch(image, target, region, patch, (1.0, 1.0, 1.0), aug, [10, 11, 12])
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert math.isfinite(float(a[0].sum()))
