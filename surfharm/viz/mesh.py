"""Turn a triangle mesh and a per-vertex map into a :class:`pyvista.PolyData` (no rendering).

This is the one place where surfharm's arrays meet VTK: the plotting functions call it, and tests
check it without opening a render window.
"""
from __future__ import annotations

import numpy as np

from surfharm.errors import SurfharmError


class MeshError(SurfharmError, ValueError):
    """A mesh or a map that cannot be drawn; the message names the value and what was expected."""


def check_mesh(vertices, faces, *, name: str = "surface") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(vertices (V, 3) float64, faces (F, 3) int64)`` after checking shapes and indices.

    ``name`` is used in error messages (e.g. the file the mesh came from).
    """
    verts = np.asarray(vertices)
    tris = np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3 or verts.dtype.kind not in "fiu":
        raise MeshError(f"{name}: vertices must be a numeric (n_vertices, 3) array, got shape {verts.shape} "
                        f"and dtype {verts.dtype}")
    if tris.ndim != 2 or tris.shape[1] != 3 or tris.dtype.kind not in "iu":
        raise MeshError(f"{name}: faces must be an integer (n_faces, 3) array of vertex indices, got shape "
                        f"{tris.shape} and dtype {tris.dtype}")
    if not np.isfinite(verts).all():
        raise MeshError(f"{name}: vertex coordinates hold NaN or inf")
    if tris.size and (tris.min() < 0 or tris.max() >= len(verts)):
        raise MeshError(f"{name}: faces index vertices {tris.min()}..{tris.max()} but the mesh has "
                        f"{len(verts)} vertices (expected indices 0..{len(verts) - 1})")
    return verts.astype(np.float64, copy=False), tris.astype(np.int64, copy=False)


def check_values(values, n_vertices: int, *, name: str = "map") -> np.ndarray:
    """Return ``values`` as a 1-D float64 array of length ``n_vertices`` (NaN kept: outside cortex).

    inf is refused: it has no colour and usually means a failed computation upstream.
    """
    vals = np.asarray(values)
    if vals.dtype.kind not in "fiub":
        raise MeshError(f"{name}: values must be numeric, got dtype {vals.dtype}")
    vals = vals.astype(np.float64).reshape(-1) if vals.ndim == 2 and 1 in vals.shape else vals.astype(np.float64)
    if vals.ndim != 1:
        raise MeshError(f"{name}: expected one value per vertex (1-D), got shape {vals.shape}")
    if vals.shape[0] != n_vertices:
        raise MeshError(f"{name} has {vals.shape[0]} values but the surface has {n_vertices} vertices; "
                        "expected one value per vertex")
    if np.isinf(vals).any():
        raise MeshError(f"{name} holds inf at vertex {int(np.flatnonzero(np.isinf(vals))[0])}; "
                        "use NaN for vertices outside cortex")
    return vals


def surface_polydata(vertices, faces, values=None, *, name: str = "values"):
    """Build a triangle :class:`pyvista.PolyData` with an optional per-vertex scalar array.

    Parameters
    ----------
    vertices : (V, 3) array of float, coordinates in mm (or on the unit sphere).
    faces : (F, 3) array of int, vertex indices of each triangle (any orientation).
    values : (V,) array of float or None; NaN marks vertices outside cortex (drawn neutral grey).
    name : name of the point-data array holding ``values`` (made the active scalars).

    Returns
    -------
    pyvista.PolyData with V points and F triangles; ``mesh.point_data[name]`` is float64 (V,).
    """
    import pyvista as pv

    verts, tris = check_mesh(vertices, faces)
    cells = np.hstack([np.full((len(tris), 1), 3, dtype=np.int64), tris]).ravel()
    mesh = pv.PolyData(verts, cells)
    if values is not None:
        mesh.point_data[name] = check_values(values, len(verts), name=name)
        mesh.set_active_scalars(name)
    return mesh
