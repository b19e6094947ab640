"""Fibrosis burden: planted LGE patches of known extent are recovered, the IIR classes follow the
definition against a scipy reference, bad input, and the CLI."""
import csv
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage

from c2w_fast import fibrosis as fibrosis_cli
from c2w_fast.data.io import affine_from_spacing, read_volume, write_volume
from c2w_fast.data.phantom import make_phantom
from c2w_fast.fibrosis import fibrosis_burden
from c2w_fast.regions import SECTORS


@pytest.mark.parametrize("shape, spacing", [((48, 128, 128), (0.625,) * 3), ((44, 320, 320), (2.5, 0.625, 0.625))])
@pytest.mark.parametrize("patches", [0, 3, 20])
def test_planted_enhancement_is_recovered_within_two_percentage_points(shape, spacing, patches, rng):
    """Planted patches (IIR about 1.7 before blur, bias field and Rician noise; 3 is the phantom's
    default, 20 gives a burden of about 10 %): the fibrosis burden matches the planted share of
    the wall within 2 percentage points. What is missed are patch-rim voxels next to healthy wall,
    darkened by the phantom's 0.4 mm partial-volume blur: about a tenth of the planted burden on
    the 0.625 mm isotropic grid (so about 17 % burden there reaches the 2-point bound). The LA
    blood pool normalises: a mean over both atria carries the bias field's RA-LA difference
    (up to 3 points off for 20 patches)."""
    phantom = make_phantom(shape, spacing, seed=int(rng.integers(1000)), n_patches=patches)
    wall, cavity = phantom.labels == 1, phantom.labels >= 2
    result = fibrosis_burden(phantom.image, wall, cavity, spacing, la_cavity=phantom.labels == 3)
    planted = 100.0 * phantom.enhancement.sum() / wall.sum()
    assert abs(result.fibrosis_percent - planted) <= 2.0
    assert result.dense_scar_percent <= result.fibrosis_percent
    assert result.blood_pool_mean == pytest.approx(phantom.blood_pool, rel=0.1)


