"""Atrial wall regions: the LA cavity taken outside the wall, the LA centroid, the grid's affine, the label
options, and masks read from label files (nonzero defaults, the wall left out of the cavity, the LA and the
chambers of a cavity with or without the LA code)."""
import numpy as np
import pytest

from c2w_fast.data.io import affine_from_spacing, write_volume
from c2w_fast.errors import DataError
from c2w_fast.regions import atrial_masks, la_centroid, parse_values, read_wall_masks


def slab_masks():
    """A wall slab one voxel thick on x = 1, next to a cavity block on x = 2..5."""
    wall = np.zeros((5, 6, 8), bool)
    wall[:, :, 1] = True
    cavity = np.zeros_like(wall)
    cavity[:, :, 2:6] = True
    return wall, cavity


def test_the_la_cavity_is_taken_inside_the_cavity_and_outside_the_wall():
    wall, cavity = slab_masks()
    la = np.zeros_like(wall)
    la[:, :, 0:4] = True  # a column outside, the wall's column and two cavity columns
    masks = atrial_masks(wall, cavity, (1.0, 1.0, 1.0), la_cavity=la)
    np.testing.assert_array_equal(masks.la_cavity.numpy(), la & cavity & ~wall)
    outside = np.zeros_like(wall)
    outside[:, :, :2] = True  # outside and wall only
    with pytest.raises(ValueError, match=r"the LA cavity is empty \(outside the wall\)"):
        atrial_masks(wall, cavity, (1.0, 1.0, 1.0), la_cavity=outside)


def test_the_grid_is_a_finite_4x4_affine_whose_columns_give_the_spacing():
    wall, cavity = slab_masks()
    flat, shifted = np.eye(4), np.eye(4)
    flat[:3, 2] = flat[:3, 1]
    shifted[0, 3] = np.nan
    for affine, message in ((np.eye(3), r"affine must be a 4 x 4 matrix, got shape \(3, 3\)"),
                            (np.zeros((4, 4)), r"the affine's voxel size must have 3 positive values"),
                            (np.where(np.eye(4) > 0, np.nan, 0.0), "affine must be finite, but holds NaN or inf"),
                            (shifted, "affine must be finite, but holds NaN or inf"),
                            (flat, r"the affine's voxel axes are parallel")):
        with pytest.raises(ValueError, match=message):
            atrial_masks(wall, cavity, affine=affine)
    assert atrial_masks(wall, cavity, affine=affine_from_spacing((2.0, 1.0, 0.5))).spacing == (2.0, 1.0, 0.5)


