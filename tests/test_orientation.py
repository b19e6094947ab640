"""Voxel orientation: every arrangement of a scan's axes comes back to the canonical one with each
voxel at its world position, and predictions go back to the file's exactly."""
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from nibabel.orientations import aff2axcodes

from c2w_fast.data.io import Volume, affine_from_spacing, read_volume, write_volume
from c2w_fast.data.layouts import discover_cases, load_case
from c2w_fast.data.orientation import CANONICAL, Reorientation, check_same_arrangement
from c2w_fast.data.phantom import write_dataset
from training_helpers import stored_as

ARRANGEMENTS = [(order, flips) for order in itertools.permutations(range(3))
                for flips in itertools.product((False, True), repeat=3)]


def _tilted(degrees: float) -> np.ndarray:
    """Directions of the canonical axes (z→S, y→A, x→R) turned about A by ``degrees``: an oblique scan."""
    angle = np.deg2rad(degrees)
    turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return turn @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("order,flips", ARRANGEMENTS)
def test_every_arrangement_comes_back_canonical_with_every_voxel_in_place(order, flips, rng):
    canonical = rng.random((3, 4, 5))
    affine = affine_from_spacing((2.5, 0.7, 1.3), origin=(4.0, -9.0, 30.0), direction=_tilted(17.0))
    stored, stored_affine = stored_as(canonical, affine, order, flips)
    reorientation = Reorientation.of(stored_affine)
    assert reorientation.source_codes == "".join(aff2axcodes(stored_affine))
    assert np.array_equal(reorientation.apply(stored), canonical)
    np.testing.assert_allclose(reorientation.affine(stored_affine, stored.shape), affine, atol=1e-9)
    assert reorientation.spacing(Volume(stored, stored_affine).spacing) == pytest.approx((2.5, 0.7, 1.3))
    assert reorientation.is_identity == (order == (0, 1, 2) and not any(flips))
    labels = torch.from_numpy(stored).expand(2, *stored.shape)  # leading axes ride along, tensors as arrays
    assert torch.equal(reorientation.apply(labels), torch.from_numpy(canonical).expand(2, *canonical.shape))
    assert np.array_equal(reorientation.undo(canonical), stored)
    assert torch.equal(reorientation.undo(torch.from_numpy(canonical)), torch.from_numpy(stored))


def test_the_canonical_arrangement_is_left_alone():
    x = np.zeros((2, 3, 4))
    identity = Reorientation.of(affine_from_spacing((1.0, 1.0, 1.0)))
    assert identity.source_codes == CANONICAL and identity.apply(x) is x and identity.undo(x) is x
    volume = Volume(x, affine_from_spacing((1.0, 1.0, 1.0)))
    assert identity.volume(volume) is volume


@pytest.mark.parametrize("layout", ["lasc", "mbas"])
def test_a_case_stored_sagittally_loads_as_the_axial_one(layout, tmp_path):
    """The same phantom written axially and sagittally (NRRD in LPS, or NIfTI) is one case to training:
    the same image and labels, labelled or not, on the same canonical grid, with its voxel size along the
    canonical axes (unequal on each axis, so that a size left in file order shows)."""
    write_dataset(tmp_path / "axial", layout, 1, shape=(20, 40, 36), spacing=(2.5, 2.0, 1.8), progress=False)
    case = discover_cases(tmp_path / "axial")[0]
    assert case.spacing == pytest.approx((2.5, 2.0, 1.8))
    axial = load_case(case)
    for path in (case.image_path, *case.label_paths.values()):
        volume = read_volume(path)
        array, affine = stored_as(volume.array, volume.affine, (2, 0, 1), (True, False, True))
        write_volume(tmp_path / "sagittal" / path.relative_to(tmp_path / "axial"), array, affine)
    moved = discover_cases(tmp_path / "sagittal")[0]
    assert read_volume(moved.image_path).shape == (36, 20, 40)
    assert moved.spacing == pytest.approx(case.spacing)
    for loaded in (load_case(moved), load_case(replace(moved, label_paths={}))):
        assert np.array_equal(loaded.image.array, axial.image.array)
        np.testing.assert_allclose(loaded.image.affine, axial.image.affine, atol=1e-4)
        assert loaded.image.header is None  # a NIfTI header describes the file's arrangement, not this one
    assert np.array_equal(load_case(moved).labels, axial.labels)


def test_a_helper_trained_on_another_arrangement_is_named():
    check_same_arrangement(CANONICAL, CANONICAL, "roi.localizer", "this run")
    with pytest.raises(ValueError, match=r"roi.localizer was trained on volumes in each file's own voxel order.*"
                                         r"this run on volumes in the canonical voxel arrangement \(SAR\); retrain"):
        check_same_arrangement(None, CANONICAL, "roi.localizer", "this run")
