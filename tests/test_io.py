"""Image IO: (z, y, x) arrays, spacing in mm and exact geometry through NIfTI and NRRD."""
import nibabel as nib
import nrrd
import numpy as np
import pytest

from c2w_fast.data.io import (Volume, affine_from_spacing, check_same_grid, read_header, read_volume, write_csv,
                              write_volume)
from c2w_fast.errors import DataError

SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr"]  # .nhdr: a detached header and its data file


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
    volume = read_volume(tmp_path / "s.nrrd")
    assert volume.spacing == pytest.approx((2.0, 0.7, 0.6))
    # as ITK reads it: file axes i, j, k along L, P, S; written back, the directions are the identity in LPS
    np.testing.assert_allclose(volume.direction, [[0, 0, -1], [0, -1, 0], [1, 0, 0]])
    _, header = nrrd.read(str(write_volume(tmp_path / "out.nrrd", volume.array, like=volume)))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], np.diag([0.6, 0.7, 2.0]))
    nrrd.write(str(tmp_path / "n.nrrd"), np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataError, match="spacing unknown"):
        read_volume(tmp_path / "n.nrrd")
    assert read_volume(tmp_path / "n.nrrd", assume_spacing=(1, 1, 1)).spacing == (1.0, 1.0, 1.0)


def test_trailing_singleton_axis_is_dropped_and_real_4d_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 1), np.int16), np.eye(4)), str(tmp_path / "t.nii.gz"))
    volume = read_volume(tmp_path / "t.nii.gz")
    assert volume.shape == (2, 3, 4)
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)  # an output written like it keeps its shape
    write_volume(tmp_path / "out.nii.gz", labels, like=volume)
    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert written.shape == (4, 3, 2, 1) and written.header["dim"][0] == 4
    np.testing.assert_array_equal(read_volume(tmp_path / "out.nii.gz").array, labels)
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(DataError, match="4d.nii.gz: expected a 3D image"):
        read_volume(tmp_path / "4d.nii.gz")



def test_nrrd_that_is_not_a_3d_scalar_image_is_refused(tmp_path):
    """A 4D NRRD (a DWI series), a 2D one, a vector axis without a direction, and a space we don't map:
    each named, before any voxel is read."""
    nrrd.write(str(tmp_path / "4d.nrrd"), np.zeros((2, 3, 4, 5), np.uint8), {"spacings": [1.0] * 4})
    with pytest.raises(DataError, match=r"4d.nrrd: expected a 3D image, got sizes \[2, 3, 4, 5\]"):
        read_volume(tmp_path / "4d.nrrd")
    nrrd.write(str(tmp_path / "2d.nrrd"), np.zeros((3, 4), np.uint8), {"spacings": [1.0, 1.0]})
    with pytest.raises(DataError, match=r"2d.nrrd: expected a 3D image, got sizes \[3, 4\]"):
        read_volume(tmp_path / "2d.nrrd")
    (tmp_path / "v.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
                                      b"sizes: 3 4 5\nspace directions: none (1,0,0) (0,1,0)\n"
                                      b"kinds: vector domain domain\nencoding: raw\n\n" + bytes(60))
    with pytest.raises(DataError, match="v.nrrd: space directions contain a non-spatial axis"):
        read_volume(tmp_path / "v.nrrd")
    scanner = {"space": "scanner-xyz", "space directions": np.eye(3)}
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((2, 3, 4), np.uint8), scanner)
    with pytest.raises(DataError, match="s.nrrd: unsupported NRRD space 'scanner-xyz'"):
        read_volume(tmp_path / "s.nrrd")