def test_classes_and_blood_pool_follow_the_definition(rng):
    shape = (9, 14, 13)
    image = rng.uniform(0.1, 2.0, size=shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[2:7, 3:11, 3:10] = 2           # cavity
    labels[1:8, 2:12, 2:4] = 1            # a wall slab along one side
    wall, cavity = labels == 1, labels == 2
    result = fibrosis_burden(image, wall, cavity, (1.0, 0.8, 0.8), fibrosis=1.1, dense=1.4)
    core = ndimage.binary_erosion(cavity & ~wall, structure=ndimage.generate_binary_structure(3, 1))
    mean = image[core].astype(np.float64).mean()
    assert result.blood_pool_mean == pytest.approx(mean, rel=1e-6)
    iir = image / mean
    np.testing.assert_allclose(result.iir[wall], iir[wall], rtol=1e-6)
    expected = np.where(wall, 1 + (iir >= 1.1) + (iir >= 1.4), 0)
    np.testing.assert_array_equal(result.labels, expected)
    row = result.summary()[0]
    assert row["fibrosis_percent"] == pytest.approx(100 * (wall & (iir >= 1.1)).sum() / wall.sum())
    assert row["dense_scar_percent"] == pytest.approx(100 * (wall & (iir >= 1.4)).sum() / wall.sum())
    # a cavity one voxel thin erodes to nothing: the whole cavity is the blood pool
    thin = np.zeros(shape, bool)
    thin[4, 3:11, 5:9] = True
    assert fibrosis_burden(image, wall, thin, (1.0, 1.0, 1.0)).blood_pool_mean == pytest.approx(
        image[thin].astype(np.float64).mean(), rel=1e-6)
    tensor = fibrosis_burden(torch.from_numpy(image), torch.from_numpy(wall), torch.from_numpy(cavity), (1, 1, 1))
    assert isinstance(tensor.labels, torch.Tensor)
    # the LA alone is the blood pool when it is named
    la = cavity.copy()
    la[:, :, :6] = False
    la_core = ndimage.binary_erosion(la, structure=ndimage.generate_binary_structure(3, 1))
    assert fibrosis_burden(image, wall, cavity, (1, 1, 1), la_cavity=la).blood_pool_mean == pytest.approx(
        image[la_core].astype(np.float64).mean(), rel=1e-6)


def test_bad_thresholds_and_shapes_are_named():
    image, wall, cavity = np.ones((4, 5, 6)), np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    wall[1], cavity[2] = True, True
    with pytest.raises(ValueError, match="thresholds must satisfy 0 < fibrosis <= dense, got fibrosis=1.4, dense=1.2"):
        fibrosis_burden(image, wall, cavity, (1, 1, 1), fibrosis=1.4, dense=1.2)
    with pytest.raises(ValueError, match=r"image must be \(z, y, x\) of the masks' shape \(4, 5, 6\), got \(5, 6\)"):
        fibrosis_burden(image[0], wall, cavity, (1, 1, 1))
    with pytest.raises(ValueError, match="the blood-pool mean intensity must be positive, got 0.0"):
        fibrosis_burden(np.zeros((4, 5, 6)), wall, cavity, (1, 1, 1))
    for region, value in ((wall, np.nan), (cavity, np.inf)):
        image = np.ones((4, 5, 6))
        image[np.argwhere(region)[0].tolist()[0]] = value  # one slice holding wall (or cavity) voxels
        name = "wall" if region is wall else "blood pool"
        with pytest.raises(ValueError, match=f"the image has 30 non-finite values \\(NaN or inf\\) in the {name}"):
            fibrosis_burden(image, wall, cavity, (1, 1, 1))


def test_cli_writes_the_label_map_the_iir_and_the_summary(tmp_path, capsys):
    spacing = (2.0, 1.0, 1.0)
    phantom = make_phantom((24, 96, 96), spacing, seed=4, n_patches=10)
    affine = affine_from_spacing(spacing)
    write_volume(tmp_path / "image.nii.gz", (phantom.image * 1000).astype(np.int16), affine)
    write_volume(tmp_path / "labels.nii.gz", phantom.labels, affine)
    args = ["--image", str(tmp_path / "image.nii.gz"), "--wall", str(tmp_path / "labels.nii.gz"),
            "--cavity", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "f.nii.gz"),
            "--csv", str(tmp_path / "f.csv"), "--iir-map", str(tmp_path / "iir.nii.gz")]
    assert fibrosis_cli.main(args) == 0
    labels = read_volume(tmp_path / "f.nii.gz").array
    assert np.array_equal(labels > 0, phantom.labels == 1) and set(np.unique(labels)) <= {0, 1, 2, 3}
    iir = read_volume(tmp_path / "iir.nii.gz").array
    assert ((labels >= 2) == (iir >= 1.2)).all()
    with open(tmp_path / "f.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["region"] for r in rows] == ["wall", *SECTORS]
    planted = 100.0 * phantom.enhancement.sum() / (phantom.labels == 1).sum()
    assert abs(float(rows[0]["fibrosis_percent"]) - planted) <= 2.0
    assert "blood-pool mean intensity" in capsys.readouterr().out
    write_volume(tmp_path / "small.nii.gz", np.zeros((4, 4, 4), np.int16), affine)
    assert fibrosis_cli.main(args[:1] + [str(tmp_path / "small.nii.gz")] + args[2:8]) == 2
    assert "small.nii.gz: image shape (4, 4, 4) differs from wall shape" in capsys.readouterr().err
    # the same shape on another grid (x reversed, as a flipped export would be) is refused too
    flipped = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 95], [0, 0, 0, 1]])
    write_volume(tmp_path / "flipped.nii.gz", (phantom.image[..., ::-1] * 1000).astype(np.int16), flipped)
    assert fibrosis_cli.main(args[:1] + [str(tmp_path / "flipped.nii.gz")] + args[2:8]) == 2
    assert "flipped.nii.gz: image origin and direction differ from the wall's" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file where a folder should be")
    assert fibrosis_cli.main(args[:7] + [str(tmp_path / "taken" / "f.nii.gz")]) == 2
    assert "taken is a file, not a folder" in capsys.readouterr().err
    # an image with NaN in the wall: the error names the image, as a script looping over cases needs
    write_volume(tmp_path / "nan_image.nii.gz", np.where(phantom.labels == 1, np.nan, phantom.image), affine)
    assert fibrosis_cli.main(args[:1] + [str(tmp_path / "nan_image.nii.gz")] + args[2:8]) == 2
    assert "nan_image.nii.gz: the image has" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # thresholds are checked before any file is read
        fibrosis_cli.main(args[:8] + ["--fibrosis", "1.4", "--dense", "1.3"])
    assert "0 < --fibrosis <= --dense, got 1.4 and 1.3" in capsys.readouterr().err


