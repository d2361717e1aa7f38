"""Distances on the cortical surface for SAN: geodesic neighbourhoods and kernel distances.

* Geodesic neighbourhoods (SAN's stage 1): shortest paths along the edges of the icosahedral mesh
  of the map's level, each edge weighted by its length on the fsaverage pial (or white) surface,
  kept up to a radius (mm). An edge path is the usual graph approximation of the geodesic: it is
  never shorter than the true geodesic and exceeds it by a few percent on a triangulated surface.
  Coordinates: nilearn's fsaverage5 mesh (offline). Maps of levels 0-4 use its first vertices (the
  meshes are nested, FreeSurfer order); levels 6-7 (fsaverage6, fsaverage) place each new vertex at
  the midpoint of its two parents on the fsaverage5 surface, an approximation of those meshes' own
  pial coordinates (which are not shipped offline) that keeps every fsaverage5 position exact.
  Computed once per (surface, hemisphere, level, radius), kept in memory and, when the cache
  folder is writable, on disk (``$SURFHARM_CACHE_DIR``, default ``~/.cache/surfharm/san``).
* Kernel distances (stage 2): chordal distances between the vertices of the registration sphere
  (radius 100 mm, FreeSurfer's ``?h.sphere``). Exponential, squared-exponential and Wendland
  functions of a Euclidean distance are positive definite, which a covariance kernel must be;
  graph geodesics of a folded surface do not guarantee that. The sphere keeps neighbours along the
  cortex (no short-cuts across a sulcus), as the registration does.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spherical_ops import icosphere, n_vertices, upsample_parents

SPHERE_RADIUS_MM = 100.0
_CHUNK_BYTES = 64 * 2**20


def cache_dir() -> Path:
    root = os.environ.get("SURFHARM_CACHE_DIR")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "surfharm"
    return base / "san"


@functools.lru_cache(maxsize=8)
def surface_coordinates(surface: str, hemi: str, level: int) -> np.ndarray:
    """(V(level), 3) mm coordinates of the fsaverage ``surface`` (pial, white) at ``level`` (see module)."""
    from surfharm.atlas import fsaverage5_surface

    coords = np.asarray(fsaverage5_surface(surface, hemi).vertices, dtype=np.float64)
    if level <= 5:
        return coords[: n_vertices(level)].copy()
    for k in range(6, level + 1):
        parents = upsample_parents(k)
        coords = np.concatenate([coords, 0.5 * (coords[parents[:, 0]] + coords[parents[:, 1]])])
    return coords


@functools.lru_cache(maxsize=8)
def sphere_coordinates(level: int) -> np.ndarray:
    """(V(level), 3) vertices of the icosahedral sphere of radius 100 mm."""
    return np.asarray(icosphere(level).vertices, dtype=np.float64) * SPHERE_RADIUS_MM


def geodesic_neighbourhoods(level: int, radius_mm: float, surface: str = "pial", hemi: str = "lh") -> sp.csr_matrix:
    """(V, V) CSR of edge-path distances (mm) up to ``radius_mm``, the diagonal stored as a tiny
    positive value (1e-9) so that every vertex is in its own neighbourhood. Cached (see module)."""
    key = (int(level), float(radius_mm), str(surface).lower(), str(hemi))
    return _neighbourhoods_cached(*key)


@functools.lru_cache(maxsize=8)
def _neighbourhoods_cached(level: int, radius_mm: float, surface: str, hemi: str) -> sp.csr_matrix:
    name = f"geodesic_{surface}_{hemi}_ic{level}_r{radius_mm:g}.npz"
    path = cache_dir() / name
    if path.exists():
        try:
            return sp.load_npz(path).tocsr()
        except Exception:  # a damaged cache file is recomputed
            pass
    coords = surface_coordinates(surface, hemi, level)
    faces = np.asarray(icosphere(level).faces)
    out = neighbourhoods_from_mesh(coords, faces, radius_mm)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        sp.save_npz(tmp, out)
        os.replace(tmp, path)
    except OSError:
        pass                                             # a read-only home: the memory cache still works
    return out


def neighbourhoods_from_mesh(coords: np.ndarray, faces: np.ndarray, radius_mm: float) -> sp.csr_matrix:
    """Edge-path distances up to ``radius_mm`` on a mesh (see :func:`geodesic_neighbourhoods`)."""
    from scipy.sparse.csgraph import dijkstra

    n = coords.shape[0]
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    length = np.linalg.norm(coords[i] - coords[j], axis=1)
    graph = sp.coo_matrix((length, (i, j)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T).tocsr()
    rows, cols, vals = [], [], []
    step = max(1, _CHUNK_BYTES // (8 * n))
    for start in range(0, n, step):
        sources = np.arange(start, min(start + step, n))
        dist = dijkstra(graph, directed=False, indices=sources, limit=radius_mm)
        r, c = np.nonzero(dist <= radius_mm)
        rows.append(sources[r])
        cols.append(c)
        vals.append(np.maximum(dist[r, c], 1e-9))
    out = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out.sort_indices()
    return out


def neighbourhoods_from_matrix(distances: np.ndarray, radius_mm: float) -> sp.csr_matrix:
    """The same structure from a user's dense (V, V) distance matrix."""
    D = np.asarray(distances, dtype=np.float64)
    r, c = np.nonzero(D <= radius_mm)
    out = sp.csr_matrix((np.maximum(D[r, c], 1e-9), (r, c)), shape=D.shape)
    out.sort_indices()
    return out


def matrix_digest(distances: np.ndarray) -> str:
    """A short fingerprint of a distance matrix (kept in model files to check it at loading)."""
    arr = np.ascontiguousarray(np.asarray(distances, dtype=np.float64))
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]
