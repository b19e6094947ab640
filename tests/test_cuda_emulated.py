"""The CUDA C kernels (``kernels/*.cu``) executed on the CPU by ``cuda_emulator.hpp``, against scipy.

Without a GPU these kernels would only be compiled (``test_cuda_sources.py``). Here each one
runs through its real launcher (grid, block and argument types included) with the threads of
a block racing on the CPU and warps meeting at every collective, so their indexing, ballot
and shuffle arithmetic, box handling and union-find are checked in CI. On a GPU the ``cuda``
tests check the same kernels compiled; this module is then skipped.
"""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from c2w_fast.kernels import _nvrtc
from c2w_fast.kernels.bounding_box import bounding_box_cuda
from c2w_fast.kernels.components import component_roots_cuda
from c2w_fast.ops._gpu_components import keep_largest_cuda, label_cuda, remove_small_cuda
from c2w_fast.ops._gpu_volume import bounding_boxes

import cuda_emulator
from gpu import DEVICE

pytestmark = [pytest.mark.skipif(cuda_emulator.GXX is None, reason="g++ not on PATH"),
              pytest.mark.skipif(DEVICE == "cuda", reason="a GPU runs the compiled kernels (the cuda tests)")]

STRUCTURES = {6: 1, 18: 2, 26: 3}  # connectivity -> scipy's generate_binary_structure rank


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    monkeypatch.setattr(_nvrtc, "launch", cuda_emulator.launch)


def _scipy_labels(mask: np.ndarray, connectivity: int) -> np.ndarray:
    rank = STRUCTURES.get(connectivity) or {4: 1, 8: 2}[connectivity]
    return ndi.label(mask, ndi.generate_binary_structure(mask.ndim, rank))[0]


# x sizes: below a warp, exactly two warps, and a last warp chunk that is partly outside the row
@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 6, 64), (3, 4, 70)])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_labels_are_scipys_numbering(rng, shape, connectivity):
    for density in (0.3, 0.55):
        mask = rng.random(shape) < density
        labels, count = label_cuda(torch.from_numpy(mask), connectivity)
        expected = _scipy_labels(mask, connectivity)
        np.testing.assert_array_equal(labels.numpy(), expected)
        assert count == expected.max()


def test_2d_masks_and_masks_with_nothing_or_everything(rng):
    mask = rng.random((9, 75)) < 0.5
    for connectivity in (4, 8):
        np.testing.assert_array_equal(label_cuda(torch.from_numpy(mask), connectivity)[0].numpy(),
                                      _scipy_labels(mask, connectivity))
    for fill in (False, True):
        labels, count = label_cuda(torch.full((2, 3, 40), fill), 26)
        assert count == int(fill) and (labels.numpy() == int(fill)).all()


def test_a_batch_gets_the_first_voxel_of_each_component_within_its_box(rng):
    """Items with different boxes (one empty, one touching every face): each foreground voxel's
    root is the linear index, over the whole batch, of its scipy component's first voxel."""
    masks = np.zeros((3, 5, 8, 40), bool)
    masks[0, 1:4, 2:7, 5:38] = rng.random((3, 5, 33)) < 0.5
    masks[2] = rng.random((5, 8, 40)) < 0.5
    batch = torch.from_numpy(masks.view(np.uint8))
    roots = component_roots_cuda(batch, bounding_boxes(batch), 18).numpy()
    for item in range(3):
        labels = _scipy_labels(masks[item], 18)
        offset = item * masks[item].size
        first = {label: offset + index for index, label in reversed(list(enumerate(labels.ravel()))) if label}
        expected = np.vectorize(lambda label: first.get(label, -1))(labels)
        np.testing.assert_array_equal(np.where(masks[item], roots[item], -1), expected)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_keep_largest_and_remove_small_match_scipy(rng, connectivity):
    mask = rng.random((4, 7, 45)) < 0.35
    labels = _scipy_labels(mask, connectivity)
    sizes = np.bincount(labels.ravel())[1:]
    kept = keep_largest_cuda(torch.from_numpy(mask), connectivity).numpy()
    np.testing.assert_array_equal(kept, labels == 1 + np.argmax(sizes))  # the first of equal sizes
    threshold = int(np.median(sizes)) + 1
    np.testing.assert_array_equal(remove_small_cuda(torch.from_numpy(mask), threshold, connectivity).numpy(),
                                  np.isin(labels, 1 + np.flatnonzero(sizes >= threshold)))


def _numpy_box(mask: np.ndarray):
    hits = np.argwhere(mask)
    if not len(hits):
        return (2**31 - 1, 0, 2**31 - 1, 0, 2**31 - 1, 0)
    low, high = hits.min(axis=0), hits.max(axis=0) + 1
    return tuple(int(v) for pair in zip(low, high) for v in pair)


# n = 6000 voxels: three blocks of 256 threads, each striding over the grid
@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 40, 50)])
def test_bounding_box_matches_numpy(rng, shape):
    for density in (0.0, 1e-3, 0.2, 1.0):
        mask = rng.random(shape) < density
        assert bounding_box_cuda(torch.from_numpy(mask.view(np.uint8))) == _numpy_box(mask), density
    for index in {0, 20, 31, 2100, mask.size - 1}:  # one voxel: seen by lane 20 of a warp, by the second block
        mask = np.zeros(shape, bool)
        mask.flat[min(index, mask.size - 1)] = True
        assert bounding_box_cuda(torch.from_numpy(mask.view(np.uint8))) == _numpy_box(mask), index


def test_the_emulator_refuses_what_the_gpu_would_read_wrongly():
    masks = torch.zeros((1, 2, 2, 2), dtype=torch.uint8)
    parent = torch.zeros(masks.shape, dtype=torch.int32)
    boxes = bounding_boxes(masks)
    with pytest.raises(AssertionError, match="argument 3: an int needs a int32, got int64"):
        cuda_emulator.launch("components.cu", "component_flatten", (1, 1), (32,),
                             (masks, parent, boxes, np.int64(2), np.int32(2), np.int32(2)))
    with pytest.raises(AssertionError, match=r"argument 1: a int\* needs a torch.int32 tensor, got torch.int64"):
        cuda_emulator.launch("components.cu", "component_flatten", (1, 1), (32,),
                             (masks, parent.long(), boxes, *(np.int32(2),) * 3))
