"""Fast surface backends against the reference, element by element, on a realistic wall phantom."""
import numpy as np
import pytest
from masks import TIE_CASES, anisotropic_spacing, blobs, percentile_tie_pair, perturbed, tie_pair
from scipy import ndimage

from c2w_fast.data.phantom import make_phantom
from c2w_fast.ops import surface_distances, surface_summary
from c2w_fast.ops.surface import TOLERANCE, weighted_percentile

FAST_BACKENDS = ["cpu"]


def assert_same_distances(ours, reference):
    for name in ("pred_to_gt", "gt_to_pred"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name), **TOLERANCE, err_msg=name)
    for name in ("pred_areas", "gt_areas"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name), rtol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def wall_pair():
    """The LA wall of a small phantom and a prediction shifted by one voxel with a ragged boundary."""
    phantom = make_phantom((20, 112, 112), (2.5, 1.25, 1.25), seed=5, label_right_atrium=False, noise=0)
    gt = phantom.labels == 1
    rng = np.random.default_rng(0)
    pred = np.roll(gt, (0, 1, -1), axis=(0, 1, 2))
    band = ndimage.binary_dilation(pred) & ~ndimage.binary_erosion(pred)
    return pred ^ (band & (rng.random(pred.shape) < 0.3)), gt, phantom.spacing


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_phantom_wall_distances_and_summaries_equal_the_reference(backend, convention, wall_pair):
    pred, gt, spacing = wall_pair
    reference = surface_distances(pred, gt, spacing, convention=convention, backend="reference")
    assert len(reference.pred_to_gt) > 2000  # large enough for the threaded paths
    assert_same_distances(surface_distances(pred, gt, spacing, convention=convention, backend=backend), reference)
    for rule in ("max", "pooled"):
        kw = {"convention": convention, "tolerance_mm": 1.25, "percentile": 95.0, "percentile_rule": rule}
        ours = surface_summary(pred, gt, spacing, backend=backend, **kw)
        np.testing.assert_allclose(ours, surface_summary(pred, gt, spacing, backend="reference", **kw), **TOLERANCE)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("shape", [(6, 11, 9), (1, 12, 10), (13, 17)])
def test_random_pairs_element_by_element_at_every_percentile(backend, shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    gt = blobs(rng, shape, 0.4)
    pred = perturbed(rng, gt)
    for convention in ("surfel", "voxel"):
        reference = surface_distances(pred, gt, spacing, convention=convention, backend="reference")
        assert_same_distances(surface_distances(pred, gt, spacing, convention=convention, backend=backend), reference)
        for percentile in (0.0, 50.0, 95.0, 99.0, 100.0):
            kw = {"convention": convention, "percentile": percentile, "tolerance_mm": 0.7}
            np.testing.assert_allclose(surface_summary(pred, gt, spacing, backend=backend, **kw),
                                       surface_summary(pred, gt, spacing, backend="reference", **kw), **TOLERANCE)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_one_or_both_empty_masks(backend, rng):
    shape, spacing = (5, 8, 7), anisotropic_spacing(rng)
    empty, some = np.zeros(shape, bool), blobs(rng, shape, 0.3)
    for pred, gt in [(empty, some), (some, empty), (empty, empty)]:
        for convention in ("surfel", "voxel"):
            ours = surface_distances(pred, gt, spacing, convention=convention, backend=backend)
            reference = surface_distances(pred, gt, spacing, convention=convention, backend="reference")
            assert_same_distances(ours, reference)
    d = surface_distances(empty, some, spacing, backend=backend)
    assert len(d.pred_to_gt) == 0 and np.all(np.isposinf(d.gt_to_pred))


def test_summary_arguments_are_checked():
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\]"):
        surface_summary(mask, mask, percentile=101)
    with pytest.warns(UserWarning, match=r"percentile is in percent \(95 for HD95\): 0.95 asks for the 0.95th") as caught:
        surface_summary(mask, mask, percentile=0.95)
    assert caught[0].filename == __file__  # the caller's line


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("spacing, tolerance_mm, shift", TIE_CASES)
def test_distances_equal_to_the_tolerance_are_decided_as_by_the_reference(backend, spacing, tolerance_mm, shift, rng):
    """Squared distances in float32 are a few ulps off; the decision at the tolerance must not be."""
    pred, gt = tie_pair(rng, shift)
    for convention in ("surfel", "voxel"):
        kw = {"convention": convention, "tolerance_mm": tolerance_mm}
        ours = surface_summary(pred, gt, spacing, backend=backend, **kw)
        reference = surface_summary(pred, gt, spacing, backend="reference", **kw)
        assert ours.surface_dice == pytest.approx(reference.surface_dice, rel=1e-12), convention


def test_weighted_percentile_is_deepminds_first_index_reaching_the_fraction():
    """surface-distance's compute_robust_hausdorff: searchsorted(cumulative / total, q / 100) with
    side="left": with 20 equal weights 95 % is reached exactly at the 19th smallest distance."""
    distances = np.arange(20, 0, -1, dtype=np.float64)  # 20, 19, ..., 1: sorted by the function
    assert weighted_percentile(distances, np.ones(20), 95.0) == 19.0
    assert weighted_percentile(distances, np.ones(20), 50.0) == 10.0
    assert weighted_percentile(distances, np.ones(20), 100.0) == 20.0
    # by hand: distances 1, 2, 3 with weights 1, 3, 1 have cumulative fractions 0.2, 0.8, 1.0
    assert weighted_percentile(np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 3.0]), 80.0) == 2.0
    assert weighted_percentile(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 1.0]), 80.1) == 3.0


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_an_exact_tie_of_the_weighted_percentile_is_reached_on_every_backend(backend):
    pred, gt = percentile_tie_pair()
    assert surface_summary(pred, gt, (1.0, 1.0, 1.0), backend=backend).hd_percentile == pytest.approx(10 ** 0.5)
