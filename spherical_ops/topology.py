"""Neighbourhood, pooling and upsampling index tables of the icosahedral spheres (vectorised, cached).

All tables are int64 numpy arrays (read-only, cached per level) indexing the vertices of
:func:`spherical_ops.icosphere` in FreeSurfer order.

Angular order: the neighbours of a vertex are listed counter-clockwise seen from outside the sphere,
starting with the neighbour that lies first counter-clockwise from the local "north" direction
(the tangent direction towards +z; towards +x at the poles). The 12 icosahedron vertices have five
neighbours instead of six: their sixth slot repeats the centre, so every row has the same width and a
convolution weight never mixes a missing neighbour with a real one.
"""
from __future__ import annotations

import numpy as np

from spherical_ops._cache import level_cache
from spherical_ops.mesh import check_level, icosphere, n_vertices, upsample_parents


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


@level_cache
def adjacency(level: int):
    """Vertex adjacency of the level-``level`` sphere: (V, V) ``scipy.sparse`` CSR, 1 where an edge joins
    two vertices."""
    import scipy.sparse as sp   # only here and for the 2-ring: building a network needs no scipy

    indptr, indices = _edge_lists(level)
    v = n_vertices(level)
    return sp.csr_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(v, v))


def _edge_lists(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours of every vertex as CSR arrays ``(indptr (V + 1,), indices)``, sorted within each row."""
    faces = icosphere(level).faces.astype(np.int32)
    # The sphere is closed and its faces consistently oriented, so the directed edges a->b, b->c, c->a
    # of all faces list every edge exactly once in each direction: no symmetrisation or duplicates.
    rows = faces.reshape(-1)
    cols = faces[:, [1, 2, 0]].reshape(-1)
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_vertices(level)))])
    return indptr, cols[order]


def _angular_sort(centres: np.ndarray, ring: np.ndarray, valid: np.ndarray, vertices: np.ndarray,
                  chunk: int = 8192) -> np.ndarray:
    """Sort each row of ``ring`` (V, K) counter-clockwise around its centre; invalid slots go last.

    Works on ``chunk`` vertices at a time so that the float temporaries stay small at level 7.
    """
    out = np.empty_like(ring)
    for start in range(0, len(centres), chunk):
        sl = slice(start, start + chunk)
        out[sl] = _angular_sort_chunk(centres[sl], ring[sl], valid[sl], vertices)
    return out


def _angular_sort_chunk(centres, ring, valid, vertices):
    n = vertices[centres]                                       # (v, 3) outward normals
    ref = np.zeros_like(n)
    ref[:, 2] = 1.0
    polar = np.abs(n[:, 2]) > 1.0 - 1e-9
    ref[polar] = (1.0, 0.0, 0.0)
    e1 = ref - np.sum(ref * n, axis=1, keepdims=True) * n       # local north in the tangent plane
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(n, e1)                                        # (e1, e2, n) right-handed: CCW from outside
    d = vertices[ring] - n[:, None, :]
    angle = np.mod(np.arctan2(np.einsum("vkd,vd->vk", d, e2), np.einsum("vkd,vd->vk", d, e1)), 2 * np.pi)
    angle[~valid] = np.inf
    order = np.argsort(angle, axis=1, kind="stable")
    return np.take_along_axis(ring, order, axis=1)


def _padded_rows(indptr: np.ndarray, indices: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of each CSR row padded to ``width``: ``(indices (V, width), valid mask)``."""
    counts = np.diff(indptr)
    n_rows = counts.size
    if counts.max() > width:
        raise RuntimeError(f"a vertex has {counts.max()} neighbours, more than {width}")
    rows = np.repeat(np.arange(n_rows, dtype=np.int32), counts)
    slot = (np.arange(indices.size, dtype=np.int32) - np.repeat(indptr[:-1], counts)).astype(np.int8)
    out = np.repeat(np.arange(n_rows)[:, None], width, axis=1)   # pad with the centre
    valid = np.zeros((n_rows, width), bool)
    out[rows, slot] = indices
    valid[rows, slot] = True
    return out, valid


@level_cache
def neighbors_1ring(level: int) -> np.ndarray:
    """1-ring neighbourhoods: (V, 7) int64, six neighbours in angular order then the centre.

    The 12 pentagon vertices (indices 0-11) repeat the centre in slot 5.
    """
    level = check_level(level)
    v = n_vertices(level)
    ring, valid = _padded_rows(*_edge_lists(level), 6)
    centres = np.arange(v)
    ring = _angular_sort(centres, ring, valid, icosphere(level).vertices)
    return _readonly(np.concatenate([ring, centres[:, None]], axis=1))


@level_cache
def neighbors_2ring(level: int) -> np.ndarray:
    """2-ring neighbourhoods: (V, 19) int64: the six 1-ring neighbours (as in :func:`neighbors_1ring`),
    then the twelve vertices at graph distance 2 in angular order, then the centre.

    Vertices with fewer than 6 + 12 such neighbours (pentagons and their neighbours) repeat the
    centre in the missing slots.
    """
    import scipy.sparse as sp

    level = check_level(level)
    v = n_vertices(level)
    adj = adjacency(level).astype(np.int32)
    eye = sp.identity(v, dtype=np.int32, format="csr")
    within2 = ((adj + eye) @ (adj + eye)) > 0
    second = (within2.astype(np.int8) - ((adj + eye) > 0).astype(np.int8)).tocsr()
    second.eliminate_zeros()
    second.sort_indices()
    ring2, valid = _padded_rows(second.indptr, second.indices, 12)
    ring2 = _angular_sort(np.arange(v), ring2, valid, icosphere(level).vertices)
    one = neighbors_1ring(level)
    return _readonly(np.concatenate([one[:, :6], ring2, one[:, 6:]], axis=1))


@level_cache
def pooling_index(level: int) -> np.ndarray:
    """Pooling table from level ``level`` to ``level - 1``: (V(level-1), 7) int64.

    Row ``i`` lists the 7-vertex ring of coarse vertex ``i`` in the fine mesh (nesting makes coarse
    vertex ``i`` the fine vertex ``i``): its six fine neighbours in angular order, then itself.
    """
    level = check_level(level)
    if level == 0:
        raise ValueError("cannot pool below level 0")
    return _readonly(np.ascontiguousarray(neighbors_1ring(level)[: n_vertices(level - 1)]))


@level_cache
def upsampling_parents(level: int) -> np.ndarray:
    """Parents of the vertices that level ``level`` adds: (V(level) - V(level-1), 2) int64.

    Row ``i`` holds the two level-``level - 1`` vertices whose normalised midpoint is vertex
    ``V(level-1) + i`` (same as :func:`spherical_ops.upsample_parents`).
    """
    return upsample_parents(level)


@level_cache
def upconv_slots(level: int) -> np.ndarray:
    """Where each fine vertex reads its transposed-convolution value: (V(level), 2) int64.

    The transposed convolution from level ``level - 1`` gives every coarse vertex ``i`` seven outputs,
    one per slot ``k`` of its fine 1-ring (slot 6 = itself). Output ``(i, k)`` is stored at flat
    position ``7 * i + k``. Fine vertex ``u`` averages the two positions in row ``u``:
    a coarse vertex reads its own centre slot twice; a new vertex reads the slot it occupies in the
    ring of each of its two parents.
    """
    level = check_level(level)
    if level == 0:
        raise ValueError("level 0 has no coarser level to upsample from")
    n_coarse = n_vertices(level - 1)
    ring = pooling_index(level)[:, :6]                          # (n_coarse, 6) fine neighbours
    parents = upsampling_parents(level)                         # (n_new, 2)
    new = np.arange(n_coarse, n_vertices(level))
    slots = np.empty((new.size, 2), np.int64)
    for j in range(2):
        p = parents[:, j]
        hit = ring[p] == new[:, None]                           # exactly one slot matches
        slots[:, j] = 7 * p + np.argmax(hit, axis=1)
    own = 7 * np.arange(n_coarse) + 6
    return _readonly(np.concatenate([np.stack([own, own], 1), slots]))
