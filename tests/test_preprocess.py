"""Preprocessing: z-score, target classes, resampling, centre of mass, ROI crop and paste."""
import numpy as np
import torch
import pytest
from scipy import ndimage

from c2w_fast.data.preprocess import (
    Box,
    center_of_mass,
    crop,
    paste,
    resample,
    resampled_shape,
    target_labels,
    zscore,
)


def test_zscore_of_a_tensor_in_chunks_equals_the_float64_formula(rng, monkeypatch):
    import c2w_fast.data.preprocess as preprocess

    monkeypatch.setattr(preprocess, "ZSCORE_CHUNK", 1000)  # several chunks and a ragged last one
    image = torch.from_numpy(rng.normal(500, 120, (7, 19, 23))).float()
    wide = image.double()
    expected = ((wide - wide.mean()) / wide.std(correction=0)).float()
    torch.testing.assert_close(zscore(image), expected, rtol=0, atol=0)
    assert not zscore(torch.full((3, 4, 5), 5.0)).any()
    for box in (Box((2, 3, 4), (3, 5, 6)), Box((-2, 15, -3), (4, 8, 30))):  # inside; reaching out of the volume
        torch.testing.assert_close(zscore(image, box), crop(expected, box), rtol=0, atol=0)
        np.testing.assert_array_equal(zscore(image.numpy(), box), crop(expected, box).numpy())


def test_zscore_has_zero_mean_unit_std_and_handles_constants(rng):
    image = rng.normal(300, 40, (7, 9, 11)).astype(np.int16)
    z = zscore(image)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1, abs=1e-5)
    assert not zscore(np.full((3, 3, 3), 5.0)).any()


def test_target_classes_from_canonical_labels():
    labels = np.array([0, 1, 2, 3], np.uint8).reshape(1, 1, 4)
    assert target_labels(labels, "la_cavity").ravel().tolist() == [0, 0, 0, 1]
    assert target_labels(labels, "wall").ravel().tolist() == [0, 1, 0, 0]
    assert target_labels(labels, "atria").ravel().tolist() == [0, 1, 1, 1]
    assert target_labels(labels, "multiclass").ravel().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="target must be one of"):
        target_labels(labels, "LV")


def test_resampling_keeps_the_field_of_view_and_voxel_centres(rng):
    assert resampled_shape((44, 640, 640), (2.5, 0.625, 0.625), (2.5, 0.9737, 0.9737)) == (44, 411, 411)
    image = rng.random((6, 10, 14)).astype(np.float32)
    # doubling every axis: a centre-aligned linear interpolation equals scipy's zoom with grid_mode
    up = resample(image, (12, 20, 28))
    expected = ndimage.zoom(image, 2, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(up, expected, atol=1e-5)
    labels = rng.integers(0, 4, (6, 10, 14)).astype(np.uint8)
    assert np.array_equal(resample(resample(labels, (12, 20, 28), labels=True), labels.shape, labels=True), labels)
    assert resample(labels, labels.shape, labels=True) is labels


def test_centre_of_mass_and_empty_mask():
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = mask[3, 4, 5] = True
    assert center_of_mass(mask) == (2.0, 3.0, 4.0)
    assert center_of_mass(np.zeros((2, 2, 2))) is None
    assert center_of_mass(torch.zeros((2, 2, 2), dtype=torch.bool)) is None


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 1, 1), (7, 1, 9)])
def test_centre_of_mass_is_the_mean_voxel_index_for_arrays_and_tensors(shape, rng):
    for _ in range(10):
        mask = rng.random(shape) < rng.random()
        expected = tuple(np.argwhere(mask).mean(0)) if mask.any() else None
        for given in (mask, mask.astype(np.uint8) * 7, torch.from_numpy(mask), torch.from_numpy(mask.astype(np.float32))):
            found = center_of_mass(given)
            assert found is None if expected is None else np.allclose(found, expected, rtol=1e-12, atol=0)


def test_crop_and_paste_round_trip_across_the_border(rng):
    volume = rng.random((2, 9, 10, 11)).astype(np.float32)
    for centre in [(4, 5, 5), (0, 0, 0), (8, 9, 10), (-3, 12, 5)]:
        box = Box.around(centre, (6, 7, 8))
        part = crop(volume, box, pad_value=-1)
        assert part.shape == (2, 6, 7, 8)
        z0, y0, x0 = box.start
        for index in np.ndindex(6, 7, 8):
            z, y, x = z0 + index[0], y0 + index[1], x0 + index[2]
            inside = 0 <= z < 9 and 0 <= y < 10 and 0 <= x < 11
            assert part[(0, *index)] == (volume[0, z, y, x] if inside else -1)
        back = paste(part, box, (9, 10, 11), fill=-2)
        kept = back[0] != -2
        np.testing.assert_array_equal(back[:, kept], volume[:, kept])
    assert Box.around((4.4, 5.6, 5), (4, 4, 5)).start == (2, 4, 3)


def test_a_box_entirely_outside_the_volume_crops_padding_and_pastes_nothing(rng):
    volume = rng.random((2, 9, 10, 11)).astype(np.float32)
    for box in (Box((-10, 2, 2), (5, 4, 4)), Box((12, 2, 2), (5, 4, 4)), Box((2, -6, 30), (3, 4, 4))):
        part = crop(volume, box, pad_value=-1)
        assert part.shape == (2, *box.size) and (part == -1).all()
        back = paste(np.ones((2, *box.size), np.float32), box, (9, 10, 11), fill=0)
        assert back.shape == (2, 9, 10, 11) and not back.any()


def test_label_resampling_takes_the_nearest_voxel_centre(rng):
    """Centre-aligned nearest neighbour: output voxel i of n_out samples input voxel
    floor((i + 1/2) · n_in / n_out), on any factor (not only 2)."""
    labels = rng.integers(0, 250, (5, 7, 11)).astype(np.uint8)
    for shape in ((3, 4, 6), (8, 12, 17), (5, 9, 4)):
        index = [np.floor((np.arange(m) + 0.5) * n / m).astype(int) for n, m in zip(labels.shape, shape)]
        expected = labels[np.ix_(*index)]
        np.testing.assert_array_equal(resample(labels, shape, labels=True), expected)
        assert torch.equal(resample(torch.from_numpy(labels), shape, labels=True), torch.from_numpy(expected))


def test_resampled_shape_keeps_at_least_one_voxel_per_axis():
    """A field of view smaller than half a new voxel still gets one: round(1 · 0.5 / 4) = 0 → 1."""
    assert resampled_shape((1, 3, 5), (0.5, 1.0, 1.0), (4.0, 4.0, 4.0)) == (1, 1, 1)
