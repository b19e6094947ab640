"""The Surface Dice decision at the tolerance (c2w_fast.ops._within), against its definition."""
import numpy as np

from c2w_fast.ops._within import BAND, decision_threshold, within_rule


def test_the_voxel_rule_is_a_float32_comparison(rng):
    tolerances = rng.uniform(0.01, 20, 200)
    for t in np.concatenate([tolerances, [0.3, 1.2, 3.3, 0.0]]):
        threshold = decision_threshold(float(t), "voxel")
        near = t + np.linspace(-4, 4, 81) * np.spacing(np.float32(t))  # across several float32 steps
        np.testing.assert_array_equal(near <= threshold, near.astype(np.float32) <= np.float32(t))


def test_the_surfel_rule_is_a_float64_comparison():
    assert decision_threshold(0.3, "surfel") == 0.3


def fast_decision(rule, float32_distance, offset):
    """A fast backend's decision for one element whose only partner element lies at ``offset``."""
    if float32_distance <= rule.lower:
        return True
    return float32_distance <= rule.upper and any((row == offset).all() for row in rule.offsets)


def test_a_float32_distance_and_the_offset_decide_as_the_rule_does(rng):
    """Every offset of a 15^3 grid (-7..7 steps), its distance summed in float32 (a few ulps off, as on the fast
    backends) and the rule's lookup of the offset, against the exact float64 distance and the rule."""
    offsets = np.stack(np.meshgrid(*(np.arange(-7, 8),) * 3, indexing="ij")).reshape(3, -1).T
    for _ in range(40):
        spacing = tuple(float(s) for s in rng.choice([0.1, 0.2, 0.3, 0.4, 0.625, 0.7, 1.1, 1.2, 2.5], 3))
        k = rng.integers(0, 4, 3)
        tolerance = float(np.round(np.sqrt(((k * spacing) ** 2).sum()), 6))  # a decimal near a grid distance
        terms = (offsets * spacing) ** 2
        exact = np.sqrt((terms[:, 0] + terms[:, 1]) + terms[:, 2])  # scipy's order
        float32 = np.sqrt(terms.astype(np.float32).sum(axis=1).astype(np.float64))
        for convention in ("surfel", "voxel"):
            rule, threshold = within_rule(tolerance, spacing, convention), decision_threshold(tolerance, convention)
            decided = [fast_decision(rule, d, offset) for d, offset in zip(float32, offsets)]
            np.testing.assert_array_equal(decided, exact <= threshold, err_msg=f"{spacing} {tolerance} {convention}")
            assert rule.lower < threshold < rule.upper <= rule.lower + 1.01 * BAND * threshold


def test_equal_grid_distances_on_both_sides_of_the_tolerance_are_told_apart():
    """One 1.2 mm step is within 1.2 mm, three 0.4 mm steps (1.2000000000000002 mm) are not: the rule
    keeps the first offset with every sign, and float32 distances land both in its band."""
    rule = within_rule(1.2, (1.2, 0.4, 0.4), "surfel")
    assert sorted(map(tuple, rule.offsets.tolist())) == [(-1, 0, 0), (1, 0, 0)]
    for steps in ([1, 0, 0], [0, 3, 0]):
        squared = ((np.array(steps) * np.float32([1.2, 0.4, 0.4])) ** 2).sum(dtype=np.float32)
        assert rule.lower < np.sqrt(np.float64(squared)) <= rule.upper
    two_d = within_rule(0.6, (0.2, 0.6), "surfel")
    assert sorted(map(tuple, two_d.offsets.tolist())) == [(0, 0, -1), (0, 0, 1)]


def test_too_many_offsets_to_list_fall_back_to_the_threshold():
    rule = within_rule(1000.0, (1e-3, 1e-3, 1e-3), "surfel")
    assert rule.lower == rule.upper == 1000.0 and rule.offsets.shape == (0, 3)