def test_cli_refuses_outputs_that_are_inputs_and_non_label_files_before_writing(tmp_path, capsys):
    spacing = (2.0, 1.0, 1.0)
    phantom = make_phantom((24, 96, 96), spacing, seed=6)
    affine = affine_from_spacing(spacing)
    image, labels = tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz"
    write_volume(image, (phantom.image * 1000).astype(np.int16), affine)
    write_volume(labels, phantom.labels, affine)
    before = image.read_bytes()
    base = ["--image", str(image), "--wall", str(labels), "--cavity", str(labels)]
    assert fibrosis_cli.main(base + ["--out", str(tmp_path / "f.nii.gz"), "--iir-map", str(image)]) == 2
    assert "--iir-map " + str(image) + " is also --image: it would be overwritten" in capsys.readouterr().err
    assert fibrosis_cli.main(base + ["--out", str(tmp_path / "f.nii.gz"), "--iir-map", str(tmp_path / "f.nii.gz")]) == 2
    assert "is also --out" in capsys.readouterr().err
    (tmp_path / "taken").write_text("")
    assert fibrosis_cli.main(base + ["--out", str(tmp_path / "f.nii.gz"), "--csv", str(tmp_path / "taken/f.csv")]) == 2
    assert image.read_bytes() == before and not (tmp_path / "f.nii.gz").exists()
    capsys.readouterr()
    # a (float) intensity image, or labels with NaN, given as the label file
    write_volume(tmp_path / "float.nii.gz", phantom.image, affine)
    assert fibrosis_cli.main(["--image", str(image), "--wall", str(labels), "--wall-label", "1",
                              "--cavity", str(tmp_path / "float.nii.gz"), "--out", str(tmp_path / "f.nii.gz")]) == 2
    assert "values are not whole numbers" in capsys.readouterr().err
    write_volume(tmp_path / "nan.nii.gz", np.where(phantom.labels == 1, np.nan, phantom.labels).astype(np.float32),
                 affine)
    assert fibrosis_cli.main(["--image", str(image), "--wall", str(tmp_path / "nan.nii.gz"), "--cavity",
                              str(tmp_path / "nan.nii.gz"), "--out", str(tmp_path / "f.nii.gz")]) == 2
    assert "non-finite values (NaN or inf): not a label map" in capsys.readouterr().err
    # the label file given as the image: an IIR of label codes would mean nothing
    assert fibrosis_cli.main(["--image", str(labels), "--wall", str(labels), "--cavity", str(labels),
                              "--out", str(tmp_path / "f.nii.gz")]) == 2
    assert capsys.readouterr().err == (f"error: {labels}: is also a label file (--wall / --cavity): --image is the "
                                       "LGE-MRI image the masks were drawn on\n")
    write_volume(tmp_path / "wall.nii.gz", (phantom.labels == 1).astype(np.uint8), affine)
    assert fibrosis_cli.main(["--image", str(labels), "--wall", str(tmp_path / "wall.nii.gz"), "--cavity", str(labels),
                              "--out", str(tmp_path / "f.nii.gz")]) == 2  # the cavity file as the image
    assert "is also a label file (--wall / --cavity)" in capsys.readouterr().err
    assert not (tmp_path / "f.nii.gz").exists()
    shutil.copy(labels, tmp_path / "copy.nii.gz")  # a copy of it: computed, with a warning
    with pytest.warns(UserWarning, match=r"copy.nii.gz: holds only a few whole values \(\[0, 1, 2, 3\] in a sample "
                                         r"of its voxels\): a label map, not the LGE-MRI image\?"):
        assert fibrosis_cli.main(["--image", str(tmp_path / "copy.nii.gz"), "--wall", str(labels), "--cavity",
                                  str(labels), "--out", str(tmp_path / "f.nii.gz")]) == 0


