"""label_components, keep_largest_component, remove_small_components: every backend against scipy."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from c2w_fast.ops import keep_largest_component, label_components, remove_small_components

BACKENDS = ["reference", "cpu"]
RANK = {6: 1, 18: 2, 26: 3, 4: 1, 8: 2}


def scipy_label(mask, connectivity):
    return ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, RANK[connectivity]))


def sparse(rng, shape, density=0.3):
    return rng.random(shape) < density


CASES = [((9, 14, 13), 6), ((9, 14, 13), 18), ((9, 14, 13), 26), ((1, 31, 7), 26), ((25, 23), 4), ((25, 23), 8)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,connectivity", CASES)
def test_labels_equal_scipy_including_numbering(backend, shape, connectivity, rng):
    for density in (0.15, 0.3, 0.6):
        mask = sparse(rng, shape, density)
        labels, count = label_components(mask, connectivity, backend=backend)
        expected, expected_count = scipy_label(mask, connectivity)
        assert labels.dtype == np.int32 and count == expected_count
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,connectivity", CASES)
def test_keep_largest_and_remove_small_equal_scipy(backend, shape, connectivity, rng):
    mask = sparse(rng, shape, 0.25)
    expected, count = scipy_label(mask, connectivity)
    sizes = np.bincount(expected.ravel())
    largest = expected == 1 + int(np.argmax(sizes[1:]))
    np.testing.assert_array_equal(keep_largest_component(mask, connectivity, backend=backend), largest)
    threshold = int(np.median(sizes[1:])) + 1
    kept = np.isin(expected, np.flatnonzero(sizes >= threshold)) & mask
    np.testing.assert_array_equal(remove_small_components(mask, threshold, connectivity, backend=backend), kept)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    empty = np.zeros((4, 5, 6), bool)
    labels, count = label_components(empty, backend=backend)
    assert count == 0 and not labels.any()
    assert not keep_largest_component(empty, backend=backend).any()
    full = ~empty
    labels, count = label_components(full, 6, backend=backend)
    assert count == 1 and np.all(labels == 1)
    # two components of equal size: the first in raster order wins
    tie = empty.copy()
    tie[0, 0, 0] = tie[3, 4, 5] = True
    first = np.zeros_like(tie)
    first[0, 0, 0] = True
    np.testing.assert_array_equal(keep_largest_component(tie, backend=backend), first)
    # diagonal neighbours: one component at 26, two at 18 and 6
    diagonal = empty.copy()
    diagonal[1, 1, 1] = diagonal[2, 2, 2] = True
    assert [label_components(diagonal, c, backend=backend)[1] for c in (6, 18, 26)] == [2, 2, 1]
    edge = empty.copy()
    edge[1, 1, 1] = edge[1, 2, 2] = True
    assert [label_components(edge, c, backend=backend)[1] for c in (6, 18, 26)] == [2, 1, 1]
    np.testing.assert_array_equal(remove_small_components(edge, 0, 6, backend=backend), edge)
    np.testing.assert_array_equal(remove_small_components(edge, 2, 6, backend=backend), empty)



@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_connectivities_mean_their_2d_counterparts(backend, rng):
    """In 2D, 6 means 4 and 18 and 26 mean 8 (26, the default, joins diagonal neighbours)."""
    diagonal = np.eye(4, 5, dtype=bool)  # 4 voxels touching at corners only
    expected = {6: 4, 18: 1, 26: 1}
    assert {c: label_components(diagonal, c, backend=backend)[1] for c in expected} == expected
    assert label_components(diagonal, backend=backend)[1] == 1
    mask = sparse(rng, (11, 13), 0.4)
    for connectivity, planar in ((6, 4), (18, 8), (26, 8)):
        labels, count = label_components(mask, connectivity, backend=backend)
        expected_labels, expected_count = scipy_label(mask, planar)
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected_labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_op_defaults_to_26_connectivity(backend):
    """A chain of 4 voxels touching at corners (one component at 26 only) and a line of 3."""
    mask = np.zeros((5, 5, 7), bool)
    chain = np.zeros_like(mask)
    for i in range(4):
        chain[i, i, i] = True
    mask |= chain
    mask[0, 4, 4:7] = True  # the line: face neighbours
    assert label_components(mask, backend=backend)[1] == 2
    np.testing.assert_array_equal(keep_largest_component(mask, backend=backend), chain)
    np.testing.assert_array_equal(remove_small_components(mask, 4, backend=backend), chain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out(backend, rng):
    mask = sparse(rng, (5, 7, 6))
    labels, count = label_components(torch.from_numpy(mask), backend=backend)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32
    np.testing.assert_array_equal(labels.numpy(), scipy_label(mask, 26)[0])
    out = keep_largest_component(torch.from_numpy(mask.astype(np.float32)), backend=backend)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"connectivity must be one of \[6, 18, 26\] for a 3D mask, got 8"):
        label_components(np.ones((2, 2, 2)), 8)
    with pytest.raises(ValueError, match=r"connectivity must be one of \[4, 8\] for a 2D mask, got 5"):
        keep_largest_component(np.ones((2, 2)), 5)
    with pytest.raises(ValueError, match="min_voxels must be a non-negative int"):
        remove_small_components(np.ones((2, 2)), 2.5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_size_threshold_beyond_int64_removes_everything(backend):
    mask = np.ones((3, 4, 5), bool)
    assert not remove_small_components(mask, 2**70, backend=backend).any()
    assert remove_small_components(mask, 60, backend=backend).all()
