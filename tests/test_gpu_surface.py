"""GPU surface metrics against the reference: distances, the radix-selection percentile, evaluate_batch.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (small shapes);
on a GPU the same tests run them compiled, on CUDA tensors.
"""
import math

import numpy as np
import pytest
import torch
from gpu import DEVICE, host, no_host_round_trips, on_device
from masks import TIE_CASES, anisotropic_spacing, blobs, percentile_tie_pair, perturbed, tie_pair

from c2w_fast import metrics
from c2w_fast.ops import surface_distances, surface_summary
from c2w_fast.ops._gpu_surface import SurfaceFields, _select, summaries, surface_fields
from c2w_fast.ops.surface import TOLERANCE

pytestmark = pytest.mark.gpu  # runs its kernels on a GPU when there is one


def close(ours, reference):
    np.testing.assert_allclose(np.asarray(ours, dtype=float), np.asarray(reference, dtype=float), **TOLERANCE)


@pytest.mark.parametrize("shape", [(5, 11, 9), (13, 17)])
def test_distances_element_by_element(shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    gt = blobs(rng, shape, 0.35)
    pred = perturbed(rng, gt)
    for convention in ("surfel", "voxel"):
        ours = surface_distances(on_device(pred), on_device(gt), spacing, convention=convention, backend="triton")
        reference = surface_distances(pred, gt, spacing, convention=convention, backend="reference")
        for name in ("pred_to_gt", "gt_to_pred"):
            close(host(getattr(ours, name)), host(getattr(reference, name)))
        for name in ("pred_areas", "gt_areas"):
            np.testing.assert_allclose(host(getattr(ours, name)), host(getattr(reference, name)), rtol=1e-12)


def test_distances_with_an_empty_mask(rng):
    some, empty = blobs(rng, (4, 6, 5), 0.3), np.zeros((4, 6, 5), bool)
    ours = surface_distances(on_device(empty), on_device(some), backend="triton")
    assert len(ours.pred_to_gt) == 0 and len(ours.gt_to_pred) > 0 and np.all(np.isposinf(host(ours.gt_to_pred)))
    both = surface_distances(on_device(empty), on_device(empty), backend="triton")
    assert all(len(getattr(both, name)) == 0 for name in ("pred_to_gt", "gt_to_pred", "pred_areas", "gt_areas"))


@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_summaries_at_every_percentile_and_rule(convention, rng):
    shape = (5, 12, 10)
    spacing = anisotropic_spacing(rng)
    gt = blobs(rng, shape, 0.35)
    pred = perturbed(rng, gt, flips=0.05)
    fields = surface_fields(on_device(pred)[None], on_device(gt)[None], spacing, convention)
    for rule in ("max", "pooled"):
        for percentile in (0.0, 50.0, 95.0, 100.0):
            kw = {"convention": convention, "tolerance_mm": 0.8, "percentile": percentile, "percentile_rule": rule}
            ours = host(summaries(fields, spacing, **kw))[0]
            close(ours, surface_summary(pred, gt, spacing, backend="reference", **kw))


def test_radix_selection_equals_sorting_with_ties_and_exact_targets(rng):
    # One item of scattered "surface elements" (codes 1..254) with tied squared distances,
    # weighed through a random table; targets include every partial sum exactly.
    shape = (1, 3, 9, 11)
    codes = np.where(rng.random(shape) < 0.8, rng.integers(1, 255, shape), 0).astype(np.uint8)
    squared = rng.choice(np.float32([0.0, 0.25, 1.0, 1.0000001, 2.5, 7.0, np.float32(1e6)]), shape).astype(np.float32)
    table = np.concatenate([[0.0], rng.integers(1, 4, 254).astype(np.float64), [0.0]])  # integer weights: exact sums
    box = torch.tensor([[0, 2, 0, 8, 0, 10]], dtype=torch.int32, device=DEVICE)
    fields = SurfaceFields(on_device(np.stack([codes[0], codes[0]])), on_device(np.stack([squared[0], squared[0]])),
                           box, on_device(table), 255)
    elements = codes[0] != 0
    values, weights = squared[0][elements], table[codes[0][elements]]
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    picks = rng.choice(len(cumulative), 10, replace=False)
    targets = np.concatenate([[0.0, 0.5, cumulative[-1], cumulative[-1] + 1], cumulative[picks], cumulative[picks] - 0.5])
    got, reached = _select(fields, on_device(np.tile(targets, (2, 1))), group_div=1)
    for target, value, weight in zip(targets, host(got)[0], host(reached)[0]):
        index = min(int(np.searchsorted(cumulative, target)), len(values) - 1)
        expected = values[order][index]
        assert value == expected, (target, value, expected)
        assert weight == weights[values <= expected].sum()


def test_evaluate_batch_equals_evaluate_on_each_pair_including_empty_masks(rng):
    shape, spacing = (4, 9, 8), anisotropic_spacing(rng)
    gt = blobs(rng, shape, 0.3)
    pred = perturbed(rng, gt)
    empty = np.zeros(shape, bool)
    pairs = [(pred, gt), (empty, gt), (gt, empty), (empty, empty), (gt, gt)]
    batch_pred = np.stack([p for p, _ in pairs])
    batch_gt = np.stack([g for _, g in pairs])
    for convention in ("surfel", "voxel"):
        ours = metrics.evaluate_batch(on_device(batch_pred), on_device(batch_gt), spacing, convention=convention,
                                      backend="triton")
        for result, (p, g) in zip(ours, pairs):
            expected = metrics.evaluate(p, g, spacing, convention=convention, backend="reference")
            assert list(result.as_dict()) == list(expected.as_dict())
            for value, reference in zip(result.as_dict().values(), expected.as_dict().values()):
                assert (math.isnan(value) and math.isnan(reference)) or value == pytest.approx(reference, rel=1e-6)


def test_evaluate_and_evaluate_labels_on_device_tensors(rng):
    shape, spacing = (13, 15), anisotropic_spacing(rng, 2)
    labels_gt = rng.integers(0, 3, shape) * blobs(rng, shape, 0.6)
    labels_pred = np.where(rng.random(shape) < 0.05, 0, labels_gt)
    named = {"one": 1, "two": 2, "both": [1, 2]}
    ours = metrics.evaluate_labels(on_device(labels_pred), on_device(labels_gt), named, spacing, backend="triton",
                                   percentile_rule="pooled")
    expected = metrics.evaluate_labels(labels_pred, labels_gt, named, spacing, backend="reference",
                                       percentile_rule="pooled")
    assert list(ours) == list(named)
    for name in named:
        close(list(ours[name].as_dict().values()), list(expected[name].as_dict().values()))
    single = metrics.evaluate(on_device(labels_pred == 1), on_device(labels_gt == 1), spacing, backend="triton")
    close(list(single.as_dict().values()), list(expected["one"].as_dict().values()))


def test_evaluate_batch_on_cpu_inputs_loops_over_the_cpu_backend(rng):
    shape = (3, 7, 6)
    pred, gt = blobs(rng, (2, *shape), 0.3), blobs(rng, (2, *shape), 0.3)
    ours = metrics.evaluate_batch(torch.from_numpy(pred), torch.from_numpy(gt), backend="auto")
    for result, p, g in zip(ours, pred, gt):
        assert result == metrics.evaluate(p, g, backend="cpu")
    assert metrics.evaluate_batch(np.zeros((0, *shape), bool), np.zeros((0, *shape), bool)) == []


def test_evaluate_batch_checks_its_arguments():
    with pytest.raises(ValueError, match=r"pred must be a batch of 2D or 3D masks.*got shape \(4, 5\)"):
        metrics.evaluate_batch(np.zeros((4, 5)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.evaluate_batch(np.zeros((2, 4, 5)), np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match=r"spacing must have 2 positive values \(y, x\)"):
        metrics.evaluate_batch(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm must be a finite number"):
        metrics.evaluate_batch(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)), tolerance_mm=-1)
    with pytest.raises(ValueError, match="percentile_rule must be one of"):
        metrics.evaluate_batch(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)), percentile_rule="mean")