# --- from the mutation audit of the CLIs: thresholds at their edges, the LA blood pool, geometry of outputs ---

def _pool_of_100_and_wall_rows():
    """(image, wall, cavity): a cavity block of intensity 100 and a wall plane x = 6 whose five rows hold
    124, 125, 150, 125 and 150, i.e. IIR 1.24, 1.25 and 1.5 (the last two exact in float32)."""
    image = np.full((7, 7, 9), 100.0, np.float32)
    wall, cavity = np.zeros(image.shape, bool), np.zeros(image.shape, bool)
    cavity[1:6, 1:6, 1:6] = True
    wall[1:6, 1:6, 6] = True
    image[1:6, 1:6, 6] = np.array([124.0, 125.0, 150.0, 125.0, 150.0])[:, None]
    return image, wall, cavity


def test_thresholds_are_inclusive():
    """IIR exactly at a threshold is above it (``IIR >= fibrosis``): a pool of 100 and wall voxels of 124,
    125 and 150 give IIR 1.24, 1.25 and 1.5 (the last two exact in float32), classes 1, 2 and 3 for
    thresholds 1.25 and 1.5."""
    image, wall, cavity = _pool_of_100_and_wall_rows()
    result = fibrosis_burden(image, wall, cavity, (1.0, 1.0, 1.0), fibrosis=1.25, dense=1.5)
    assert result.blood_pool_mean == 100.0
    np.testing.assert_array_equal(result.labels[1:6, 1:6, 6], np.array([1, 2, 3, 2, 3])[:, None].repeat(5, 1))
    row = result.summary()[0]
    assert (row["fibrosis_percent"], row["dense_scar_percent"]) == (80.0, 40.0)  # 4 and 2 of 5 rows


def two_atria_case(tmp_path, affine):
    """A one-file label map (1 wall, 2 RA, 3 LA) and an LGE image with the LA blood at 100 and the RA blood at
    300 (a coil's bias): the wall's x columns hold 110, 122, 131, 140 and 150 in turn, IIR 1.1, 1.22, 1.31,
    1.4 and 1.5 against the LA, each side of the default thresholds 1.2 and 1.32 and of 1.25 and 1.5."""
    labels = np.zeros((10, 16, 26), np.uint8)
    labels[1:-1, 1:-1, 1:-1] = 1
    labels[3:-3, 3:-3, 3:10] = 2
    labels[3:-3, 3:-3, 12:-3] = 3
    levels = np.array([110.0, 122.0, 131.0, 140.0, 150.0])
    image = np.select([labels == 3, labels == 2, labels == 1], [100.0, 300.0, levels[np.arange(26) % 5]], 0.0)
    write_volume(tmp_path / "labels.nii.gz", labels, affine)
    write_volume(tmp_path / "image.nii.gz", image.astype(np.float32), affine)
    return labels, image


