"""c2w_fast.metrics on hand-computed cases, every input kind, label maps and bad input."""
import math
import warnings

import numpy as np
import pytest
import torch
from masks import anisotropic_spacing, blobs, perturbed

from c2w_fast import metrics, ops

BACKENDS = ["reference", "cpu"]


def two_voxels(shape=(3, 4, 9), gap=3):
    pred, gt = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[1, 2, 2] = True
    gt[1, 2, 2 + gap] = True
    return pred, gt


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_single_voxels_by_hand(backend):
    # Voxels 3 steps apart along x (0.75 mm): the 8 corners of each cube are its surfels,
    # all of the same area; half of them lie 2 steps from the other cube's nearest corners,
    # half 3 steps. Voxel centres are 3 steps apart.
    pred, gt = two_voxels()
    spacing, step = (2.5, 1.25, 0.75), 0.75
    surfel = metrics.evaluate(pred, gt, spacing, tolerance_mm=2 * step, backend=backend)
    assert surfel.dice == 0
    assert surfel.hd == pytest.approx(3 * step)
    assert surfel.hd95 == pytest.approx(3 * step)  # 95 % of the area needs the far half too
    assert surfel.assd == pytest.approx(2.5 * step)
    assert surfel.surface_dice == pytest.approx(0.5)
    voxel = metrics.evaluate(pred, gt, spacing, tolerance_mm=2 * step, convention="voxel", backend=backend)
    assert (voxel.hd, voxel.hd95, voxel.assd, voxel.surface_dice) == pytest.approx((3 * step,) * 3 + (0.0,))
    d = metrics.surface_distances(pred, gt, spacing, backend=backend)
    corner_area = np.linalg.norm([1.25 * 0.75, 2.5 * 0.75, 2.5 * 1.25]) / 8
    np.testing.assert_allclose(np.sort(d.pred_to_gt), [2 * step] * 4 + [3 * step] * 4)
    np.testing.assert_allclose(d.gt_areas, [corner_area] * 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_inside_box_by_hand(backend):
    # gt: 5x5x5 box; pred: the same box shrunk by one voxel on the +x face only.
    gt = np.zeros((7, 7, 7), bool)
    gt[1:6, 1:6, 1:6] = True
    pred = gt.copy()
    pred[:, :, 5] = False
    r = metrics.evaluate(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=0.5, convention="voxel", backend=backend)
    assert r.dice == pytest.approx(2 * 100 / (100 + 125))
    # gt boundary voxels: 125 - 27 interior = 98; those on x = 5 (25) are 1 away from pred's,
    # the rest are pred boundary voxels too (0). pred (5x5x4) boundary voxels: 100 - 18 = 82,
    # all on gt's boundary except the 3x3 inner ones of x = 4, 1 away from gt's x = 5 face.
    assert r.hd == pytest.approx(1.0)
    assert r.assd == pytest.approx((25 + 9) / (98 + 82))
    assert r.surface_dice == pytest.approx((98 - 25 + 82 - 9) / (98 + 82))


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_masks_are_perfect(backend, rng):
    mask = blobs(rng, (6, 11, 9), 0.3)
    for convention in ("surfel", "voxel"):
        r = metrics.evaluate(mask, mask, anisotropic_spacing(rng), convention=convention, backend=backend)
        assert (r.dice, r.hd, r.hd95, r.assd, r.surface_dice) == (1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_kinds_and_layouts_agree(backend, rng):
    gt = blobs(rng, (7, 10, 12), 0.3)
    pred = perturbed(rng, gt)
    spacing = anisotropic_spacing(rng)
    expected = metrics.evaluate(pred, gt, spacing, backend=backend)
    fortran = np.asfortranarray(pred.astype(np.uint8))
    assert metrics.evaluate(fortran, gt.astype(np.float32), spacing, backend=backend) == expected
    assert metrics.evaluate(torch.from_numpy(pred), torch.from_numpy(gt).int(), spacing, backend=backend) == expected
    # a transposed view with the spacing transposed alike gives the same numbers
    t = (2, 0, 1)
    view = metrics.evaluate(pred.transpose(t), gt.transpose(t), tuple(spacing[i] for i in t), backend=backend)
    for name in ("dice", "hd", "hd95", "assd", "surface_dice"):
        assert getattr(view, name) == pytest.approx(getattr(expected, name), rel=1e-9)


def test_single_metric_functions_equal_evaluate(rng):
    gt = blobs(rng, (5, 9, 8), 0.4)
    pred = perturbed(rng, gt)
    spacing = anisotropic_spacing(rng)
    r = metrics.evaluate(pred, gt, spacing, tolerance_mm=0.8)
    assert metrics.dice(pred, gt) == r.dice
    assert metrics.hd(pred, gt, spacing) == r.hd
    assert metrics.hd95(pred, gt, spacing) == r.hd95
    assert metrics.assd(pred, gt, spacing) == r.assd
    assert metrics.surface_dice(pred, gt, spacing, tolerance_mm=0.8) == r.surface_dice
    assert r.as_dict() == {"dice": r.dice, "hd": r.hd, "hd95": r.hd95, "assd": r.assd, "surface_dice": r.surface_dice}


def test_the_single_metric_functions_pass_the_convention_on():
    """A 3x3x3 cube and the same cube with its centre voxel removed. Voxel convention: both have
    the same 26 boundary voxels, so every distance is 0. Surfel convention: the hole's 8 corners
    are surface of the hollow cube too, 1 step from the cube's outer surface."""
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    hollow = cube.copy()
    hollow[2, 2, 2] = False
    assert metrics.hd(hollow, cube, convention="voxel") == 0.0 and metrics.hd(hollow, cube) == 1.0
    assert metrics.assd(hollow, cube, convention="voxel") == 0.0 and metrics.assd(hollow, cube) > 0.0
    assert metrics.surface_dice(hollow, cube, tolerance_mm=0.5, convention="voxel") == 1.0
    assert metrics.surface_dice(hollow, cube, tolerance_mm=0.5) < 1.0


def test_evaluate_labels_per_label_and_unions(rng):
    shape, spacing = (6, 12, 10), anisotropic_spacing(rng)
    gt = rng.integers(0, 4, shape).astype(np.uint8) * blobs(rng, shape, 0.5)
    pred = np.where(perturbed(rng, gt > 0), gt, 0).astype(np.uint8)
    out = metrics.evaluate_labels(pred, gt, {"wall": 1, "LA": 3, "atria": [1, 2, 3]}, spacing)
    assert list(out) == ["wall", "LA", "atria"]
    assert out["wall"] == metrics.evaluate(pred == 1, gt == 1, spacing)
    assert out["atria"] == metrics.evaluate(pred > 0, gt > 0, spacing)
    by_value = metrics.evaluate_labels(torch.from_numpy(pred), torch.from_numpy(gt), [2], spacing, convention="voxel")
    assert by_value["2"] == metrics.evaluate(pred == 2, gt == 2, spacing, convention="voxel")


def test_dice_empty_rules():
    empty, one = np.zeros((3, 3), bool), np.eye(3, dtype=bool)
    assert math.isnan(metrics.dice(empty, empty))
    assert metrics.dice(empty, one) == 0 and metrics.dice(one, empty) == 0
    assert math.isnan(metrics.dice(one, empty, convention="voxel"))  # MONAI ignores an empty gt
    assert metrics.dice(empty, one, convention="voxel") == 0


def test_bad_input_is_named():
    mask = np.ones((4, 5, 6), bool)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 5, 6\) and \(4, 5\)"):
        metrics.evaluate(mask, mask[..., 0])
    with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm"):
        metrics.evaluate(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing must have 2 positive values"):
        metrics.hd95(mask[0], mask[0], (1.0, 0.0))
    with pytest.raises(ValueError, match="convention must be one of"):
        metrics.evaluate(mask, mask, convention="medpy")
    with pytest.raises(ValueError, match="percentile_rule must be one of"):
        metrics.hd95(mask, mask, percentile_rule="mean")
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number"):
        metrics.surface_dice(mask, mask, tolerance_mm=-1)
    with pytest.raises(ValueError, match="pred must be 2D or 3D"):
        metrics.evaluate(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(1, 4, 5, 6\) \(drop the leading axis: gt\[0\]\)"):
        metrics.evaluate(mask, mask[None])
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate(np.full((2, 2), np.nan), np.ones((2, 2)))
    probabilities = np.where(np.arange(mask.size).reshape(mask.shape) % 2, 0.9, 0.02)  # nonzero: all foreground
    for pred in (probabilities, torch.from_numpy(probabilities).float(), torch.from_numpy(probabilities).half()):
        with pytest.raises(ValueError, match=r"pred holds fractional values \(e.g. 0.02\d*\).*threshold it first"):
            metrics.evaluate(pred, mask, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"gt holds fractional values \(e.g. 0.5\)"):
        metrics.dice(mask, mask * 0.5)
    assert metrics.dice(mask * 3.0, mask) == 1.0  # whole numbers: nonzero is foreground
    with pytest.raises(TypeError, match="integer label map"):
        metrics.evaluate_labels(mask.astype(float), mask.astype(float), [1])
    with pytest.raises(ValueError, match="label 'wall' must map to an int"):
        metrics.evaluate_labels(mask.astype(np.uint8), mask.astype(np.uint8), {"wall": 1.5})
    with pytest.raises(ValueError, match=r"label '2.5' must map .*, got 2.5 \(is it the spacing\? it comes after"):
        metrics.evaluate_labels(mask.astype(np.uint8), mask.astype(np.uint8), (2.5, 0.625, 0.625))
    with pytest.raises(ValueError, match="labels name '1' twice"):
        metrics.evaluate_labels(mask.astype(np.uint8), mask.astype(np.uint8), [1, 1])
    with pytest.raises(ValueError, match="2D .* or 3D .* label maps, got shape \\(600,\\)"):
        metrics.evaluate_labels(np.ones(600, np.uint8), np.ones(600, np.uint8), [1])
    with pytest.raises(ValueError, match="spacing must have 3 positive values"):
        metrics.evaluate(mask, mask, "125")
    with pytest.raises(ValueError, match=r"outside \[1e-06, 1e\+06\] mm"):
        metrics.evaluate(mask, mask, (2e19, 1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm and percentile must be numbers, got None"):
        metrics.surface_dice(mask, mask, tolerance_mm=None)
    for tolerance in (np.inf, np.nan):
        with pytest.raises(ValueError, match="tolerance_mm must be a finite number"):
            metrics.evaluate(mask, mask, tolerance_mm=tolerance)
    with pytest.raises(ValueError, match="convention must be one of"):
        metrics.surface_distances(mask, mask, convention="medpy")


def test_complex_masks_are_refused_for_numpy_and_torch_alike():
    mask = np.ones((4, 5, 6), np.complex64)
    for pred in (mask, torch.from_numpy(mask)):
        with pytest.raises(TypeError, match="pred must be a boolean or numeric mask, got dtype (torch.)?complex64"):
            metrics.evaluate(pred, mask.real)
    with pytest.raises(TypeError, match="gt must be a boolean or numeric mask"):
        metrics.evaluate_batch(mask.real[None], torch.from_numpy(mask)[None])
    with pytest.raises(TypeError, match="mask must be a boolean or numeric mask, got dtype torch.complex64"):
        ops.binary_dilation(torch.from_numpy(mask), 1.0)  # the ops share the check (as_mask)


def test_bad_labels_and_batches_are_named():
    maps = np.ones((4, 5, 6), np.uint8)
    with pytest.raises(ValueError, match="labels must name at least one label"):
        metrics.evaluate_labels(maps, maps, [])
    with pytest.raises(ValueError, match=r"label 'wall' must map to an int or a list of ints, got \[\]"):
        metrics.evaluate_labels(maps, maps, {"wall": []})
    with pytest.raises(ValueError, match="labels name '1' twice"):
        metrics.evaluate_labels(maps, maps, {1: 1, "1": 2})  # names are strings: 1 and "1" are one name
    assert list(metrics.evaluate_labels(maps, maps, {1: 1})) == ["1"]
    with pytest.raises(ValueError, match=r"same shape, got \(4, 5, 6\) and \(4, 5, 5\)"):
        metrics.evaluate_labels(maps, maps[..., :5], [1])  # the maps' shapes, not the label stacks'
    batch = np.ones((2, 4, 5, 6), bool)
    with pytest.raises(ValueError, match=r"same shape, got \(2, 4, 5, 6\) and \(3, 4, 5, 6\)"):
        metrics.evaluate_batch(batch, np.ones((3, 4, 5, 6), bool))  # no pairs dropped silently
    with pytest.raises(ValueError, match=r"pred must be a batch of 2D or 3D masks.*got shape \(2, 6\)"):
        metrics.evaluate_batch(batch[:, 0, 0], batch[:, 0, 0])


def test_surface_summary_defaults_are_the_metrics_defaults(rng):
    """surface_summary's documented defaults (surfel, 1 mm, 95th percentile, max) are what evaluate asks for."""
    gt = blobs(rng, (6, 11, 10), 0.4)
    pred = perturbed(rng, gt, 0.1)
    spacing = (1.5, 0.6, 0.7)
    r = metrics.evaluate(pred, gt, spacing)
    ours = ops.surface_summary(pred, gt, spacing)
    assert (ours.hd, ours.hd_percentile, ours.assd, ours.surface_dice) == (r.hd, r.hd95, r.assd, r.surface_dice)
    other = ops.surface_summary(pred, gt, spacing, tolerance_mm=2.0, percentile=90.0)
    assert other.hd_percentile != r.hd95 and other.surface_dice != r.surface_dice  # else this tests nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_tolerance_counts_the_coinciding_surface_only(backend):
    """Tolerance 0 is allowed: the surface elements at distance 0 of the other surface."""
    pred, gt = two_voxels(gap=1)  # face neighbours: they share one face (4 of each cube's 8 corners)
    for convention, shared in (("surfel", 0.5), ("voxel", 0.0)):  # voxel centres are 1 step apart
        r = metrics.evaluate(pred, gt, (1.0, 1.0, 1.0), tolerance_mm=0.0, convention=convention, backend=backend)
        assert r.surface_dice == pytest.approx(shared)
        assert metrics.surface_dice(gt, gt, tolerance_mm=0.0, convention=convention, backend=backend) == 1.0


def test_empty_batch_still_checks_its_options():
    empty = np.zeros((0, 4, 5, 6), bool)
    assert metrics.evaluate_batch(empty, empty) == []
    with pytest.raises(ValueError, match="convention must be one of"):
        metrics.evaluate_batch(empty, empty, convention="medpy")
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number"):
        metrics.evaluate_batch(empty, empty, tolerance_mm=-1)
    with pytest.raises(ValueError, match="percentile_rule must be one of"):
        metrics.evaluate_batch(empty, empty, percentile_rule="mean")


def test_overlap_is_the_covered_fraction_of_the_ground_truth():
    gt = np.zeros((4, 5, 6), bool)
    gt[1:3, 1:4, 1:5] = True                     # 24 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 1:4, 1:3] = True                   # covers 12 of them
    pred[0] = True                               # and 30 outside, which overlap does not count
    assert metrics.overlap(pred, gt) == 0.5 == metrics.overlap(torch.from_numpy(pred), gt)
    assert math.isnan(metrics.overlap(pred, np.zeros_like(gt)))


def test_mixed_kinds_and_every_integer_label_dtype(rng):
    shape, spacing = (5, 9, 8), anisotropic_spacing(rng)
    gt = (rng.integers(0, 3, shape) * blobs(rng, shape, 0.5)).astype(np.uint8)
    pred = np.where(perturbed(rng, gt > 0), gt, 0).astype(np.uint8)
    expected = metrics.evaluate(pred == 1, gt == 1, spacing)
    assert metrics.evaluate(pred == 1, torch.from_numpy(gt == 1), spacing) == expected  # numpy with torch
    assert metrics.evaluate_batch((pred == 1)[None], torch.from_numpy(gt == 1)[None], spacing)[0] == expected
    for dtype in (torch.uint8, torch.int16, torch.uint16, torch.int64):
        out = metrics.evaluate_labels(torch.from_numpy(pred).to(dtype), gt, {"one": 1, "absent": 300}, spacing)
        assert out["one"] == expected and math.isnan(out["absent"].dice)
    wraps = torch.from_numpy(np.where(pred == 1, 44, pred))  # 300 wraps to 44 in uint8; -1 to 255
    out = metrics.evaluate_labels(wraps, wraps, {"300": 300, "-1": -1}, spacing)
    assert math.isnan(out["300"].dice) and math.isnan(out["-1"].dice)
    as_bool = metrics.evaluate_labels(torch.from_numpy(pred == 1), torch.from_numpy(gt == 1), [1], spacing)
    assert as_bool["1"] == expected


def test_evaluate_makes_no_full_volume_temporaries():
    """On a 44x640x640 pair only crop-sized arrays are allocated (numpy side, traced)."""
    import tracemalloc

    gt = np.zeros((44, 640, 640), bool)
    gt[10:30, 200:300, 250:380] = True
    gt[15:25, 220:280, 270:360] = False
    pred = np.roll(gt, 2, axis=2)
    metrics.evaluate(pred, gt, (2.5, 0.625, 0.625))  # first call builds the surfel table
    tracemalloc.start()
    metrics.evaluate(pred, gt, (2.5, 0.625, 0.625))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < gt.nbytes / 8  # a full-volume float64 array would be 64x this bound


def test_numpy_label_values_the_dtype_cannot_hold_match_nothing(rng):
    shape, spacing = (5, 9, 8), anisotropic_spacing(rng)
    gt = (rng.integers(0, 3, shape) * blobs(rng, shape, 0.5)).astype(np.uint8)
    out = metrics.evaluate_labels(gt, gt, {"300": 300, "-1": -1, "one": [1, 300]}, spacing)
    assert math.isnan(out["300"].dice) and math.isnan(out["-1"].dice)
    assert out["one"] == metrics.evaluate(gt == 1, gt == 1, spacing)
    as_bool = metrics.evaluate_labels(gt == 1, gt == 1, {"1": 1, "huge": 2**64}, spacing)
    assert as_bool["1"] == out["one"] and math.isnan(as_bool["huge"].dice)


def _wall_pair(shape):
    gt = np.zeros(shape, bool)
    gt[5:15, 40:90, 50:120] = True
    gt[7:13, 50:80, 60:110] = False
    return np.roll(gt, 2, axis=2), gt


def test_torch_counts_make_no_full_volume_temporaries():
    """Counting a torch mask converts nothing to int64 (``sum`` did: 8 bytes a voxel), and the
    counts run in the crop."""
    from torch.profiler import ProfilerActivity, profile

    pred, gt = (torch.from_numpy(m) for m in _wall_pair((20, 160, 160)))
    for run in (metrics.dice, metrics.overlap, metrics.evaluate):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(pred, gt)
        assert max(event.cpu_memory_usage for event in prof.events()) < gt.numel() / 8


def test_evaluate_labels_allocates_the_label_stacks_once():
    """The per-label masks are filled into one (labels, z, y, x) stack per map, not stacked from copies."""
    import tracemalloc

    pred, gt = (np.where(m, 3, 0).astype(np.uint8) for m in _wall_pair((20, 160, 160)))
    labels = (1, 2, 3)
    metrics.evaluate_labels(pred, gt, labels)
    tracemalloc.start()
    metrics.evaluate_labels(pred, gt, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2.5 * len(labels) * gt.size  # both stacks and a crop; a list plus a stack made it 3x


# --- from a user's walkthrough of the Python API: argument types, ragged batches, byte order, huge tolerances ---

def _cube():
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 2:5, 2:5] = True
    return mask


def test_an_unknown_backend_is_refused_for_empty_masks_too():
    gt = _cube()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.surface_summary(np.zeros_like(gt), gt, backend="gpu")


@pytest.mark.parametrize("options", [dict(tolerance_mm="1.0"), dict(tolerance_mm=True), dict(spacing=(True,) * 3),
                                     dict(spacing=("2.5", "0.625", "0.625"))])
def test_numbers_given_as_bools_or_strings_are_refused(options):
    with pytest.raises(ValueError, match="must be numbers|must have 3 positive values"):
        metrics.evaluate(_cube(), _cube(), **options)


def test_numpy_and_tensor_scalars_are_numbers():
    gt = _cube()
    expected = metrics.evaluate(gt, gt, spacing=(2.5, 1.0, 1.0), tolerance_mm=1.0)
    assert metrics.evaluate(gt, gt, spacing=np.array([2.5, 1, 1]), tolerance_mm=np.float32(1.0)) == expected
    assert metrics.evaluate(gt, gt, spacing=(torch.tensor(2.5), 1, 1), tolerance_mm=torch.tensor(1.0)) == expected


def test_a_ragged_batch_names_the_argument():
    gt = _cube()
    with pytest.raises(ValueError, match="^pred cannot be read as one array .*a batch holds masks of one shape$"):
        metrics.evaluate_batch([gt, gt[:-1]], [gt, gt[:-1]])


def test_a_big_endian_label_map_pairs_with_a_tensor(rng):
    labels = rng.integers(0, 3, (10, 12, 14)).astype(np.int32)
    truth = torch.from_numpy(rng.integers(0, 3, (10, 12, 14)).astype(np.int32))
    native = metrics.evaluate_labels(labels, truth, [1, 2])
    assert metrics.evaluate_labels(labels.astype(">i4"), truth, [1, 2]) == native


def test_a_huge_tolerance_raises_no_numpy_warning():
    gt = _cube()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.evaluate(gt, gt, tolerance_mm=1e200).surface_dice == 1.0
