"""GPU augmentation (run here on CPU tensors): each transform against its definition."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import exposure

from c2w_fast.config import AugmentConfig
from c2w_fast.data.augment import (QUANTILES, _draw_angles, _draw_gamma, _elastic_field, _grid, _rotated_extent,
                                   _rotation, _rotations, augment_batch, initial_patch_size, match_histogram)

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


def test_in_plane_transforms_leave_z_without_margin():
    """In-plane rotation, scaling and deformation never move a point along z, so the crop needs
    no z margin; in 3D each of them needs one."""
    kinds = dict(rotation_prob=1.0, rotation_deg=[-30.0, 30.0], scaling_prob=1.0, scaling_range=[0.8, 1.3],
                 elastic_prob=1.0, elastic_magnitude_mm=1.0)
    patch, spacing = (6, 20, 24), (2.5, 1.0, 1.0)
    for prob in ("rotation_prob", "scaling_prob", "elastic_prob"):
        alone = {k: v for k, v in kinds.items() if not k.endswith("_prob") or k == prob}
        size = initial_patch_size(patch, spacing, AugmentConfig(in_plane=True, **alone))
        assert size[0] == patch[0] and size[1] > patch[1] and size[2] > patch[2], prob
        assert initial_patch_size(patch, spacing, AugmentConfig(in_plane=False, **alone))[0] > patch[0], prob


@pytest.mark.parametrize("in_plane", [True, False])
def test_the_crop_leaves_room_for_the_largest_elastic_displacement(in_plane):
    """The field is clipped to 3 magnitudes (none along z in-plane): the crop's voxel centres,
    (n - 1) / 2 voxels either side, reach every sample point moved that far."""
    magnitude = 1.5
    aug = AugmentConfig(elastic_prob=1.0, elastic_sigma_mm=4.0, elastic_magnitude_mm=magnitude, in_plane=in_plane)
    patch, spacing = (6, 16, 20), (2.5, 1.0, 0.8)
    size = initial_patch_size(patch, spacing, aug)
    for n, p, h, moved in zip(size, patch, spacing, (not in_plane, True, True)):
        assert (n - 1) / 2 * h >= (p - 1) / 2 * h + 3 * magnitude * moved - 1e-9
    field = _elastic_field(patch, spacing, aug, torch.Generator().manual_seed(0), "cpu")
    assert field.shape == (*patch, 3) and float(field.abs().max()) <= 3 * magnitude + 1e-6
    assert (float(field[..., 0].abs().max()) == 0) == in_plane and float(field[..., 1:].abs().max()) > 0


def test_the_crop_holds_the_outermost_sample_point_of_the_largest_zoom():
    """Scaling by s puts the outermost of p voxels (p - 1) / 2 · s voxels from the centre; the
    crop's voxel centres reach (n - 1) / 2 (p = 8, s = 1.3 needs 10.1 voxels: 10 is too few)."""
    patch, spacing = (8, 10, 12), (2.0, 1.0, 0.7)
    for factor in (1.1, 1.3, 1.45):
        aug = AugmentConfig(scaling_prob=1.0, scaling_range=[0.7, factor], in_plane=False)
        size = initial_patch_size(patch, spacing, aug)
        assert all((n - 1) / 2 >= (p - 1) / 2 * factor for n, p in zip(size, patch)), (factor, size)


def test_the_rotation_bound_holds_between_its_grid_points():
    """_rotated_extent's margin covers the rotations between its grid's angles: from a coarse grid
    (4 angles per axis, 10 degrees apart) the bound still holds the extents on a 1-degree grid."""
    half = (13.75, 80.0, 80.0)  # mm: a 44 x 256 x 256 patch of 0.625 mm voxels
    bound = np.array(_rotated_extent(half, (-15.0, 15.0), False, grid_points=125))
    steps = np.radians(np.arange(-15.0, 16.0))
    angles = [g.ravel() for g in np.meshgrid(steps, steps, steps, indexing="ij")]
    corners = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * half
    needed = 2 * np.abs(np.einsum("nij,cj->nci", _rotations(*angles), corners)).max((0, 1))
    assert (needed <= bound).all() and bound[0] < 2 * np.linalg.norm(half)  # z: a real bound, not the diagonal