def test_write_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="3D"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="affine or a `like`"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match="unknown image format"):
        write_volume(tmp_path / "x.png", np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm, got \(0.625, 0.625\)"):
        affine_from_spacing((0.625, 0.625))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_failed_write_leaves_the_old_file_whole_and_no_debris(tmp_path, suffix, monkeypatch, rng):
    from c2w_fast.data import io

    path = tmp_path / f"x{suffix}"
    old = rng.integers(0, 9, (3, 4, 5)).astype(np.uint8)
    write_volume(path, old, np.eye(4))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) == (2 if suffix == ".nhdr" else 1)

    def dies_halfway(target, *args):
        target.with_suffix(".raw.gz").write_bytes(b"half a data file")
        target.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_write_nifti" if "nii" in suffix else "_write_nrrd", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        write_volume(path, old + 1, np.eye(4))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    write_volume(path, old + 1, np.eye(4))
    np.testing.assert_array_equal(read_volume(path).array, old + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_a_rewrite_follows_a_symlink_and_keeps_the_permissions(tmp_path, rng):
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "x.nii.gz", tmp_path / "link.nii.gz"
    write_volume(target, np.zeros((2, 3, 4), np.uint8), np.eye(4))
    target.chmod(0o664)
    link.symlink_to(target)
    write_volume(link, np.ones((2, 3, 4), np.uint8), np.eye(4))
    assert link.is_symlink() and read_volume(target).array.max() == 1
    assert target.stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link.nii.gz", "real", "x.nii.gz"]


def test_big_endian_files_come_back_in_native_byte_order(tmp_path, rng):
    array = rng.integers(-500, 500, (4, 3, 2)).astype(">i2")  # file order (x, y, z)
    header = nib.Nifti1Header(endianness=">")
    nib.save(nib.Nifti1Image(array, np.eye(4), header=header), str(tmp_path / "be.nii.gz"))
    nrrd.write(str(tmp_path / "be.nrrd"), array, {"spacings": [1.0, 1.0, 1.0], "endian": "big"})
    for name in ("be.nii.gz", "be.nrrd"):
        volume = read_volume(tmp_path / name)
        assert volume.array.dtype.isnative
        np.testing.assert_array_equal(volume.array, array.transpose(2, 1, 0))


def test_rgb_voxels_and_a_zero_voxel_size_are_refused(tmp_path):
    rgb = np.zeros((4, 3, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(DataError, match="rgb.nii.gz: voxels of type .* are not a scalar image"):
        read_volume(tmp_path / "rgb.nii.gz")
    flat = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), None)
    flat.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # a z column of zeros
    nib.save(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(DataError, match=r"flat.nii.gz: the header's geometry is unusable: the affine's voxel size "
                                         r"must have 3 positive values \(z, y, x\) in mm, got \(0.0, 1.0, 1.0\)"):
        read_volume(tmp_path / "flat.nii.gz")
    parallel = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), None)
    parallel.header.set_sform([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]], code=2)
    nib.save(parallel, str(tmp_path / "parallel.nii.gz"))  # x and y axes along one direction
    with pytest.raises(DataError, match="parallel.nii.gz: the header's geometry is unusable: "
                                         "the affine's voxel axes are parallel"):
        read_volume(tmp_path / "parallel.nii.gz")


def test_complex_voxels_and_an_empty_file_are_named_for_what_they_are(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.complex64), np.eye(4)), str(tmp_path / "c.nii.gz"))
    with pytest.raises(DataError, match=r"c.nii.gz: complex voxels \(complex64\) are not a magnitude image"):
        read_volume(tmp_path / "c.nii.gz")
    for suffix in (".nii.gz", ".nrrd"):
        (tmp_path / f"e{suffix}").write_bytes(b"")
        for read in (read_volume, read_header):
            with pytest.raises(DataError, match=rf"e{suffix}: the file is empty \(0 bytes\)"):
                read(tmp_path / f"e{suffix}")


@pytest.mark.parametrize("qform_code", [0, 1])
def test_a_zero_pixdim_is_refused_where_no_sform_gives_the_geometry(tmp_path, qform_code):
    image = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), None)
    image.header.set_qform(np.eye(4), code=qform_code)
    image.header.set_sform(None, code=0)
    image.header["pixdim"][1:4] = [1.0, 0.0, 2.0]  # nibabel would load this as 1 mm
    nib.save(image, str(tmp_path / "nosize.nii.gz"))
    for read in (read_volume, read_header):
        with pytest.raises(DataError, match=r"nosize.nii.gz: the header's voxel size \(pixdim 1, 0, 2, x/y/z\)"):
            read(tmp_path / "nosize.nii.gz")
    image.header.set_sform(np.diag([1.0, 0.5, 2.0, 1.0]), code=2)  # an sform makes pixdim irrelevant
    nib.save(image, str(tmp_path / "sform.nii.gz"))
    assert read_header(tmp_path / "sform.nii.gz")[1] == pytest.approx((2.0, 0.5, 1.0))


