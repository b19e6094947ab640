"""Surface elements ("surfels") of a mask: neighbour codes and their areas, derived by marching cubes.

The surface of a 3D mask is taken on the grid of voxel *corners*. Corner ``c`` (an index
from 0 to n along each axis) sits between voxels ``c - 1`` and ``c``; its 2x2x2
neighbourhood is the 8 voxels ``c - 1 + (a, b, d)`` with ``a, b, d`` in {0, 1} (voxels
outside the array count as background). Its **neighbour code** has bit
``1 << (7 - (4a + 2b + d))`` set when that voxel is inside (2D: 2x2 voxels,
``1 << (3 - (2a + b))``). A corner is a surface element when its code is neither 0 nor
all ones; its area (mm², or length in mm in 2D) is ``surfel_area_table(spacing)[code]``.

The table is derived here, not copied: for each code, marching cubes with cut points at
the midpoints of the cube edges whose ends differ. On every face the cut points are joined
in pairs so that the corners of the cube's *minority* side (inside when at most half the
corners are inside, else outside) are cut off one by one — on a face with two diagonal
minority corners they stay apart. The segments close into polygons (3 to 6 vertices);
each polygon is split into its triangulation of largest total area (every triangulation of
a planar polygon has the same area; this choice only matters for the non-planar pentagon
and hexagons, and maximal ones that tie have equal areas at every spacing). A triangle
``(p, q, r)`` has the area vector ``(q - p) x (r - p) / 2``; with spacing ``s`` its
components scale by ``(s1 s2, s0 s2, s0 s1)`` and the area is the vector's norm. In 2D the
square's cut points are joined by the same rule and a segment's length is
``|(q - p) * s|``. This reproduces DeepMind surface-distance's lookup tables to 1e-15
(``tests/test_surfels.py``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

CUBE = [(a, b, d) for a in (0, 1) for b in (0, 1) for d in (0, 1)]
SQUARE = [(a, b) for a in (0, 1) for b in (0, 1)]


def code_bit(vertex: tuple[int, ...]) -> int:
    """The neighbour-code bit of the voxel at offset ``vertex`` (0/1 per axis) from ``corner - 1``."""
    index = 0
    for v in vertex:
        index = 2 * index + v
    return 1 << (2 ** len(vertex) - 1 - index)


def _square_faces(ndim: int) -> list[list[tuple[int, ...]]]:
    """The faces of the unit cube (or the unit square itself), corners in cyclic order."""
    if ndim == 2:
        return [[(0, 0), (0, 1), (1, 1), (1, 0)]]
    faces = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (0, 1):
            def corner(p, q, axis=axis, value=value, others=others):
                v = [0, 0, 0]
                v[axis], v[others[0]], v[others[1]] = value, p, q
                return tuple(v)
            faces.append([corner(0, 0), corner(0, 1), corner(1, 1), corner(1, 0)])
    return faces


def _segments(code: int, ndim: int) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Marching-squares segments on every face, cutting off the minority corners one by one."""
    corners = CUBE if ndim == 3 else SQUARE
    inside = {v: bool(code & code_bit(v)) for v in corners}
    minority_inside = 2 * sum(inside.values()) <= len(corners)
    segments = []
    for face in _square_faces(ndim):
        cuts = [tuple((np.add(face[i], face[(i + 1) % 4]) / 2).tolist())
                for i in range(4) if inside[face[i]] != inside[face[(i + 1) % 4]]]
        if len(cuts) == 2:
            segments.append((cuts[0], cuts[1]))
        elif len(cuts) == 4:  # cut i lies on edge (i, i + 1): pairs (0, 1), (2, 3) cut off corners 1 and 3
            if inside[face[1]] == minority_inside:
                segments += [(cuts[0], cuts[1]), (cuts[2], cuts[3])]
            else:
                segments += [(cuts[1], cuts[2]), (cuts[3], cuts[0])]
    return segments


def _polygons(segments) -> list[list[tuple[float, ...]]]:
    """Chain segments that share end points into closed polygons."""
    remaining = list(segments)
    polygons = []
    while remaining:
        start, end = remaining.pop(0)
        loop = [start, end]
        while True:
            index = next(i for i, (p, q) in enumerate(remaining) if loop[-1] in (p, q))
            p, q = remaining.pop(index)
            following = q if p == loop[-1] else p
            if following == loop[0]:
                break
            loop.append(following)
        polygons.append(loop)
    return polygons


def _triangulations(indices: tuple[int, ...]) -> list[list[tuple[int, int, int]]]:
    """Every triangulation of the convex polygon with vertex ``indices`` (in order)."""
    if len(indices) < 3:
        return [[]]
    first, last = indices[0], indices[-1]
    result = []
    for k in range(1, len(indices) - 1):  # the triangle on edge (first, last) has apex indices[k]
        for left in _triangulations(indices[:k + 1]):
            for right in _triangulations(indices[k:]):
                result.append(left + right + [(first, indices[k], last)])
    return result


def _largest_triangulation(polygon) -> np.ndarray:
    """Area vectors (k, 3) of the triangulation of ``polygon`` with the largest total area."""
    points = np.asarray(polygon, dtype=np.float64)
    best, best_area = None, -1.0
    for triangles in _triangulations(tuple(range(len(points)))):
        vectors = np.array([np.cross(points[q] - points[p], points[r] - points[p]) / 2 for p, q, r in triangles])
        area = round(float(np.linalg.norm(vectors, axis=1).sum()), 12)
        if area > best_area:
            best, best_area = vectors, area
    return best


@lru_cache(maxsize=2)
def surfel_vectors(ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-spacing area vectors (3D) or segment vectors (2D) of every code: ``(codes, vectors)``,
    one row per triangle/segment, ``codes[i]`` the neighbour code it belongs to."""
    if ndim not in (2, 3):
        raise ValueError(f"surfels exist for 2D and 3D masks, got ndim={ndim}")
    codes, vectors = [], []
    for code in range(1, 2 ** (2 ** ndim) - 1):
        segments = _segments(code, ndim)
        if ndim == 2:
            pieces = [np.subtract(q, p) for p, q in segments]
        else:
            pieces = [v for polygon in _polygons(segments) for v in _largest_triangulation(polygon)]
        codes += [code] * len(pieces)
        vectors += pieces
    return np.asarray(codes, dtype=np.intp), np.asarray(vectors, dtype=np.float64)


def surfel_area_table(spacing) -> np.ndarray:
    """float64 table of the surfel area (mm², 3D) or contour length (mm, 2D) of every
    neighbour code at ``spacing`` (mm, (z, y, x) or (y, x)); 0 for codes 0 and all-ones."""
    spacing = np.asarray(spacing, dtype=np.float64)
    ndim = len(spacing)
    codes, vectors = surfel_vectors(ndim)
    if ndim == 3:
        scale = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
    else:
        scale = spacing
    lengths = np.linalg.norm(vectors * scale, axis=1)
    return np.bincount(codes, weights=lengths, minlength=2 ** (2 ** ndim))


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """uint8 neighbour codes on the corner grid (each axis one longer) of a 2D/3D bool ``mask``."""
    padded = np.pad(mask.astype(np.uint8), 1)
    shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(shape, np.uint8)
    for vertex in (CUBE if mask.ndim == 3 else SQUARE):
        window = tuple(slice(v, v + n) for v, n in zip(vertex, shape))
        codes |= padded[window] * np.uint8(code_bit(vertex))
    return codes