def test_each_flip_axis_is_drawn_on_its_own(rng):
    """flip_prob applies to each axis separately: over 200 samples every combination of flipped
    axes occurs (each has probability 1/8 at flip_prob 0.5)."""
    image = torch.from_numpy(rng.normal(size=(1, 1, 2, 3, 4)).astype(np.float32)).expand(200, -1, -1, -1, -1)
    target = torch.zeros((200, 2, 3, 4), dtype=torch.uint8)
    x, _, _ = augment_batch(image, target, None, (2, 3, 4), (1.0, 1.0, 1.0),
                            AugmentConfig(flip_prob=0.5, flip_axes=[0, 1, 2]), list(range(200)))
    combinations = [tuple(a for a in range(3) if k >> a & 1) for k in range(8)]
    found = {next(c for c in combinations if torch.equal(sample, image[0].flip([a + 1 for a in c]))) for sample in x}
    assert found == set(combinations)


def test_intensity_transforms_touch_only_the_image_channel(rng):
    """Channel 0 is the MR image; the others (a signed distance) get the spatial transforms only."""
    image, target, _ = _batch(rng, size=(4, 6, 8), b=1, channels=2)
    aug = AugmentConfig(brightness_prob=1.0, brightness_range=[1.5, 1.5], **OFF)
    x, _, _ = augment_batch(image, target, None, (4, 6, 8), (1.0, 1.0, 1.0), aug, [0])
    torch.testing.assert_close(x[0, 0], 1.5 * image[0, 0])
    assert torch.equal(x[0, 1], image[0, 1])


@pytest.mark.parametrize("sigma", [0.9, 1.3])
def test_3d_blur_matches_scipy_on_every_axis(sigma, rng):
    """Not in-plane, z is blurred too; the kernel's radius is scipy's int(3 sigma + 0.5) (3 for 0.9,
    4 for 1.3, where int(3 sigma) would give 2 and 3)."""
    x = torch.from_numpy(rng.normal(size=(9, 12, 11)).astype(np.float32))
    y = _single(AugmentConfig(blur_prob=1.0, blur_sigma=[sigma, sigma], in_plane=False, **OFF), x)
    expected = ndimage.gaussian_filter(x.numpy().astype(np.float64), sigma, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)


def test_lowres_in_3d_also_coarsens_z(rng):
    """An image that varies only along z passes the in-plane simulation unchanged (each plane is
    constant), but not the 3D one, which halves z too."""
    x = torch.from_numpy(np.broadcast_to(rng.normal(size=(8, 1, 1)), (8, 12, 12)).astype(np.float32))
    y = _single(AugmentConfig(lowres_prob=1.0, lowres_scale=[0.5, 0.5], in_plane=True, **OFF), x)
    torch.testing.assert_close(y, x)
    z = _single(AugmentConfig(lowres_prob=1.0, lowres_scale=[0.5, 0.5], in_plane=False, **OFF), x)
    assert float((z - x).abs().mean()) > 0.1


@pytest.mark.parametrize("key", ["gamma", "inverse_gamma"])
def test_gamma_keeps_a_constant_patch(key):
    """A patch of padding only (no intensity span) stays that constant rather than becoming NaN."""
    x = torch.full((4, 6, 6), 0.25)
    y = _single(AugmentConfig(**{f"{key}_prob": 1.0, f"{key}_range": [1.5, 1.5]}, **OFF), x)
    torch.testing.assert_close(y, x)


