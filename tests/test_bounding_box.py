"""bounding_box: every backend against a plain argwhere truth."""
import numpy as np
import pytest
import torch
from gpu import GPU_BACKENDS

from c2w_fast.ops import bounding_box

CPU_BACKENDS = ["reference", "cpu", "triton"]


def truth(mask, margin=0):
    hits = np.argwhere(mask)
    if len(hits) == 0:
        return None
    return tuple(slice(max(int(lo) - margin, 0), min(int(hi) + 1 + margin, n))
                 for lo, hi, n in zip(hits.min(0), hits.max(0), mask.shape))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(7, 13, 11), (1, 5, 3), (9, 17), (23,)])
def test_matches_argwhere_on_random_sparse_masks(backend, shape, rng):
    mask = rng.random(shape) < 0.02
    assert bounding_box(mask, backend=backend) == truth(mask)
    assert bounding_box(torch.from_numpy(mask), margin=2, backend=backend) == truth(mask, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_edge_cases(backend, rng):
    shape = (6, 9, 5)
    empty = np.zeros(shape, bool)
    assert bounding_box(empty, backend=backend) is None
    full = np.ones(shape, bool)
    assert bounding_box(full, margin=3, backend=backend) == tuple(slice(0, n) for n in shape)
    single = empty.copy()
    index = tuple(int(rng.integers(n)) for n in shape)
    single[index] = True
    assert bounding_box(single, backend=backend) == tuple(slice(i, i + 1) for i in index)
    corner = empty.copy()
    corner[-1, -1, -1] = True
    assert bounding_box(corner, margin=1, backend=backend) == (slice(4, 6), slice(7, 9), slice(3, 5))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_accepts_non_contiguous_and_numeric_masks(backend, rng):
    mask = (rng.random((8, 10, 12)) < 0.03).astype(np.float32)
    view = mask.transpose(2, 0, 1)[:, ::2]
    assert bounding_box(view, backend=backend) == truth(view != 0)
    labels = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8) * (rng.random((5, 6, 7)) < 0.05)
    assert bounding_box(labels, backend=backend) == truth(labels != 0)



@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_accepts_reversed_views_and_negative_values(backend, rng):
    """A view with negative strides (torch cannot view it: the triton backend copies it), and
    negative labels, which are nonzero and so foreground."""
    mask = rng.random((6, 7, 8)) < 0.05
    mask[2, 3, 4] = True
    flipped = mask[::-1, :, ::-1]
    assert bounding_box(flipped, backend=backend) == truth(flipped)
    signed = np.where(mask, -1, 0).astype(np.int8)
    assert bounding_box(signed, backend=backend) == truth(mask)
    assert bounding_box(torch.from_numpy(signed), backend=backend) == truth(mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 4, 5), (3, 0, 5), (0, 3), (0,)])
def test_an_array_without_voxels_has_no_box(backend, shape):
    assert bounding_box(np.zeros(shape, bool), backend=backend) is None
    assert bounding_box(torch.zeros(shape, dtype=torch.bool), margin=1, backend=backend) is None


def test_per_axis_margin_and_bad_arguments():
    mask = np.zeros((10, 10, 10), bool)
    mask[5, 5, 5] = True
    assert bounding_box(mask, margin=(0, 1, 2)) == (slice(5, 6), slice(4, 7), slice(3, 8))
    with pytest.raises(ValueError, match="margin"):
        bounding_box(mask, margin=(1, 2))
    for margin in (1.5, (0, 1.5, 2), True, -1, None):  # an int means an int: no float, no bool
        with pytest.raises(ValueError, match="margin must be one non-negative int or 3 of them"):
            bounding_box(mask, margin=margin)
    assert bounding_box(mask, margin=np.int64(1)) == bounding_box(mask, margin=(1, 1, 1))
    with pytest.raises(ValueError, match="1D, 2D or 3D"):
        bounding_box(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        bounding_box(np.array([0.0, np.nan]))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)  # "cuda" only where CuPy is installed
def test_gpu_backends_match_cpu_at_full_size(backend):
    gen = torch.Generator(device="cuda").manual_seed(0)
    mask = torch.rand((44, 640, 640), device="cuda", generator=gen) < 1e-5
    assert bounding_box(mask, backend=backend) == bounding_box(mask.cpu().numpy(), backend="cpu")
    assert bounding_box(torch.zeros_like(mask), backend=backend) is None