@pytest.mark.parametrize("unit, factor", [("meter", 1000.0), ("micron", 1e-3), ("mm", 1.0), ("unknown", 1.0)])
def test_nifti_spatial_units_are_converted_to_mm(tmp_path, unit, factor):
    image = nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.diag([0.5, 0.7, 2.5, 1.0]))
    image.header.set_xyzt_units(xyz=unit)
    nib.save(image, str(tmp_path / "u.nii.gz"))
    volume = read_volume(tmp_path / "u.nii.gz")
    np.testing.assert_allclose(volume.spacing, np.array([2.5, 0.7, 0.5]) * factor)
    assert read_header(tmp_path / "u.nii.gz")[1] == pytest.approx(volume.spacing)


@pytest.mark.parametrize("unit, factor", [("cm", 10.0), ("m", 1000.0), ("microns", 1e-3), ("MM", 1.0)])
def test_nrrd_space_units_are_converted_to_mm_and_written_as_mm(tmp_path, unit, factor):
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.06, 0.07, 0.2]),
              "space origin": np.array([1.0, 2.0, 3.0]), "space units": [unit] * 3}
    nrrd.write(str(tmp_path / "u.nrrd"), np.zeros((2, 3, 4), np.uint8), header)
    volume = read_volume(tmp_path / "u.nrrd")
    np.testing.assert_allclose(volume.spacing, np.array([0.2, 0.07, 0.06]) * factor)
    np.testing.assert_allclose(volume.origin, np.array([-1.0, -2.0, 3.0]) * factor)
    assert read_header(tmp_path / "u.nrrd")[1] == pytest.approx(volume.spacing)
    _, written = nrrd.read(str(write_volume(tmp_path / "out.nrrd", volume.array, like=volume)))
    assert written["space units"] == ["mm"] * 3
    np.testing.assert_allclose(written["space directions"], np.diag([0.06, 0.07, 0.2]) * factor)
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((2, 3, 4), np.uint8), {"spacings": [0.6, 0.7, 2.0],
                                                                          "units": [unit] * 3})
    assert read_volume(tmp_path / "s.nrrd").spacing == pytest.approx(np.array([2.0, 0.7, 0.6]) * factor)


@pytest.mark.parametrize("units", [["mm", "mm", "cm"], ["furlong"] * 3])
def test_nrrd_units_that_are_mixed_or_unknown_are_refused(tmp_path, units):
    header = {"space": "left-posterior-superior", "space directions": np.eye(3), "space units": units}
    nrrd.write(str(tmp_path / "u.nrrd"), np.zeros((2, 3, 4), np.uint8), header)
    for read in (read_volume, read_header):
        with pytest.raises(DataError, match=r"u.nrrd: NRRD space units \[.*\] are not one length unit this "
                                            r"reader knows \(mm, millimeter"):
            read(tmp_path / "u.nrrd")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_types_no_reader_takes_are_stored_as_ones_they_do(tmp_path, suffix):
    for dtype, stored in ((np.int64, np.int32), (np.uint64, np.int32), (np.float16, np.float32), (bool, np.uint8)):
        array = np.arange(24).reshape(2, 3, 4).astype(dtype)
        volume = read_volume(write_volume(tmp_path / f"a{suffix}", array, np.eye(4)))
        assert volume.array.dtype == stored and np.array_equal(volume.array, array.astype(stored))
    with pytest.raises(ValueError, match="do not fit the int32"):
        write_volume(tmp_path / f"big{suffix}", np.full((2, 2, 2), 2**40), np.eye(4))
    upper = write_volume(tmp_path / f"A{suffix.upper()}", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert upper.is_file() and read_volume(upper).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="suffix in one case"):
        write_volume(tmp_path / f"B{suffix[:2].upper()}{suffix[2:]}", np.zeros((2, 2, 2), np.uint8), np.eye(4))


