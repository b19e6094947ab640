"""Image IO: (z, y, x) arrays, spacing in mm and exact geometry through NIfTI and NRRD."""
import nibabel as nib
import nrrd
import numpy as np
import pytest

from c2w_fast.data.io import affine_from_spacing, read_header, read_volume, write_volume
from c2w_fast.errors import DataError

SUFFIXES = [".nii", ".nii.gz", ".nrrd"]


def oblique_affine(rng):
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = affine_from_spacing(rng.uniform(0.4, 3.0, 3), origin=rng.uniform(-200, 200, 3))
    affine[:3, :3] = rotation @ affine[:3, :3]
    return affine


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_round_trip_keeps_values_spacing_and_affine(tmp_path, suffix, dtype, rng):
    array = (rng.random((5, 8, 11)) * 100).astype(dtype)
    affine = oblique_affine(rng)
    path = write_volume(tmp_path / f"image{suffix}", array, affine)
    volume = read_volume(path)
    assert volume.array.dtype == dtype and volume.shape == (5, 8, 11)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-6)
    shape, spacing = read_header(path)
    assert shape == (5, 8, 11)
    np.testing.assert_allclose(spacing, volume.spacing, rtol=1e-6)


def test_write_like_copies_geometry_and_bool_becomes_uint8(tmp_path, rng):
    image = write_volume(tmp_path / "a.nii.gz", rng.random((3, 4, 5)).astype(np.float32), oblique_affine(rng))
    like = read_volume(image)
    mask = read_volume(write_volume(tmp_path / "m.nrrd", like.array > 0.5, like=like))
    assert mask.array.dtype == np.uint8
    np.testing.assert_allclose(mask.affine, like.affine, atol=1e-4)


def test_nifti_file_axes_are_reversed_to_zyx(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # file order (x, y, z)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.5, 1.0])), str(tmp_path / "f.nii"))
    volume = read_volume(tmp_path / "f.nii")
    assert volume.shape == (4, 3, 2)
    assert volume.array[3, 2, 1] == data[1, 2, 3]
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.5))


def test_nrrd_lps_space_is_converted_to_ras(tmp_path):
    data = np.zeros((2, 3, 4), np.uint8)  # pynrrd default order: (x, y, z)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.6, 0.7, 2.0]),
              "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "f.nrrd"), data, header)
    volume = read_volume(tmp_path / "f.nrrd")
    assert volume.shape == (4, 3, 2)
    np.testing.assert_allclose(volume.origin, (-10.0, -20.0, 30.0))
    np.testing.assert_allclose(volume.direction[:, 2], (-1.0, 0.0, 0.0))  # x axis points left in RAS
    np.testing.assert_allclose(volume.spacing, (2.0, 0.7, 0.6))


def test_nrrd_with_only_spacings_and_with_none(tmp_path):
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((2, 3, 4), np.uint8), {"spacings": [0.6, 0.7, 2.0]})
    assert read_volume(tmp_path / "s.nrrd").spacing == pytest.approx((2.0, 0.7, 0.6))
    nrrd.write(str(tmp_path / "n.nrrd"), np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataError, match="spacing unknown"):
        read_volume(tmp_path / "n.nrrd")
    assert read_volume(tmp_path / "n.nrrd", assume_spacing=(1, 1, 1)).spacing == (1.0, 1.0, 1.0)


def test_trailing_singleton_axis_is_dropped_and_real_4d_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 1), np.int16), np.eye(4)), str(tmp_path / "t.nii.gz"))
    assert read_volume(tmp_path / "t.nii.gz").shape == (2, 3, 4)
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(DataError, match="4d.nii.gz: expected a 3D image"):
        read_volume(tmp_path / "4d.nii.gz")


def test_write_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="affine or a `like`"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match="unknown image format"):
        write_volume(tmp_path / "x.png", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm, got \(0.625, 0.625\)"):
        affine_from_spacing((0.625, 0.625))
