"""GPU backends of the volume ops against scipy: EDT, signed distance, labelling, dilation/erosion.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (small shapes);
on a GPU the same tests run the compiled Triton and CUDA C kernels on CUDA tensors.
"""
import numpy as np
import pytest
import torch
from gpu import DEVICE, GPU_BACKENDS, host, on_device
from masks import anisotropic_spacing, blobs
from scipy import ndimage

from c2w_fast.ops import (
    ball,
    binary_dilation,
    binary_erosion,
    bounding_box,
    distance_transform,
    keep_largest_component,
    label_components,
    remove_small_components,
    signed_distance,
)
from c2w_fast.ops._gpu_volume import EMPTY_BOX, as_items, bounding_boxes, grow_boxes
from c2w_fast.kernels.edt import SEARCH_LENGTH
from c2w_fast.ops.distance_transform import TOLERANCE

pytestmark = pytest.mark.gpu  # runs its kernels on a GPU when there is one

COMPONENT_BACKENDS = GPU_BACKENDS  # triton everywhere, cuda on a GPU with CuPy
RANK = {6: 1, 18: 2, 26: 3, 4: 1, 8: 2}


def scipy_edt(mask, spacing):
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def test_device_boxes_equal_the_bounding_box_op(rng):
    masks = rng.random((4, 5, 7, 9)) < 0.02
    masks[1] = False
    masks[2, 4, 6, 8] = True  # a voxel in the last corner
    boxes = host(bounding_boxes(as_items(on_device(masks), 3)))
    for item, box in zip(masks, boxes):
        expected = bounding_box(item)
        flat = EMPTY_BOX if expected is None else tuple(v for s in expected for v in (s.start, s.stop - 1))
        assert tuple(box) == flat
    grown = host(grow_boxes(torch.as_tensor(boxes).to(DEVICE), (1, 2, 3), (1, 2, 3), (5, 7, 9)))
    for box, out in zip(boxes, grown):
        if box[0] > box[1]:
            assert tuple(out) == EMPTY_BOX
        else:
            assert tuple(out) == (max(box[0] - 1, 0), min(box[1] + 1, 4), max(box[2] - 2, 0), min(box[3] + 2, 6),
                                  max(box[4] - 3, 0), min(box[5] + 3, 8))


# an x axis over 64 crosses the x pass's chunks and the search tiles; 65 = 2 x 32 + 1 leaves
# one voxel for the last 32-voxel chunk of the x pass
@pytest.mark.parametrize("shape", [(5, 9, 11), (13, 17), (2, 5, 75), (2, 3, 65)])
def test_distance_transform_matches_scipy(shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    for fill in (0.1, 0.6, 0.97):
        mask = blobs(rng, shape, fill, sigma=1.0)
        ours = distance_transform(on_device(mask), spacing, backend="triton")
        assert ours.dtype == torch.float32 and ours.device.type == DEVICE
        np.testing.assert_allclose(host(ours), scipy_edt(mask, spacing), **TOLERANCE)
    np.testing.assert_allclose(host(distance_transform(on_device(mask), backend="triton")), scipy_edt(mask, None),
                               **TOLERANCE)


@pytest.mark.parametrize("shape", [(2, 66, 5), (66, 3, 4)])
def test_long_axes_take_the_lower_envelope(shape, rng):
    # y or z longer than SEARCH_LENGTH: that pass runs the envelope kernel; the sparse mask
    # leaves columns without any site (+inf in, +inf out) next to long ones
    assert max(shape[:2]) > SEARCH_LENGTH
    spacing = anisotropic_spacing(rng)
    for fill in (0.3, 0.98):
        mask = blobs(rng, shape, fill, sigma=1.0)
        np.testing.assert_allclose(host(distance_transform(on_device(mask), spacing, backend="triton")),
                                   scipy_edt(mask, spacing), **TOLERANCE)


def test_distance_transform_edge_cases(rng):
    shape, spacing = (4, 7, 6), anisotropic_spacing(rng)
    empty = np.zeros(shape, bool)
    assert not host(distance_transform(on_device(empty), spacing, backend="triton")).any()
    assert np.all(np.isposinf(host(distance_transform(on_device(~empty), spacing, backend="triton"))))
    hole = ~empty
    hole[tuple(rng.integers(0, shape))] = False  # a single background voxel: distances span the volume
    border = empty.copy()
    border[:, :, -2:] = True  # touching the border, which is not background
    for mask in (hole, border):
        np.testing.assert_allclose(host(distance_transform(on_device(mask), spacing, backend="triton")),
                                   scipy_edt(mask, spacing), **TOLERANCE)


@pytest.mark.parametrize("shape", [(6, 10, 9), (15, 12)])
def test_signed_distance_matches_scipy(shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    mask = blobs(rng, shape, 0.4)
    ours = host(signed_distance(on_device(mask), spacing, backend="triton"))
    np.testing.assert_allclose(ours, scipy_edt(~mask, spacing) - scipy_edt(mask, spacing), **TOLERANCE)
    assert np.all(np.isposinf(host(signed_distance(on_device(np.zeros(shape, bool)), spacing, backend="triton"))))
    assert np.all(np.isneginf(host(signed_distance(on_device(np.ones(shape, bool)), spacing, backend="triton"))))


def test_numpy_in_numpy_out_under_the_interpreter(rng):
    if DEVICE == "cuda":
        pytest.skip("numpy inputs reach the Triton backend only in interpreter mode")
    mask = blobs(rng, (4, 6, 5), 0.5)
    out = distance_transform(mask, backend="triton")
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, scipy_edt(mask, None), **TOLERANCE)


def scipy_label(mask, connectivity):
    return ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, RANK[connectivity]))


