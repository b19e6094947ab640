"""binary_dilation and binary_erosion with a ball: every backend bit-identical to scipy."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from masks import anisotropic_spacing, blobs
from scipy import ndimage

from c2w_fast.ops import ball, binary_dilation, binary_erosion

BACKENDS = ["reference", "cpu"]


def test_ball_by_hand():
    # radius 1 voxel: the 6-neighbourhood cross; radius sqrt(2): adds the 12 edge neighbours
    np.testing.assert_array_equal(ball(1.0), ndimage.generate_binary_structure(3, 1))
    np.testing.assert_array_equal(ball(np.sqrt(2) + 1e-9), ndimage.generate_binary_structure(3, 2))
    assert ball(2.0).sum() == 33  # 1 + 6 + 12 + 8 + 6 offsets with |o|^2 <= 4
    # 2 mm at 2.5 x 0.625 x 0.625 mm: a single slice, an in-plane disc of radius 3.2 voxels
    disc = ball(2.0, (2.5, 0.625, 0.625))
    assert disc.shape == (1, 7, 7) and disc[0, 3, 0] and not disc[0, 0, 0]
    assert ball(0.0).shape == (1, 1, 1)
    assert ball(1.5, ndim=2).shape == (3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(9, 16, 13), (1, 20, 17), (25, 21)])
def test_dilation_and_erosion_equal_scipy_in_voxels_and_mm(backend, shape, rng):
    for fill in (0.05, 0.5):
        mask = blobs(rng, shape, fill, sigma=1.2)
        spacing = anisotropic_spacing(rng, len(shape))
        for radius, sp in [(0.0, None), (1.0, None), (2.0, None), (2.7, None), (2.0, spacing), (3.1, spacing)]:
            element = ball(radius, sp, len(shape))
            np.testing.assert_array_equal(binary_dilation(mask, radius, spacing=sp, backend=backend),
                                          ndimage.binary_dilation(mask, structure=element))
            np.testing.assert_array_equal(binary_erosion(mask, radius, spacing=sp, backend=backend),
                                          ndimage.binary_erosion(mask, structure=element))


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend, rng):
    shape = (5, 8, 7)
    empty = np.zeros(shape, bool)
    assert not binary_dilation(empty, 2, backend=backend).any()
    assert not binary_erosion(empty, 2, backend=backend).any()
    full = ~empty
    assert binary_dilation(full, 2, backend=backend).all()
    # the border counts as background for erosion
    np.testing.assert_array_equal(binary_erosion(full, 1, backend=backend), ndimage.binary_erosion(full, ball(1.0)))
    single = empty.copy()
    single[tuple(rng.integers(0, shape))] = True
    np.testing.assert_array_equal(binary_dilation(single, 2, backend=backend),
                                  ndimage.binary_dilation(single, structure=ball(2.0)))
    corner = empty.copy()
    corner[0, 0, 0] = True
    np.testing.assert_array_equal(binary_dilation(corner, 3, backend=backend),
                                  ndimage.binary_dilation(corner, structure=ball(3.0)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_in_torch_out(backend, rng):
    mask = blobs(rng, (5, 9, 8), 0.3)
    out = binary_dilation(torch.from_numpy(mask.astype(np.uint8)), 1.5, backend=backend)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), ndimage.binary_dilation(mask, structure=ball(1.5)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="radius must be a non-negative number"):
        binary_dilation(np.ones((2, 2)), -1)
    with pytest.raises(ValueError, match=r"spacing must have 2 positive values \(y, x\) in mm"):
        binary_erosion(np.ones((2, 2)), 1, spacing=(1, 1, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_ball_larger_than_the_array_acts_as_the_whole_ball(backend, rng):
    """The element is clipped to the array; dilation and erosion equal scipy's with the full ball."""
    mask = blobs(rng, (5, 7, 9), 0.2)
    full = ball(6.0, (0.9, 0.5, 0.7))  # 13 x 25 x 17 offsets: larger than the array along z and y
    assert ball(6.0, (0.9, 0.5, 0.7), within=mask.shape).shape == (11, 15, 17)
    for radius in (6.0, 1e6):
        dilated = binary_dilation(mask, radius, spacing=(0.9, 0.5, 0.7), backend=backend)
        eroded = binary_erosion(~mask, radius, spacing=(0.9, 0.5, 0.7), backend=backend)
        if radius == 6.0:
            np.testing.assert_array_equal(dilated, ndimage.binary_dilation(mask, structure=full))
            np.testing.assert_array_equal(eroded, ndimage.binary_erosion(~mask, structure=full))
        else:  # a kilometre: everything within reach, nothing survives erosion
            assert dilated.all() and not eroded.any()


def test_ball_keeps_offsets_on_the_sphere_and_refuses_bad_radii():
    assert ball(1.17, (0.39,) * 3).shape == (7, 7, 7)  # 1.17 / 0.39 = 2.9999999999999996 in float64
    assert ball(1.17, (0.39,) * 3)[3, 3, 6]
    for radius in (-1, float("nan"), "2", True, None):  # a string or a bool is no radius either
        with pytest.raises(ValueError, match="radius must be a non-negative number"):
            ball(radius)
    assert np.array_equal(ball(np.float32(1.5)), ball(1.5)) and np.array_equal(ball(np.int64(2)), ball(2))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_a_radius_beyond_int64_voxels_still_fills_the_array(backend):
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = True
    assert binary_dilation(mask, 1e19, backend=backend).all()
    assert binary_dilation(mask, 1e13, spacing=(1e-6,) * 3, backend=backend).all()
    with pytest.raises(ValueError, match="pass within="):
        ball(1e19)


def test_ball_refuses_arrays_beyond_max_ball_elements_before_allocating():
    """ball(1e4) tried to allocate 58 TiB (MemoryError); the limit counts the ball's offsets on every axis."""
    for radius, ndim in ((1e4, 3), (300.0, 3), (6000.0, 2)):
        with pytest.raises(ValueError, match="more than MAX_BALL_ELEMENTS = 2\\*\\*27; pass within="):
            ball(radius, ndim=ndim)
    assert ball(1e4, (1.0, 1e6, 1e6)).shape == (20001, 1, 1)  # long along one axis only: small enough
    assert ball(1e4, within=(3, 4, 5)).shape == (7, 9, 11)


OUT_OF_MEMORY_DILATION = """
import resource
import numpy as np
from c2w_fast.ops.morphology import binary_dilation
mask = np.zeros((40, 40, 4000), bool)
mask[:, :, ::2] = True  # 2000 runs per row: each thread's interval lists need ~22 MB
used = int(open("/proc/self/statm").read().split()[0]) * 4096
resource.setrlimit(resource.RLIMIT_AS, (used + 60 * 2**20, resource.RLIM_INFINITY))
try:
    binary_dilation(mask, 15, spacing=(1, 1, 40), backend="cpu")
    print("dilated")
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_running_out_of_memory_inside_the_parallel_dilation_is_a_memory_error():
    """std::bad_alloc in an OpenMP worker aborted the interpreter; it is raised as MemoryError."""
    run = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_DILATION], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() in ("MemoryError", "dilated"), run.stderr[-500:]