def test_the_la_centroid_is_the_mean_voxel_position_of_a_non_empty_mask():
    la = np.zeros((4, 5, 6), bool)
    la[1, 2, 3] = la[3, 4, 1] = True
    np.testing.assert_allclose(la_centroid(la), [2.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="the LA cavity is empty: no centroid"):
        la_centroid(np.zeros((4, 5, 6), bool))


def test_label_options_are_comma_separated_integers():
    assert parse_values(None, "--wall-label") is None
    assert parse_values("2,3", "--cavity-label") == (2, 3)
    assert parse_values(" 2, 3 ,", "--cavity-label") == (2, 3)  # spaces and a trailing comma name no value
    with pytest.raises(ValueError, match="--wall-label must be comma-separated integers such as 2,3, got '1;2'"):
        parse_values("1;2", "--wall-label")
    for empty in ("", ",", " , "):
        with pytest.raises(ValueError, match="--cavity-label must name at least one label value"):
            parse_values(empty, "--cavity-label")


def test_two_files_read_with_the_defaults_take_every_nonzero_value_and_leave_the_wall_out_of_the_cavity(tmp_path):
    """No label values given: any nonzero voxel (a 0/255 file, or -1 in a signed one) is wall or cavity;
    cavity voxels that are also wall are wall; a cavity file within the wall leaves no cavity."""
    affine = affine_from_spacing((2.0, 1.0, 1.0))
    wall = np.zeros((5, 6, 9), np.uint8)
    wall[:, :, 3:5] = 255
    cavity = np.zeros((5, 6, 9), np.int16)
    cavity[:, :, :4] = -1  # overlaps the wall on x = 3
    write_volume(tmp_path / "wall.nii.gz", wall, affine)
    write_volume(tmp_path / "cavity.nii.gz", cavity, affine)
    masks = read_wall_masks(tmp_path / "wall.nii.gz", tmp_path / "cavity.nii.gz")
    np.testing.assert_array_equal(masks.wall, wall > 0)
    np.testing.assert_array_equal(masks.cavity, (cavity != 0) & (wall == 0))
    np.testing.assert_array_equal(masks.la_cavity, masks.cavity)
    write_volume(tmp_path / "inside.nii.gz", (wall > 0).astype(np.int16) * 5, affine)
    with pytest.raises(DataError, match="no cavity voxels outside the wall"):
        read_wall_masks(tmp_path / "wall.nii.gz", tmp_path / "inside.nii.gz")


def test_a_cavity_without_the_la_code_is_the_la_and_one_chamber(tmp_path):
    """One label map: wall 1, cavity parts 2 and 4, and an LA 3 that the chosen cavity values 2,4 leave
    out: the whole cavity is the LA and one chamber (the module docstring's "else"). With 2,3,4 the LA is
    the 3s, and the RA 2 is one chamber and the rest (3 and 4) the other."""
    labels = np.zeros((6, 7, 14), np.uint8)
    labels[1:5, 1:6, 1:13] = 1
    labels[2:4, 2:5, 2:5] = 2
    labels[2:4, 2:5, 6:8] = 4
    labels[2:4, 2:5, 9:12] = 3
    path = tmp_path / "labels.nii.gz"
    write_volume(path, labels, affine_from_spacing((1.0, 1.0, 1.0)))
    masks = read_wall_masks(path, path, (1,), (2, 4), chambers=True)
    cavity = np.isin(labels, (2, 4))
    np.testing.assert_array_equal(masks.cavity, cavity)
    np.testing.assert_array_equal(masks.la_cavity, cavity)
    np.testing.assert_array_equal(masks.chambers, cavity.astype(np.uint8))
    masks = read_wall_masks(path, path, (1,), (2, 3, 4), chambers=True)
    np.testing.assert_array_equal(masks.la_cavity, labels == 3)
    np.testing.assert_array_equal(masks.chambers, np.select([labels == 2, np.isin(labels, (3, 4))], [2, 1], 0))


def test_a_label_map_of_both_masks_given_as_the_wall_file_is_named_as_the_cause(tmp_path):
    """--wall LABELS.nii.gz --cavity LA.nii.gz: every nonzero voxel of the label map (wall 1 and LA 3) is
    wall, so no cavity is left; the error says so and how to name the wall's code."""
    affine = affine_from_spacing((1.0, 1.0, 1.0))
    labels = np.zeros((4, 5, 9), np.uint8)
    labels[:, :, 1] = 1
    labels[:, :, 2:6] = 3
    write_volume(tmp_path / "labels.nii.gz", labels, affine)
    write_volume(tmp_path / "la.nii.gz", (labels == 3).astype(np.uint8), affine)
    with pytest.raises(DataError, match=r"no cavity voxels outside the wall \(values nonzero\); every nonzero voxel "
                                        r"of labels.nii.gz counts as wall, and it holds the codes 1, 3: is it a "
                                        r"label map of both masks\? name the wall's code with --wall-label"):
        read_wall_masks(tmp_path / "labels.nii.gz", tmp_path / "la.nii.gz")
    masks = read_wall_masks(tmp_path / "labels.nii.gz", tmp_path / "la.nii.gz", wall_values=(1,))
    np.testing.assert_array_equal(masks.cavity, labels == 3)


def test_an_image_given_as_a_label_file_read_as_nonzero_is_refused_and_many_codes_are_abbreviated(tmp_path):
    """--cavity IMAGE (or --wall IMAGE) with no label values: its nonzero voxels would be nearly the whole
    volume, so it is refused as an image, naming the option; with its codes named it is read. A wall map
    of many codes is listed in the hint by its first eight and a count."""
    affine = affine_from_spacing((1.0, 1.0, 1.0))
    wall, cavity = slab_masks()
    image = np.arange(wall.size, dtype=np.int16).reshape(wall.shape)  # 240 distinct whole values
    write_volume(tmp_path / "wall.nii.gz", wall.astype(np.uint8), affine)
    write_volume(tmp_path / "image.nii.gz", image, affine)
    for wall_file, cavity_file, option in (("wall", "image", "--cavity"), ("image", "wall", "--wall")):
        with pytest.raises(DataError, match=rf"image.nii.gz: holds 240 distinct values in a sample of its voxels, "
                                            rf"from 0 to 239: an image, not a label map\? give {option} the "
                                            "segmentation$"):
            read_wall_masks(tmp_path / f"{wall_file}.nii.gz", tmp_path / f"{cavity_file}.nii.gz")
    cavity_codes = tuple(int(v) for v in image[cavity])
    masks = read_wall_masks(tmp_path / "wall.nii.gz", tmp_path / "image.nii.gz", cavity_values=cavity_codes)
    np.testing.assert_array_equal(masks.cavity, cavity)
    codes = np.where(wall | cavity, np.arange(wall.size).reshape(wall.shape) % 20 + 1, 0).astype(np.uint8)
    write_volume(tmp_path / "codes.nii.gz", codes, affine)
    write_volume(tmp_path / "cavity.nii.gz", cavity.astype(np.uint8), affine)
    with pytest.raises(DataError, match=r"it holds the codes 1, 2, 3, 4, 5, 6, 7, 8, \.\.\. \(20 codes\): is it"):
        read_wall_masks(tmp_path / "codes.nii.gz", tmp_path / "cavity.nii.gz")


def test_a_cli_report_ends_quietly_when_its_reader_closed_the_pipe(tmp_path, monkeypatch):
    """``python -m c2w_fast.thickness ... | head -1``: the outputs are written; no BrokenPipeError traceback."""
    import io
    import os
    import sys

    from c2w_fast import regions

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return handle.fileno()

    with open(tmp_path / "stdout", "w") as handle:
        monkeypatch.setattr(sys, "stdout", ClosedPipe())
        assert regions.report([{"region": "wall"}], str) == 0
        monkeypatch.undo()
        os.write(handle.fileno(), b"after")  # the pipe's descriptor now leads to /dev/null: no error at exit
    assert (tmp_path / "stdout").read_bytes() == b""


@pytest.mark.parametrize("tool", ["thickness", "fibrosis"])
def test_ctrl_c_ends_a_cli_with_one_line(tool, tmp_path, capsys, monkeypatch):
    import importlib

    module = importlib.import_module(f"c2w_fast.{tool}")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "masks_from_arguments", interrupted)
    image = ["--image", str(tmp_path / "image.nii.gz")] if tool == "fibrosis" else []
    assert module.main([*image, "--wall", str(tmp_path / "l.nii.gz"), "--cavity", str(tmp_path / "l.nii.gz"),
                        "--out", str(tmp_path / "out.nii.gz")]) == 130
    assert capsys.readouterr().err == ("\ninterrupted: each output is written whole or not at all; run the command "
                                       "again for all of them\n")
