"""Patch sampling policies: centre, random, foreground probability, class weights (MBAS B.1)."""
import numpy as np
import pytest

from c2w_fast.data.sampling import MAX_LOCATIONS, SamplingPolicy, class_locations


def _target(rng):
    target = np.zeros((12, 40, 40), np.uint8)
    target[5:7, 10:12, 10:12] = 1   # small class 1 (wall)
    target[2:4, 30:34, 30:34] = 2   # class 2 (RA)
    target[8:10, 20:30, 2:6] = 3    # class 3 (LA)
    return target


def test_class_locations_are_voxels_of_their_class_and_capped(rng):
    target = _target(rng)
    locations = class_locations(target, 4, rng)
    for c, points in locations.items():
        assert len(points) == np.count_nonzero(target == c)
        assert (target[tuple(points.T)] == c).all()
    big = np.ones((30, 30, 30), np.uint8)
    assert len(class_locations(big, 2, rng)[1]) == MAX_LOCATIONS


def test_random_centres_keep_the_patch_inside(rng):
    policy = SamplingPolicy("random")
    for _ in range(200):
        c = policy.centre((12, 40, 40), (8, 16, 50), {}, rng)
        assert 4 <= c[0] <= 12 - 4 and 8 <= c[1] <= 40 - 8 and c[2] == 20  # x: patch larger than volume
    assert SamplingPolicy("center").centre((12, 40, 41), (8, 8, 8), {}, rng) == (6, 20, 20)


def test_foreground_probability_is_respected(rng):
    target = _target(rng)
    locations = class_locations(target, 4, rng)
    policy = SamplingPolicy("foreground", foreground_prob=0.25)
    n = 4000
    hits = sum(target[policy.centre(target.shape, (4, 8, 8), locations, rng)] > 0 for _ in range(n))
    random_rate = np.count_nonzero(target) / target.size  # random centres land on foreground this often
    expected = 0.25 + 0.75 * random_rate
    assert abs(hits / n - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_class_weights_wall_half_ra_and_la_a_quarter(rng):
    target = _target(rng)
    locations = class_locations(target, 4, rng)
    policy = SamplingPolicy("classes", class_weights={1: 0.5, 2: 0.25, 3: 0.25})
    n = 4000
    counts = np.bincount([target[policy.centre(target.shape, (4, 8, 8), locations, rng)] for _ in range(n)],
                         minlength=4)
    assert counts[0] == 0
    for c, p in ((1, 0.5), (2, 0.25), (3, 0.25)):
        assert abs(counts[c] / n - p) < 4 * np.sqrt(p * (1 - p) / n)
    # a class missing from the case: the others share its weight
    locations[1] = locations[1][:0]
    picks = [target[policy.centre(target.shape, (4, 8, 8), locations, rng)] for _ in range(1000)]
    assert set(picks) == {2, 3}


@pytest.mark.parametrize("kind", ["foreground", "classes"])
def test_no_foreground_falls_back_to_random(kind, rng):
    policy = SamplingPolicy(kind, foreground_prob=1.0, class_weights={1: 1.0})
    c = policy.centre((10, 20, 20), (4, 4, 4), {1: np.zeros((0, 3), np.int32)}, rng)
    assert 2 <= c[0] <= 8


def test_random_centres_reach_every_position_that_keeps_the_patch_inside(rng):
    policy = SamplingPolicy("random")
    seen = {policy.centre((12, 20, 9), (8, 7, 9), {}, rng) for _ in range(600)}
    # z: 8 = 4 + 4 voxels around the centre -> 4..8; y: 7 = 3 before, 4 after -> 3..16; x: fills the axis
    assert {c[0] for c in seen} == set(range(4, 9)) and {c[1] for c in seen} == set(range(3, 17))
    assert {c[2] for c in seen} == {4}


def test_classes_outside_the_weights_are_never_drawn(rng):
    target = _target(rng)
    locations = class_locations(target, 4, rng)
    policy = SamplingPolicy("classes", class_weights={1: 1.0, 2: 0.0})
    assert {target[policy.centre(target.shape, (4, 8, 8), locations, rng)] for _ in range(200)} == {1}
    locations[1] = locations[1][:0]  # only classes without weight left: a random centre, no error
    for _ in range(50):
        policy.centre(target.shape, (4, 8, 8), locations, rng)


def test_capped_locations_are_distinct_voxels(rng):
    """Above MAX_LOCATIONS voxels the stored ones are drawn without replacement: no voxel twice."""
    points = class_locations(np.ones((30, 30, 30), np.uint8), 2, rng)[1]
    assert len(np.unique(points, axis=0)) == MAX_LOCATIONS