def test_cli_thresholds_options_la_blood_pool_and_output_geometry(tmp_path, capsys):
    """Defaults 1.2 / 1.32 and --fibrosis 1.25 --dense 1.5 classify the wall as their IIR says, with the LA
    alone as blood pool (mean 100; the RA's 300 would lower every IIR); the mean IIR per region is the mean
    of the wall's intensities over 100; the label map and the IIR map lie on the oblique input grid."""
    angle = np.deg2rad(25.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    affine = affine_from_spacing((2.0, 1.0, 1.2), origin=(4.5, -30.0, 12.0), direction=direction)
    labels, image = two_atria_case(tmp_path, affine)
    wall = labels == 1
    iir = np.where(wall, image / 100.0, 0.0)
    base = ["--image", str(tmp_path / "image.nii.gz"), "--wall", str(tmp_path / "labels.nii.gz"),
            "--cavity", str(tmp_path / "labels.nii.gz")]
    for extra, fibrosis, dense in (([], 1.2, 1.32), (["--fibrosis", "1.25", "--dense", "1.5"], 1.25, 1.5)):
        out, iir_map, table = tmp_path / f"f{fibrosis}.nii.gz", tmp_path / f"iir{fibrosis}.nii.gz", tmp_path / "f.csv"
        assert fibrosis_cli.main([*base, "--out", str(out), "--iir-map", str(iir_map), "--csv", str(table),
                                  *extra]) == 0
        assert "blood-pool mean intensity 100" in capsys.readouterr().out
        expected = np.where(wall, 1 + (iir >= fibrosis) + (iir >= dense), 0)  # 1.5 / 1.5: on the threshold, dense
        written = read_volume(out)
        np.testing.assert_array_equal(written.array, expected)
        np.testing.assert_allclose(read_volume(iir_map).array, iir, rtol=1e-6)
        given = read_volume(tmp_path / "labels.nii.gz")
        assert np.array_equal(written.affine, given.affine)
        assert np.array_equal(read_volume(iir_map).affine, given.affine)
        with open(table) as handle:
            row = next(csv.DictReader(handle))
        assert float(row["fibrosis_percent"]) == pytest.approx(100 * (expected[wall] >= 2).mean(), rel=1e-6)
        assert float(row["dense_scar_percent"]) == pytest.approx(100 * (expected[wall] == 3).mean(), rel=1e-6)
        assert float(row["mean_iir"]) == pytest.approx(iir[wall].mean(), rel=1e-6)
    assert iir[wall].mean() != pytest.approx(np.median(iir[wall]))  # a median would differ: the check can fail


def test_cli_refuses_an_iir_map_that_is_no_image_and_a_zero_threshold(tmp_path, capsys):
    """Both before anything is read or written."""
    labels, _ = two_atria_case(tmp_path, affine_from_spacing((2.0, 1.0, 1.0)))
    base = ["--image", str(tmp_path / "image.nii.gz"), "--wall", str(tmp_path / "labels.nii.gz"),
            "--cavity", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "f.nii.gz")]
    assert fibrosis_cli.main(base + ["--iir-map", str(tmp_path / "iir.csv")]) == 2
    assert "iir.csv: unknown image format" in capsys.readouterr().err
    assert not (tmp_path / "f.nii.gz").exists()
    with pytest.raises(SystemExit):
        fibrosis_cli.main(base + ["--fibrosis", "0", "--dense", "1.3"])
    assert "0 < --fibrosis <= --dense, got 0.0 and 1.3" in capsys.readouterr().err


# --- from the mutation audit of the library: thresholds that meet, a threshold of zero ---

def test_equal_thresholds_make_every_fibrosis_voxel_dense_and_zero_is_refused():
    """0 < fibrosis <= dense: equal thresholds are allowed (no class 2 is left); zero or less is refused.
    The pool of 100 and the wall rows of 124, 125 and 150 give IIR 1.24, 1.25 and 1.5."""
    image, wall, cavity = _pool_of_100_and_wall_rows()
    result = fibrosis_burden(image, wall, cavity, (1.0, 1.0, 1.0), fibrosis=1.25, dense=1.25)
    np.testing.assert_array_equal(result.labels[1:6, 1:6, 6], np.array([1, 3, 3, 3, 3])[:, None].repeat(5, 1))
    assert all(isinstance(a, np.ndarray) for a in (result.iir, result.labels, result.sectors))  # numpy in, numpy out
    apart = fibrosis_burden(image, wall, cavity, (1.0, 1.0, 1.0), fibrosis=1.25, dense=1.5)
    assert (apart.fibrosis_percent, apart.dense_scar_percent) == (80.0, 40.0)  # 4 and 2 of the 5 rows
    for fibrosis in (0.0, -1.0):
        with pytest.raises(ValueError, match="thresholds must satisfy 0 < fibrosis <= dense"):
            fibrosis_burden(image, wall, cavity, (1.0, 1.0, 1.0), fibrosis=fibrosis, dense=1.3)
