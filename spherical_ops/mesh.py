"""Icosahedral spheres in FreeSurfer's icN / fsaverageN vertex and face order.

``icosphere(level)`` returns the level-``k`` icosahedral mesh (``10 * 4**k + 2`` vertices) whose
vertex order is identical to FreeSurfer's ``ic<k>.tri`` / fsaverage spheres (fsaverage = ic7,
fsaverage6 = ic6, fsaverage5 = ic5), so that a map already on fsaverageN feeds the networks as it
is, with no resampling.

The order rule (checked against fsaverage5 for every vertex and face, see ``tests/test_mesh.py``):

* level 0 is FreeSurfer's icosahedron: vertex 0 at the north pole, 1-5 on the upper ring, 6-10 on the
  lower ring, 11 at the south pole, and the 20 faces of :data:`IC0_FACES`;
* level k+1 keeps the vertices of level k (nesting: ``icosphere(k+1).vertices[:V(k)]`` is level k) and
  appends one vertex per edge, the normalised midpoint of its two end points, numbered in the order
  in which the edges are first met when walking the faces ``(a, b, c)`` of level k in order and,
  within a face, the edges ``(a, c)``, ``(b, c)``, ``(a, b)``;
* the faces of level k+1 are first the corner triangle ``(a, m_ab, m_ac)`` of every parent face in
  order, then, parent by parent, ``(m_ac, m_bc, c)``, ``(m_ab, m_bc, m_ac)``, ``(m_ab, b, m_bc)``;
  every face is oriented counter-clockwise seen from outside (normal pointing away from the centre).

Radius: vertices lie on the **unit** sphere (FreeSurfer's spheres have radius 100; multiply by 100
to compare coordinates, or normalise theirs). A unit radius keeps barycentric weights and angles
free of a scale factor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spherical_ops._cache import level_cache

MAX_LEVEL = 7

#: The 20 faces of FreeSurfer's ic0 (icosahedron), outward-oriented, in FreeSurfer's order.
IC0_FACES = np.array([
    [0, 3, 4], [0, 4, 5], [0, 5, 1], [0, 1, 2], [0, 2, 3],
    [3, 2, 8], [3, 8, 9], [3, 9, 4], [4, 9, 10], [4, 10, 5],
    [5, 10, 6], [5, 6, 1], [1, 6, 7], [1, 7, 2], [2, 7, 8],
    [8, 11, 9], [9, 11, 10], [10, 11, 6], [6, 11, 7], [7, 11, 8],
], dtype=np.int64)


def n_vertices(level: int) -> int:
    """Number of vertices of the level-``level`` icosphere: ``10 * 4**level + 2``."""
    return 10 * 4 ** level + 2


def n_faces(level: int) -> int:
    """Number of faces of the level-``level`` icosphere: ``20 * 4**level``."""
    return 20 * 4 ** level


#: Vertex counts of levels 0..7: 12, 42, 162, 642, 2562, 10242, 40962, 163842.
VERTEX_COUNTS = tuple(n_vertices(k) for k in range(MAX_LEVEL + 1))


def level_of(n: int, *, what: str = "map") -> int:
    """Return the icosahedral level whose vertex count is ``n``.

    Raises ValueError naming ``n``, the valid counts and the nearest level when ``n`` matches none.
    """
    n = int(n)
    if n in VERTEX_COUNTS:
        return VERTEX_COUNTS.index(n)
    nearest = int(np.argmin([abs(c - n) for c in VERTEX_COUNTS]))
    raise ValueError(
        f"{what} has {n} vertices, which matches no icosahedral level; expected one of "
        f"{', '.join(map(str, VERTEX_COUNTS))} (levels 0-{MAX_LEVEL}); the nearest is level {nearest} "
        f"({VERTEX_COUNTS[nearest]} vertices)")


def check_level(level, *, max_level: int = MAX_LEVEL) -> int:
    """Return ``level`` as int after checking it is an integer in ``0..max_level``."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise TypeError(f"level must be an int in 0..{max_level}, got {level!r} ({type(level).__name__})")
    if not 0 <= int(level) <= max_level:
        raise ValueError(f"level must be in 0..{max_level} (12 to {n_vertices(max_level)} vertices), got {level}")
    return int(level)


