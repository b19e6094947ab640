"""The surfel area tables are derived by marching cubes and equal DeepMind surface-distance's."""
import numpy as np
import pytest
from scipy import ndimage

from c2w_fast.ops._surfels import neighbour_codes, surfel_area_table, surfel_vectors

lookup_tables = pytest.importorskip("surface_distance.lookup_tables")


def test_3d_area_table_equals_surface_distance_at_random_anisotropic_spacings(rng):
    for spacing in [(1.0, 1.0, 1.0), *rng.uniform(0.1, 5.0, (10, 3))]:
        ours = surfel_area_table(spacing)
        peer = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(ours, peer, rtol=1e-13, atol=0)


def test_2d_contour_table_equals_surface_distance_at_random_spacings(rng):
    for spacing in [(1.0, 1.0), *rng.uniform(0.1, 5.0, (10, 2))]:
        ours = surfel_area_table(spacing)
        peer = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
        np.testing.assert_allclose(ours, peer, rtol=1e-13, atol=0)


def test_hand_computed_areas_at_unit_spacing():
    table = surfel_area_table((1.0, 1.0, 1.0))
    # one corner cut off: the triangle between three edge midpoints at distance 1/2 from it
    assert table[1] == pytest.approx(np.sqrt(3) / 8)
    # four voxels of one face inside: the unit square halfway through the cube
    assert table[0b11110000] == pytest.approx(1.0)
    # two voxels along z inside: a rectangle 1 x sqrt(1/2)
    assert table[0b00000011] == pytest.approx(np.sqrt(0.5))
    assert table[0] == 0 and table[255] == 0
    # complementary codes bound the same surface
    np.testing.assert_allclose(table, table[::-1], rtol=1e-14)


def test_every_mixed_code_has_a_surface():
    codes, vectors = surfel_vectors(3)
    assert set(codes.tolist()) == set(range(1, 255))
    assert np.all(np.linalg.norm(vectors, axis=1) > 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_neighbour_codes_match_surface_distance_encoding(ndim, rng):
    mask = rng.random((5, 6, 7)[:ndim]) < 0.5
    kernel = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL if ndim == 3 else lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL
    padded = np.pad(mask, [(0, 1)] * ndim).astype(np.uint8)  # the peer pads the high side only
    expected = ndimage.correlate(padded, kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(neighbour_codes(mask), expected)