@pytest.mark.parametrize("backend", COMPONENT_BACKENDS)
@pytest.mark.parametrize("shape,connectivity", [((4, 9, 11), 6), ((4, 9, 11), 18), ((4, 9, 11), 26),
                                                ((9, 40), 4), ((9, 40), 8)])
def test_labels_equal_scipy_including_numbering(backend, shape, connectivity, rng):
    mask = rng.random(shape) < 0.35
    labels, count = label_components(on_device(mask), connectivity, backend=backend)
    expected, expected_count = scipy_label(mask, connectivity)
    assert labels.dtype == torch.int32 and count == expected_count
    np.testing.assert_array_equal(host(labels), expected)


@pytest.mark.parametrize("backend", COMPONENT_BACKENDS)
def test_labelling_long_chains(backend):
    # A serpentine: one component whose runs join one after another (deep union-find trees),
    # and a comb whose teeth meet only at the last slice (roots merged late, from many places).
    serpentine = np.zeros((1, 23, 37), bool)
    serpentine[0, ::2, 1:-1] = True
    serpentine[0, 1::4, -2] = serpentine[0, 3::4, 1] = True
    comb = np.zeros((6, 7, 9), bool)
    comb[:, :, ::2] = True
    comb[:, ::2, :] = False
    comb[-1] = True
    for mask in (serpentine, comb):
        for connectivity in (6, 26):
            labels, count = label_components(on_device(mask), connectivity, backend=backend)
            expected, expected_count = scipy_label(mask, connectivity)
            assert count == expected_count
            np.testing.assert_array_equal(host(labels), expected)


@pytest.mark.parametrize("backend", COMPONENT_BACKENDS)
def test_keep_largest_and_remove_small_equal_scipy(backend, rng):
    mask = rng.random((4, 8, 10)) < 0.3
    expected, _ = scipy_label(mask, 18)
    sizes = np.bincount(expected.ravel())
    largest = expected == 1 + int(np.argmax(sizes[1:]))
    np.testing.assert_array_equal(host(keep_largest_component(on_device(mask), 18, backend=backend)), largest)
    threshold = int(np.unique(sizes[1:])[1])  # the second smallest size: those components stay (>=)
    kept = np.isin(expected, np.flatnonzero(sizes >= threshold)) & mask
    np.testing.assert_array_equal(host(remove_small_components(on_device(mask), threshold, 18, backend=backend)), kept)


@pytest.mark.parametrize("backend", COMPONENT_BACKENDS)
def test_component_edge_cases(backend):
    empty = np.zeros((3, 4, 5), bool)
    labels, count = label_components(on_device(empty), backend=backend)
    assert count == 0 and not host(labels).any()
    assert not host(keep_largest_component(on_device(empty), backend=backend)).any()
    labels, count = label_components(on_device(~empty), 6, backend=backend)
    assert count == 1 and np.all(host(labels) == 1)
    tie = empty.copy()
    tie[0, 0, 0] = tie[2, 3, 4] = True  # two equal components at opposite corners: the first one wins
    first = np.zeros_like(tie)
    first[0, 0, 0] = True
    np.testing.assert_array_equal(host(keep_largest_component(on_device(tie), backend=backend)), first)
    edge = empty.copy()
    edge[1, 1, 1] = edge[1, 2, 2] = True  # touching along an edge: joined at 18 and 26, not at 6
    assert [label_components(on_device(edge), c, backend=backend)[1] for c in (6, 18, 26)] == [2, 1, 1]
    np.testing.assert_array_equal(host(remove_small_components(on_device(edge), 2, 6, backend=backend)), empty)


@pytest.mark.parametrize("shape", [(6, 12, 15), (1, 13, 17), (14, 19)])
def test_dilation_and_erosion_are_bit_identical_to_scipy(shape, rng):
    spacing = anisotropic_spacing(rng, len(shape))
    for fill in (0.1, 0.7):
        mask = blobs(rng, shape, fill, sigma=1.2)  # blobs touch the border: erosion eats from it
        for radius, sp in [(0.0, None), (1.0, None), (2.0, None), (2.0, spacing)]:
            element = ball(radius, sp, len(shape))
            dilated = binary_dilation(on_device(mask), radius, spacing=sp, backend="triton")
            assert dilated.dtype == torch.bool and dilated.device.type == DEVICE
            np.testing.assert_array_equal(host(dilated), ndimage.binary_dilation(mask, structure=element))
            np.testing.assert_array_equal(host(binary_erosion(on_device(mask), radius, spacing=sp, backend="triton")),
                                          ndimage.binary_erosion(mask, structure=element))


def test_morphology_edge_cases():
    empty = np.zeros((3, 5, 4), bool)
    assert not host(binary_dilation(on_device(empty), 2, backend="triton")).any()
    # all foreground: dilation keeps it; erosion removes what is closer to the border than the ball reaches
    full = ~empty
    np.testing.assert_array_equal(host(binary_dilation(on_device(full), 1, backend="triton")), full)
    np.testing.assert_array_equal(host(binary_erosion(on_device(full), 1, backend="triton")),
                                  ndimage.binary_erosion(full, structure=ball(1.0)))
    single = empty.copy()
    single[1, 2, 0] = True  # one voxel on the border
    np.testing.assert_array_equal(host(binary_dilation(on_device(single), 1.5, backend="triton")),
                                  ndimage.binary_dilation(single, structure=ball(1.5)))
