"""c2w_fast.metrics against the tools people use: DeepMind surface-distance (surfel),
MONAI (voxel) and medpy (voxel, pooled percentile), on random anisotropic masks."""
import warnings

import numpy as np
import pytest
import torch
from masks import TIE_CASES, anisotropic_spacing, blobs, perturbed, tie_pair

from c2w_fast import metrics

surface_distance = pytest.importorskip("surface_distance")
monai_metrics = pytest.importorskip("monai.metrics")
medpy_binary = pytest.importorskip("medpy.metric.binary")

BACKENDS = ["reference", "cpu"]
RTOL = 1e-6
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(autouse=True)
def numpy_aliases_for_surface_distance(monkeypatch):
    """surface-distance 0.1 predates numpy 2 and still spells np.Inf / np.NaN."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    monkeypatch.setattr(np, "NaN", np.nan, raising=False)


def deepmind(pred, gt, spacing, tolerance_mm):
    d = surface_distance.compute_surface_distances(gt, pred, spacing)
    areas = d["surfel_areas_gt"].sum() + d["surfel_areas_pred"].sum()
    weighted = (d["distances_gt_to_pred"] @ d["surfel_areas_gt"] + d["distances_pred_to_gt"] @ d["surfel_areas_pred"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"dice": surface_distance.compute_dice_coefficient(gt, pred),
                "hd": surface_distance.compute_robust_hausdorff(d, 100),
                "hd95": surface_distance.compute_robust_hausdorff(d, 95),
                "assd": weighted / areas,
                "surface_dice": surface_distance.compute_surface_dice_at_tolerance(d, tolerance_mm)}


def monai(pred, gt, spacing, tolerance_mm):
    p = torch.from_numpy(pred)[None, None].float()
    g = torch.from_numpy(gt)[None, None].float()
    kw = {"include_background": True, "spacing": spacing}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI warns about empty masks
        return _monai(p, g, kw, tolerance_mm)


def _monai(p, g, kw, tolerance_mm):
    hd95 = monai_metrics.compute_hausdorff_distance(p, g, percentile=95, **kw).item()
    return {"dice": monai_metrics.compute_dice(p, g, include_background=True).item(),
            "hd": monai_metrics.compute_hausdorff_distance(p, g, **kw).item(),
            "hd95": _monai_hd95_in_float64(p, g, kw["spacing"], hd95),
            "assd": monai_metrics.compute_average_surface_distance(p, g, symmetric=True, **kw).item(),
            "surface_dice": monai_metrics.compute_surface_dice(p, g, [tolerance_mm], **kw).item()}


def _monai_hd95_in_float64(p, g, spacing, hd95_float32):
    """MONAI's hd95 from MONAI's own surface distances, with the quantile taken in float64.

    ``compute_hausdorff_distance`` runs ``torch.quantile`` in float32, whose interpolation
    position ``0.95 (n - 1)`` is rounded to float32: its result is off by up to about
    ``n * 6e-8`` of the gap between the two neighbouring distances (seen: 2e-6 relative).
    The end-to-end value is still checked, at the tolerance that rounding allows.
    """
    _, distances, _ = monai_metrics.utils.get_edge_surface_distance(p[0, 0], g[0, 0], spacing=spacing, symmetric=True)
    if any(len(d) == 0 or not torch.isfinite(d).all() for d in distances):
        return hd95_float32  # empty masks: the values of the rule, no rounding involved
    exact = max(torch.quantile(d.double(), 0.95).item() for d in distances)
    n = max(len(d) for d in distances)
    np.testing.assert_allclose(hd95_float32, exact, rtol=n * 1.2e-7 + 1e-6)
    return exact


def assert_metrics(ours, peer, rtol=RTOL):
    for name, expected in peer.items():
        np.testing.assert_allclose(getattr(ours, name), expected, rtol=rtol, atol=1e-12, err_msg=name)


def random_pair(rng, shape, fill):
    gt = blobs(rng, shape, fill)
    return perturbed(rng, gt), gt


SHAPES = [(9, 14, 17), (5, 21, 11), (1, 13, 15), (23, 19)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_matches_the_peer_on_random_anisotropic_blobs(backend, shape, convention, rng):
    """surfel = surface-distance, voxel = MONAI."""
    spacing = anisotropic_spacing(rng, len(shape))
    peer = deepmind if convention == "surfel" else monai
    for fill in (0.15, 0.5):
        pred, gt = random_pair(rng, shape, fill)
        tolerance = float(rng.uniform(0.5, 2.0))
        ours = metrics.evaluate(pred, gt, spacing, tolerance_mm=tolerance, convention=convention, backend=backend)
        assert_metrics(ours, peer(pred, gt, spacing, tolerance))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_isotropic_spacing_with_many_tied_distances(backend, convention, rng):
    peer = deepmind if convention == "surfel" else monai
    for shape in [(8, 15, 13), (27, 22)]:
        pred, gt = random_pair(rng, shape, 0.3)
        ours = metrics.evaluate(pred, gt, (1.0,) * len(shape), tolerance_mm=1.0, convention=convention, backend=backend)
        assert_metrics(ours, peer(pred, gt, (1.0,) * len(shape), 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pooled_surfel_percentile_is_surface_distance_rule_on_both_directions(backend, rng):
    shape, spacing = (8, 13, 12), anisotropic_spacing(rng)
    pred, gt = random_pair(rng, shape, 0.3)
    d = surface_distance.compute_surface_distances(gt, pred, spacing)
    distances = np.concatenate([d["distances_gt_to_pred"], d["distances_pred_to_gt"]])
    areas = np.concatenate([d["surfel_areas_gt"], d["surfel_areas_pred"]])
    order = np.lexsort((areas, distances))
    pooled = {"distances_gt_to_pred": distances[order], "surfel_areas_gt": areas[order],
              "distances_pred_to_gt": distances[order], "surfel_areas_pred": areas[order]}
    ours = metrics.hd95(pred, gt, spacing, percentile_rule="pooled", backend=backend)
    np.testing.assert_allclose(ours, surface_distance.compute_robust_hausdorff(pooled, 95), rtol=RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(9, 14, 17), (23, 19)])
def test_pooled_percentile_matches_medpy(backend, shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    pred, gt = random_pair(rng, shape, 0.3)
    ours = metrics.evaluate(pred, gt, spacing, convention="voxel", percentile_rule="pooled", backend=backend)
    np.testing.assert_allclose(ours.hd95, medpy_binary.hd95(pred, gt, spacing), rtol=RTOL)
    np.testing.assert_allclose(ours.hd, medpy_binary.hd(pred, gt, spacing), rtol=RTOL)
    np.testing.assert_allclose(ours.assd, medpy_binary.assd(pred, gt, spacing), rtol=RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_single_voxels_and_border_objects(backend, convention, rng):
    shape = (6, 9, 8)
    spacing = anisotropic_spacing(rng)
    peer = deepmind if convention == "surfel" else monai
    single_pred, single_gt = np.zeros(shape, bool), np.zeros(shape, bool)
    single_pred[tuple(rng.integers(0, shape))] = True
    single_gt[tuple(rng.integers(0, shape))] = True
    border = np.zeros(shape, bool)
    border[:, :3, -2:] = True  # touches three faces of the array
    for pred, gt in [(single_pred, single_gt), (border, single_gt), (np.ones(shape, bool), border)]:
        ours = metrics.evaluate(pred, gt, spacing, tolerance_mm=1.0, convention=convention, backend=backend)
        assert_metrics(ours, peer(pred, gt, spacing, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_empty_masks_return_the_peer_values(backend, convention, rng):
    shape = (5, 7, 6)
    spacing = anisotropic_spacing(rng)
    empty, some = np.zeros(shape, bool), blobs(rng, shape, 0.3)
    peer = deepmind if convention == "surfel" else monai
    for pred, gt in [(empty, some), (some, empty), (empty, empty)]:
        expected = peer(pred, gt, spacing, 1.0)
        ours = metrics.evaluate(pred, gt, spacing, convention=convention, backend=backend)
        assert_metrics(ours, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_surface_distances_match_surface_distance_as_sets(backend, rng):
    shape, spacing = (7, 12, 10), anisotropic_spacing(rng)
    pred, gt = random_pair(rng, shape, 0.3)
    ours = metrics.surface_distances(pred, gt, spacing, backend=backend)
    peer = surface_distance.compute_surface_distances(gt, pred, spacing)
    pairs = [(ours.pred_to_gt, ours.pred_areas, "distances_pred_to_gt", "surfel_areas_pred"),
             (ours.gt_to_pred, ours.gt_areas, "distances_gt_to_pred", "surfel_areas_gt")]
    for dist, area, peer_dist, peer_area in pairs:
        order = np.lexsort((area, dist))
        np.testing.assert_allclose(dist[order], peer[peer_dist], rtol=RTOL)
        np.testing.assert_allclose(area[order], peer[peer_area], rtol=1e-12)


@pytest.fixture(scope="module")
def mbas_wall_pair():
    """The LA wall of a 44x640x640 phantom at 2.5x0.625x0.625 mm and a shifted, ragged copy."""
    from scipy import ndimage

    from c2w_fast.data.phantom import make_phantom

    spacing = (2.5, 0.625, 0.625)
    gt = make_phantom((44, 640, 640), spacing, seed=3, label_right_atrium=False, noise=0).labels == 1
    rng = np.random.default_rng(0)
    pred = np.roll(gt, (1, -1), axis=(1, 2))
    band = ndimage.binary_dilation(pred) & ~ndimage.binary_erosion(pred)
    return pred ^ (band & (rng.random(pred.shape) < 0.3)), gt, spacing


@pytest.mark.slow
@pytest.mark.parametrize("convention", ["surfel", "voxel"])
def test_full_size_mbas_wall_matches_the_peer(convention, mbas_wall_pair):
    pred, gt, spacing = mbas_wall_pair
    ours = metrics.evaluate(pred, gt, spacing, tolerance_mm=1.0, convention=convention)
    assert_metrics(ours, (deepmind if convention == "surfel" else monai)(pred, gt, spacing, 1.0))


@pytest.mark.parametrize("spacing, tolerance_mm, shift", TIE_CASES)
def test_distances_equal_to_the_tolerance_are_decided_as_the_peers_decide(spacing, tolerance_mm, shift, rng):
    """surface-distance decides in float64, MONAI in float32; each convention follows its peer."""
    pred, gt = tie_pair(rng, shift)
    peers = {"surfel": deepmind, "voxel": monai}
    if len(shift) == 2:
        peers.pop("voxel")  # this MONAI comparison is 3D (the helper adds batch and channel axes only)
    for convention, peer in peers.items():
        below, above = (peer(pred, gt, spacing, tolerance_mm * f)["surface_dice"] for f in (1 - 1e-6, 1 + 1e-6))
        assert below < above, "not a tie: the case would test nothing"
        expected = peer(pred, gt, spacing, tolerance_mm)["surface_dice"]
        for backend in BACKENDS:
            ours = metrics.evaluate(pred, gt, spacing, tolerance_mm=tolerance_mm, convention=convention,
                                    backend=backend)
            assert ours.surface_dice == pytest.approx(expected, rel=1e-6), (convention, backend)