@pytest.mark.parametrize("spacing, tolerance_mm, shift", TIE_CASES)
def test_distances_equal_to_the_tolerance_are_decided_as_by_the_reference(spacing, tolerance_mm, shift, rng):
    pred, gt = tie_pair(rng, shift)
    for convention in ("surfel", "voxel"):
        kw = {"convention": convention, "tolerance_mm": tolerance_mm}
        ours = surface_summary(on_device(pred), on_device(gt), spacing, backend="triton", **kw)
        reference = surface_summary(pred, gt, spacing, backend="reference", **kw)
        assert ours.surface_dice == pytest.approx(reference.surface_dice, rel=1e-12), convention


def test_an_exact_tie_of_the_weighted_percentile_is_reached():
    pred, gt = percentile_tie_pair()
    summary = surface_summary(on_device(pred), on_device(gt), (1.0, 1.0, 1.0), backend="triton")
    assert summary.hd_percentile == pytest.approx(10 ** 0.5)


def test_a_chunk_of_tiny_pairs_stays_within_the_launch_grid():
    """Two items per pair sit on the kernels' grid y axis, which CUDA caps at 65535."""
    from c2w_fast.ops._gpu_surface import _pairs_per_chunk

    assert 2 * _pairs_per_chunk((32, 32), "surfel") <= 65535
    assert _pairs_per_chunk((44, 640, 640), "surfel") >= 1


