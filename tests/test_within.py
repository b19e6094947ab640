"""The Surface Dice decision at the tolerance (c2w_fast.ops._within), against its definition."""
import numpy as np

from c2w_fast.ops._within import BAND, decision_threshold, float32_threshold


def test_the_voxel_rule_is_a_float32_comparison(rng):
    tolerances = rng.uniform(0.01, 20, 200)
    for t in np.concatenate([tolerances, [0.3, 1.2, 3.3, 0.0]]):
        threshold = decision_threshold(float(t), "voxel")
        near = t + np.linspace(-4, 4, 81) * np.spacing(np.float32(t))  # across several float32 steps
        np.testing.assert_array_equal(near <= threshold, near.astype(np.float32) <= np.float32(t))


def test_the_surfel_rule_is_a_float64_comparison():
    assert decision_threshold(0.3, "surfel") == 0.3


def test_the_float32_threshold_separates_the_grid_distances_as_the_rule_does(rng):
    for _ in range(50):
        spacing = tuple(rng.choice([0.1, 0.3, 0.625, 0.7, 1.1, float(np.float32(1.2)), 2.5], 3))
        k = rng.integers(0, 4, 3)
        tolerance = float(np.round(np.sqrt(((k * spacing) ** 2).sum()), 6))  # a decimal near a grid distance
        for convention in ("surfel", "voxel"):
            rule = decision_threshold(tolerance, convention)
            threshold = float32_threshold(tolerance, spacing, convention)
            offsets = np.stack(np.meshgrid(*(np.arange(8),) * 3, indexing="ij")).reshape(3, -1).T
            terms = (offsets * spacing) ** 2
            exact = np.sqrt((terms[:, 0] + terms[:, 1]) + terms[:, 2])  # scipy's order
            float32 = np.sqrt(terms.astype(np.float32).sum(axis=1).astype(np.float64))  # a few ulps off
            np.testing.assert_array_equal(float32 <= threshold, exact <= rule)
            assert abs(threshold - rule) <= BAND * rule


def test_too_many_offsets_to_list_fall_back_to_the_rule():
    assert float32_threshold(1000.0, (1e-3, 1e-3, 1e-3), "surfel") == 1000.0