def test_gamma_draws_below_one_half_of_the_time(rng):
    """nnU-Net: a range reaching below 1 draws uniformly on [low, 1) half of the time, else on
    [1, high] (means 0.85 and 1.25 for (0.7, 1.5)); a range above 1 draws only from itself."""
    n = 4000
    draws = np.array([_draw_gamma((0.7, 1.5), rng) for _ in range(n)])
    below = draws < 1
    assert abs(below.mean() - 0.5) < 4 * np.sqrt(0.25 / n) and 0.7 <= draws.min() and draws.max() <= 1.5
    for part, mean, width in ((draws[below], 0.85, 0.3), (draws[~below], 1.25, 0.5)):
        assert abs(part.mean() - mean) < 4 * width / np.sqrt(12 * len(part))  # uniform: std = width / sqrt(12)
    assert all(1.2 <= _draw_gamma((1.2, 1.5), rng) <= 1.5 for _ in range(100))


def test_histogram_matching_of_a_subsampled_volume_stays_in_the_reference_range(rng):
    """Above 200 000 voxels ranks come from a sample; a voxel above every sampled value has rank n
    and goes to the top quantile. The voxel is put where match_histogram's draw (replayed from
    the same generator seed) does not look."""
    x = torch.from_numpy(rng.normal(size=(8, 160, 160)).astype(np.float32))  # 204 800 voxels
    sampled = torch.randint(x.numel(), (200_000,), generator=torch.Generator().manual_seed(3))
    unseen = int(np.setdiff1d(np.arange(x.numel()), sampled.numpy())[0])
    x.view(-1)[unseen] = float(x.max()) + 1.0
    reference = torch.linspace(-1.0, 1.0, len(QUANTILES))
    y = match_histogram(x, reference, torch.Generator().manual_seed(3))
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert float(y.view(-1)[unseen]) == pytest.approx(1.0, abs=1e-3)


def test_each_sample_is_matched_to_its_own_reference(rng):
    """references[b] is sample b's: outputs lie in the range of their own reference quantiles."""
    image, target, _ = _batch(rng, size=(4, 10, 10), b=2)
    references = torch.stack([torch.linspace(-1.0, 1.0, len(QUANTILES)), torch.linspace(10.0, 30.0, len(QUANTILES))])
    x, _, _ = augment_batch(image, target, None, (4, 10, 10), (1.0, 1.0, 1.0),
                            AugmentConfig(histogram_match_prob=1.0, **OFF), [0, 1], references)
    for b in range(2):
        assert references[b, 0] <= x[b, 0].min() and x[b, 0].max() <= references[b, -1]


def test_rotation_and_scaling_drawn_together_compose():
    """Both drawn: a linear-in-mm image is sampled at s · R(angles) p (isotropic s commutes with
    R), as in the rotation-only test above, with s = 1.2."""
    size, patch, spacing = (16, 22, 30), (4, 8, 8), (2.0, 1.0, 1.0)
    axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(size, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    image = torch.from_numpy((3 * zz - yy + xx).astype(np.float32))[None, None]
    aug = AugmentConfig(rotation_prob=1.0, rotation_deg=[30.0, 30.0], scaling_prob=1.0, scaling_range=[1.2, 1.2],
                        in_plane=False, **OFF)
    x, _, _ = augment_batch(image, torch.zeros((1, *size), dtype=torch.uint8), None, patch, spacing, aug, [0])
    out_axes = [(np.arange(n) - (n - 1) / 2) * h for n, h in zip(patch, spacing)]
    points = 1.2 * np.stack(np.meshgrid(*out_axes, indexing="ij"), -1) @ _rotation([math.radians(30.0)] * 3).T
    expected = 3 * points[..., 0] - points[..., 1] + points[..., 2]
    inside = np.all(np.abs(points) <= [(n - 1) / 2 * h for n, h in zip(size, spacing)], axis=-1)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(x[0, 0].numpy()[inside], expected[inside], atol=1e-4)