def test_device_work_never_waits_for_the_host(rng, monkeypatch):
    """evaluate_batch's queued part and the post-processing ops make no host sync (its one
    sync is reading the rows back; label_components returns a count)."""
    from c2w_fast.ops import (binary_dilation, distance_transform, keep_largest_component, remove_small_components,
                              signed_distance)
    from c2w_fast.ops._gpu_surface import evaluate_rows

    pred = on_device(np.stack([blobs(rng, (6, 12, 10), 0.3) for _ in range(2)]))
    gt = on_device(np.stack([blobs(rng, (6, 12, 10), 0.3) for _ in range(2)]))
    spacing = (2.5, 0.625, 0.625)
    work = [lambda c=c: evaluate_rows(pred, gt, spacing, tolerance_mm=1.0, convention=c, percentile=95.0,
                                      percentile_rule="max") for c in ("surfel", "voxel")]
    work += [lambda: keep_largest_component(pred[0], backend="triton"),
             lambda: remove_small_components(pred[0], 5, backend="triton"),
             lambda: distance_transform(pred[0], spacing, backend="triton"),
             lambda: signed_distance(pred[0], spacing, backend="triton"),
             lambda: binary_dilation(pred[0], 1.5, spacing=spacing, backend="triton")]
    for run in work:
        run()  # compiles and caches first
    with no_host_round_trips(monkeypatch):
        for run in work:
            run()


def test_pairs_with_an_empty_mask_get_no_distance_work_in_a_batch(rng, monkeypatch):
    """Their distances to nothing would search whole columns, and their rows follow the empty-mask rule."""
    from c2w_fast.ops import _gpu_surface
    from c2w_fast.ops._gpu_volume import EMPTY_BOX

    gt = blobs(rng, (4, 9, 8), 0.3)
    empty = np.zeros_like(gt)
    pred, target = on_device(np.stack([gt, empty, gt])), on_device(np.stack([gt, gt, empty]))
    made = []
    monkeypatch.setattr(_gpu_surface, "surface_fields",
                        lambda *args, **kwargs: made.append(surface_fields(*args, **kwargs)) or made[-1])
    _gpu_surface.evaluate_rows(pred, target, (1.0, 1.0, 1.0), tolerance_mm=1.0, convention="surfel",
                               percentile=95.0, percentile_rule="max")
    boxes = host(made[0].boxes)
    assert (boxes[0] != EMPTY_BOX).any() and (boxes[1:] == EMPTY_BOX).all()
    assert (host(surface_fields(pred, target, (1.0, 1.0, 1.0), "surfel").boxes) != EMPTY_BOX).any(axis=1).all()