@dataclass(frozen=True, eq=False)
class Surface:
    """A triangle mesh: the one mesh type of :mod:`spherical_ops` and :mod:`surfharm`.

    FreeSurfer and GIfTI surfaces, subjects' spheres, the meshes figures are drawn on, and (as the
    subclass :class:`IcoSphere`) the icosahedral spheres.

    Attributes
    ----------
    vertices : ndarray
        (V, 3) float64 coordinates (mm for white/pial; radius 100 for FreeSurfer spheres,
        1 for icospheres).
    faces : ndarray
        (F, 3) int64 vertex indices, 0-based.
    source : str or None
        where it comes from (a file path, or a description for messages), or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    source: str | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"{type(self).__name__}(n_vertices={self.n_vertices}, n_faces={self.n_faces}{src})"


@dataclass(frozen=True, eq=False)
class IcoSphere(Surface):
    """An icosahedral sphere mesh (immutable: its arrays are read-only), a :class:`Surface` with a level.

    Attributes
    ----------
    vertices : ndarray
        (V, 3) float64, unit vectors, FreeSurfer order; ``V = 10 * 4**level + 2``.
    faces : ndarray
        (F, 3) int64, outward (counter-clockwise seen from outside); ``F = 20 * 4**level``.
    level : int
        subdivision level, 0..7 (keyword-only).
    """

    level: int = field(kw_only=True)

    def __repr__(self) -> str:
        return f"IcoSphere(level={self.level}, n_vertices={self.n_vertices}, n_faces={self.n_faces})"


def _ic0_vertices() -> np.ndarray:
    """The 12 icosahedron vertices in FreeSurfer's order (unit radius)."""
    z = 1.0 / np.sqrt(5.0)
    r = 2.0 / np.sqrt(5.0)
    upper = np.deg2rad([-72.0, 0.0, 72.0, 144.0, 216.0])     # vertices 1..5
    lower = np.deg2rad([-108.0, -36.0, 36.0, 108.0, 180.0])  # vertices 6..10
    rings = [np.stack([r * np.cos(a), r * np.sin(a), np.full(5, s * z)], axis=1)
             for a, s in ((upper, 1.0), (lower, -1.0))]
    return np.concatenate([[[0.0, 0.0, 1.0]], rings[0], rings[1], [[0.0, 0.0, -1.0]]])


def _subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level of FreeSurfer-order midpoint subdivision (vectorised).

    Returns ``(vertices, faces, parents)`` of the next level; ``parents`` is (V_new - V_old, 2): the two
    end points of the edge that created each new vertex, in walk order.
    """
    n_old = vertices.shape[0]
    n_face = faces.shape[0]
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    # Edges in walk order: face by face, then (a, c), (b, c), (a, b) within a face.
    walk = np.stack([np.stack([a, c], 1), np.stack([b, c], 1), np.stack([a, b], 1)], axis=1).reshape(-1, 2)
    key = np.sort(walk, axis=1)
    key_id = key[:, 0] * n_old + key[:, 1]
    unique_ids, first_seen, inverse = np.unique(key_id, return_index=True, return_inverse=True)
    # Number each distinct edge by the position where the walk first meets it.
    rank = np.empty(len(unique_ids), dtype=np.int64)
    rank[np.argsort(first_seen, kind="stable")] = np.arange(len(unique_ids))
    mid = (n_old + rank[inverse]).reshape(n_face, 3)
    m_ac, m_bc, m_ab = mid[:, 0], mid[:, 1], mid[:, 2]
    parents = walk[np.sort(first_seen)]
    new_vertices = vertices[parents[:, 0]] + vertices[parents[:, 1]]
    new_vertices /= np.linalg.norm(new_vertices, axis=1, keepdims=True)
    corner_a = np.stack([a, m_ab, m_ac], axis=1)
    rest = np.stack([
        np.stack([m_ac, m_bc, c], axis=1),
        np.stack([m_ab, m_bc, m_ac], axis=1),
        np.stack([m_ab, b, m_bc], axis=1),
    ], axis=1).reshape(-1, 3)
    return np.concatenate([vertices, new_vertices]), np.concatenate([corner_a, rest]), parents


@level_cache
def _build(level: int) -> tuple[IcoSphere, np.ndarray]:
    if level == 0:
        vertices, faces, parents = _ic0_vertices(), IC0_FACES.copy(), np.zeros((0, 2), np.int64)
    else:
        coarse, _ = _build(level - 1)
        vertices, faces, parents = _subdivide(coarse.vertices, coarse.faces)
    for arr in (vertices, faces, parents):
        arr.setflags(write=False)
    return IcoSphere(vertices=vertices, faces=faces, source=f"icosphere level {level}", level=level), parents


def icosphere(level: int) -> IcoSphere:
    """The level-``level`` icosahedral sphere in FreeSurfer order (cached; arrays are read-only).

    Parameters
    ----------
    level : int
        0..7 (12, 42, 162, 642, 2562, 10242, 40962, 163842 vertices).

    Returns
    -------
    IcoSphere
        :class:`IcoSphere` with ``vertices`` (V, 3) on the unit sphere and outward ``faces`` (F, 3).
    """
    return _build(check_level(level))[0]


def upsample_parents(level: int) -> np.ndarray:
    """The two parents of each vertex that level ``level`` adds to level ``level - 1``.

    Returns
    -------
    ndarray
        (V(level) - V(level-1), 2) int64: row ``i`` holds the level-``level - 1`` vertices whose
        normalised midpoint is vertex ``V(level-1) + i``.
    """
    level = check_level(level)
    if level == 0:
        raise ValueError("level 0 has no parents: upsampling starts from level 0 to level 1")
    return _build(level)[1]