def test_nrrd_las_space_flips_only_the_first_axis(tmp_path):
    """left-anterior-superior: x points left (RAS -x); y (anterior) and z (superior) stay."""
    header = {"space": "left-anterior-superior", "space directions": np.diag([0.6, 0.7, 2.0]),
              "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "las.nrrd"), np.zeros((2, 3, 4), np.uint8), header)
    volume = read_volume(tmp_path / "las.nrrd")
    np.testing.assert_allclose(volume.origin, (-10.0, 20.0, 30.0))
    np.testing.assert_allclose(volume.direction, [[0, 0, -1], [0, 1, 0], [1, 0, 0]])  # columns: z, y, x


def test_a_nan_origin_is_refused(tmp_path):
    header = {"space": "left-posterior-superior", "space directions": np.eye(3),
              "space origin": np.array([np.nan, 0.0, 0.0])}
    nrrd.write(str(tmp_path / "nan.nrrd"), np.zeros((2, 3, 4), np.uint8), header)
    with pytest.raises(DataError, match="nan.nrrd: the header's geometry is unusable: affine must be finite"):
        read_volume(tmp_path / "nan.nrrd")


def test_write_like_needs_the_reference_shape_and_int64_values_that_fit(tmp_path):
    like = Volume(np.zeros((3, 4, 5), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match=r"array shape \(3, 4, 6\) differs from the reference volume's \(3, 4, 5\)"):
        write_volume(tmp_path / "x.nii.gz", np.zeros((3, 4, 6), np.uint8), like=like)
    with pytest.raises(ValueError, match="do not fit the int32"):
        write_volume(tmp_path / "x.nii.gz", np.full((2, 2, 2), -2**40), np.eye(4))
    assert not list(tmp_path.iterdir())


def test_same_grid_needs_the_same_directions_and_spacing_within_a_tenth_of_a_percent():
    """A label flipped along x about the same origin, or 5 % larger voxels, is not on the image's grid."""
    affine = affine_from_spacing((2.5, 1.0, 1.0))
    reference = Volume(np.zeros((3, 4, 5)), affine)
    flipped = affine.copy()
    flipped[:3, 2] *= -1
    with pytest.raises(DataError, match=r"label direction differs from the image's \(in memory\): direction "
                                        r"\[\[0.0, 0.0, -1.0\], \[0.0, 1.0, 0.0\], \[1.0, 0.0, 0.0\]\] vs"):
        check_same_grid(Volume(np.zeros((3, 4, 5)), flipped), reference, "label", "image")
    shifted = affine_from_spacing((2.5, 1.0, 1.0), origin=(0.0, 0.02, 0.0))  # only what differs is printed
    with pytest.raises(DataError, match=r"label origin differs from the image's \(in memory\): origin "
                                        r"\(0, 0.02, 0\) mm vs \(0, 0, 0\) mm$"):
        check_same_grid(Volume(np.zeros((3, 4, 5)), shifted), reference, "label", "image")
    check_same_grid(Volume(np.zeros((3, 4, 5)), affine_from_spacing((2.5, 1.0, 1.0), origin=(0.0, 0.009, 0.0))),
                    reference, "label", "image")  # within 0.01 mm
    with pytest.raises(DataError, match="label spacing .* differs from image spacing"):
        check_same_grid(Volume(np.zeros((3, 4, 5)), affine_from_spacing((2.5, 1.0, 1.05))), reference, "label", "image")
    check_same_grid(Volume(np.zeros((3, 4, 5)), affine_from_spacing((2.5, 1.0, 1.0005))), reference, "label", "image")


def test_write_csv_rounds_floats_to_significant_digits(tmp_path):
    """float_digits counts significant digits (format g): 1234.5678 → 1235, 0.000123456 → 0.0001235;
    other values and missing keys (empty cells) are written as they are."""
    path = write_csv(tmp_path / "m.csv", [{"case": "a", "dice": 1234.5678, "hd": 0.000123456}, {"case": "b", "n": 7}],
                     float_digits=4)
    assert path.read_text() == "case,dice,hd,n\na,1235,0.0001235,\nb,,,7\n"
