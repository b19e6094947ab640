"""Every GPU op against the CPU backend on full-size phantoms (needs a CUDA GPU; skipped without one).

Cases: the LA wall of an MBAS-geometry phantom (44x640x640 at 2.5x0.625x0.625 mm) and of an
isotropic one (88x640x640 at 0.625 mm); the prediction is the wall shifted by one voxel in y
and x with a ragged boundary; components and morphology run on the binary atria with specks.
"""
import math

import numpy as np
import pytest
import torch
from gpu import GPU_BACKENDS, host
from scipy import ndimage

from c2w_fast import metrics
from c2w_fast.data.phantom import GEOMETRIES, make_phantom
from c2w_fast.ops import (
    binary_dilation,
    binary_erosion,
    distance_transform,
    keep_largest_component,
    label_components,
    remove_small_components,
    signed_distance,
    surface_distances,
)
from c2w_fast.ops.distance_transform import TOLERANCE as EDT_TOLERANCE
from c2w_fast.ops.surface import TOLERANCE

pytestmark = pytest.mark.cuda

CASES = {"mbas_44x640x640": ((44, 640, 640), GEOMETRIES["mbas"][1]),
         "isotropic_88x640x640": ((88, 640, 640), (0.625, 0.625, 0.625))}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    """(pred wall, gt wall, atria with specks, spacing): numpy arrays and their CUDA copies."""
    shape, spacing = CASES[request.param]
    rng = np.random.default_rng(7)
    gt = make_phantom(shape, spacing, seed=3, label_right_atrium=False, noise=0).labels == 1
    pred = np.roll(gt, (1, -1), axis=(1, 2))
    band = ndimage.binary_dilation(pred) & ~ndimage.binary_erosion(pred)
    pred ^= band & (rng.random(shape) < 0.3)
    atria = (make_phantom(shape, spacing, seed=4, noise=0).labels > 0) | (rng.random(shape) < 2e-5)
    cuda = {name: torch.from_numpy(a).cuda() for name, a in (("pred", pred), ("gt", gt), ("atria", atria))}
    return {"pred": pred, "gt": gt, "atria": atria, "spacing": spacing, "cuda": cuda}


def same_metrics(ours, expected):
    for value, reference in zip(ours.as_dict().values(), expected.as_dict().values()):
        assert (math.isnan(value) and math.isnan(reference)) or value == pytest.approx(reference, rel=1e-6)


def test_evaluate_equals_the_cpu_backend(case):
    p, g, spacing = case["cuda"]["pred"], case["cuda"]["gt"], case["spacing"]
    for convention in ("surfel", "voxel"):
        for rule in ("max", "pooled"):
            kw = {"convention": convention, "percentile_rule": rule, "tolerance_mm": 1.0}
            same_metrics(metrics.evaluate(p, g, spacing, **kw),
                         metrics.evaluate(case["pred"], case["gt"], spacing, backend="cpu", **kw))


def test_evaluate_batch_equals_the_cpu_backend(case):
    p, g, spacing = case["cuda"]["pred"], case["cuda"]["gt"], case["spacing"]
    empty = torch.zeros_like(p)
    ours = metrics.evaluate_batch(torch.stack([p, g, empty]), torch.stack([g, p, g]), spacing)
    cpu = [(case["pred"], case["gt"]), (case["gt"], case["pred"]), (np.zeros_like(case["gt"]), case["gt"])]
    for result, (a, b) in zip(ours, cpu):
        same_metrics(result, metrics.evaluate(a, b, spacing, backend="cpu"))


def test_surface_distances_element_by_element(case):
    for convention in ("surfel", "voxel"):
        ours = surface_distances(case["cuda"]["pred"], case["cuda"]["gt"], case["spacing"], convention=convention)
        cpu = surface_distances(case["pred"], case["gt"], case["spacing"], convention=convention, backend="cpu")
        for name in ("pred_to_gt", "gt_to_pred", "pred_areas", "gt_areas"):
            np.testing.assert_allclose(host(getattr(ours, name)), getattr(cpu, name), **TOLERANCE, err_msg=name)


def test_distance_transforms_equal_the_cpu_backend(case):
    spacing = case["spacing"]
    for name, mask in (("gt", case["gt"]), ("background", ~case["gt"])):
        ours = distance_transform(torch.from_numpy(mask).cuda(), spacing)
        np.testing.assert_allclose(host(ours), distance_transform(mask, spacing, backend="cpu"), **EDT_TOLERANCE,
                                   err_msg=name)
    np.testing.assert_allclose(host(signed_distance(case["cuda"]["atria"], spacing)),
                               signed_distance(case["atria"], spacing, backend="cpu"), **EDT_TOLERANCE)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_components_equal_the_cpu_backend(backend, case):
    atria, cuda = case["atria"], case["cuda"]["atria"]
    for connectivity in (6, 26):
        labels, count = label_components(cuda, connectivity, backend=backend)
        expected, expected_count = label_components(atria, connectivity, backend="cpu")
        assert count == expected_count
        np.testing.assert_array_equal(host(labels), expected)
    np.testing.assert_array_equal(host(keep_largest_component(cuda, backend=backend)),
                                  keep_largest_component(atria, backend="cpu"))
    np.testing.assert_array_equal(host(remove_small_components(cuda, 50, 18, backend=backend)),
                                  remove_small_components(atria, 50, 18, backend="cpu"))


def test_dilation_and_erosion_equal_the_cpu_backend(case):
    atria, cuda, spacing = case["atria"], case["cuda"]["atria"], case["spacing"]
    for radius, sp in ((2, None), (2.0, spacing), (3.5, spacing)):
        np.testing.assert_array_equal(host(binary_dilation(cuda, radius, spacing=sp)),
                                      binary_dilation(atria, radius, spacing=sp, backend="cpu"))
        np.testing.assert_array_equal(host(binary_erosion(cuda, radius, spacing=sp)),
                                      binary_erosion(atria, radius, spacing=sp, backend="cpu"))


def test_cupy_arrays_are_evaluated_zero_copy_as_the_cpu_backend_does(case):
    """CuPy masks and label maps are viewed through DLPack (no copy) and give the CPU backend's numbers."""
    cupy = pytest.importorskip("cupy")
    from c2w_fast.ops._arrays import as_tensor

    p, g = cupy.asarray(case["pred"]), cupy.asarray(case["gt"])
    assert as_tensor(p).data_ptr() == p.data.ptr
    same_metrics(metrics.evaluate(p, g, case["spacing"]),
                 metrics.evaluate(case["pred"], case["gt"], case["spacing"], backend="cpu"))
    pred_labels = case["gt"].astype(np.int16) + 2 * case["pred"].astype(np.int16)  # 1 gt only, 2 pred only, 3 both
    gt_labels = case["gt"].astype(np.int16) + 2 * case["atria"].astype(np.int16)
    classes = {"one or three": [1, 3], "two or three": [2, 3], "three": 3}
    ours = metrics.evaluate_labels(cupy.asarray(pred_labels), cupy.asarray(gt_labels), classes, case["spacing"])
    cpu = metrics.evaluate_labels(pred_labels, gt_labels, classes, case["spacing"], backend="cpu")
    assert list(ours) == list(cpu) == list(classes)
    for name in classes:
        same_metrics(ours[name], cpu[name])
