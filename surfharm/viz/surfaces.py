"""Which mesh to draw a map on: fsaverage5 meshes shipped with nilearn, or any surface the user gives.

A map is drawn on a mesh with exactly one vertex per value. Named surfaces (``"pial"``, ``"white"``,
``"inflated"``, ``"sphere"``) are nilearn's fsaverage5 meshes (offline). Maps on other icosahedral
levels still draw on them, because icosahedral meshes in FreeSurfer order are nested (the first
V(k) vertices of level k+1 are level k):

- finer maps (fsaverage6 40962, fsaverage 163842 values) are cut to their first 10242 values,
  which are exactly their values at the fsaverage5 vertices;
- coarser maps (ic4 2562, ic3 642, ...) draw on the first V(k) fsaverage5 vertices connected by
  the level-k icosahedron's faces.

Hemispheres: ``"lh"``/``"rh"`` (``"left"``/``"right"`` accepted, see :mod:`surfharm.hemispheres`);
``"both"`` means one array holding the left hemisphere then the right one (as FreeSurfer/ENIGMA tables
and surfharm Cohorts stack them).

Meshes are :class:`spherical_ops.Surface` (as :func:`surfharm.io.read_surface` returns them); their
``source`` names them in messages.
"""
from __future__ import annotations

import os

import numpy as np

from spherical_ops.mesh import Surface
from surfharm.atlas import FSAVERAGE5_SURFACES as SURFACE_NAMES
from surfharm.hemispheres import HEMIS, HemisphereError, hemi_name
from surfharm.viz.mesh import MeshError, check_mesh

FSAVERAGE5_VERTICES = 10242


def normalize_hemi(hemi: str) -> str:
    """``"lh"``/``"left"``... -> ``"lh"``/``"rh"``; ``"both"`` stays ``"both"`` (MeshError otherwise)."""
    try:
        return hemi_name(hemi, allow_both=True)
    except HemisphereError as exc:
        raise MeshError(str(exc)) from None


def split_hemispheres(values, hemi: str = "lh") -> dict[str, np.ndarray]:
    """Return ``{hemi: values}`` for each hemisphere present, keyed ``"lh"``/``"rh"``.

    ``values`` is a dict ``{"lh": ..., "rh": ...}`` (either key optional; ``"left"``/``"right"``
    accepted), or an array whose last axis holds vertices of ``hemi``; with ``hemi="both"`` the last
    axis is split in two equal halves (left then right). Works for one map (V,) and for stacks of maps
    (n_scans, V).
    """
    if isinstance(values, dict):
        out = {normalize_hemi(k): np.asarray(v) for k, v in values.items() if v is not None}
        if not out:
            raise MeshError("no map given: the dict of hemispheres is empty")
        return {h: out[h] for h in HEMIS if h in out}
    arr = np.asarray(values)
    side = normalize_hemi(hemi)
    if side != "both":
        return {side: arr}
    n = arr.shape[-1]
    if n % 2:
        raise MeshError(f"hemi='both' needs the left then the right hemisphere's values (an even count), got {n}")
    return {"lh": arr[..., : n // 2], "rh": arr[..., n // 2:]}


def fsaverage5_mesh(surface: str = "inflated", hemi: str = "lh") -> Surface:
    """nilearn's fsaverage5 mesh (10242 vertices, mm): ``surface`` in pial, white, inflated, sphere."""
    from surfharm.atlas import fsaverage5_surface

    if str(surface).lower() not in SURFACE_NAMES:
        raise MeshError(f"unknown surface {surface!r}; expected one of {', '.join(sorted(SURFACE_NAMES))} "
                        "or the path of a FreeSurfer/GIfTI surface file")
    side = normalize_hemi(hemi)
    if side == "both":
        raise MeshError("fsaverage5_mesh draws one hemisphere at a time: hemi must be 'lh' or 'rh'")
    return fsaverage5_surface(surface, side)


def read_surface_file(path: str | os.PathLike) -> Surface:
    """Read a FreeSurfer surface (``lh.pial``, ``lh.white.gz``...) or a GIfTI surface (``.surf.gii``)."""
    from surfharm.io import read_surface

    verts, tris = _vertices_faces(read_surface(path))
    verts, tris = check_mesh(verts, tris, name=str(path))
    return Surface(verts, tris, str(path))


def read_map_file(path: str | os.PathLike, frame: int | None = None) -> np.ndarray:
    """Read a per-vertex map: FreeSurfer curv (``lh.thickness``), MGH/MGZ, or GIfTI (``.func.gii``/``.shape.gii``).

    ``frame`` picks one map of a file holding several (a stacked MGH: frame i = scan i); without it
    such a file is refused with a message giving the number of frames.
    """
    from surfharm.io import read_maps

    maps = np.asarray(read_maps(path))
    if frame is None:
        if maps.shape[0] != 1:
            raise MeshError(f"{path} holds {maps.shape[0]} maps (frames); choose one with frame=0..{maps.shape[0] - 1}")
        return np.asarray(maps[0], dtype=np.float64)
    if not -maps.shape[0] <= int(frame) < maps.shape[0]:
        raise MeshError(f"{path} holds {maps.shape[0]} maps (frames 0..{maps.shape[0] - 1}); "
                        f"frame {frame} does not exist")
    return np.asarray(maps[int(frame)], dtype=np.float64)


def load_surface(surface, hemi: str = "lh") -> Surface:
    """Resolve ``surface`` for one hemisphere.

    ``surface`` is a name (pial, white, inflated, sphere: fsaverage5), a file path, a
    ``(vertices, faces)`` pair, an object with ``.vertices`` and ``.faces`` (a
    :class:`spherical_ops.Surface`, e.g. an IcoSphere), or a dict ``{"lh": ..., "rh": ...}`` of any of
    those (``"left"``/``"right"`` keys accepted).
    """
    side = normalize_hemi(hemi)
    if isinstance(surface, dict):
        given = {normalize_hemi(k): v for k, v in surface.items()}
        if side not in given:
            raise MeshError(f"no surface given for the {side} hemisphere (got {', '.join(given)})")
        surface = given[side]
    if isinstance(surface, str) and surface.lower() in SURFACE_NAMES:
        return fsaverage5_mesh(surface.lower(), side)
    if isinstance(surface, (str, os.PathLike)):
        return read_surface_file(surface)
    verts, tris = _vertices_faces(surface)
    name = getattr(surface, "source", None) or "given surface"
    verts, tris = check_mesh(verts, tris, name=name)
    return Surface(verts, tris, name)


def mesh_for_map(surface, hemi: str, n_values: int) -> tuple[Surface, slice]:
    """Return the mesh to draw a map of ``n_values`` values on, and the slice of values to draw.

    Named surfaces adapt to any icosahedral level (see the module docstring); a user surface must
    have exactly ``n_values`` vertices.
    """
    from spherical_ops import VERTEX_COUNTS, icosphere, level_of

    named = isinstance(surface, str) and surface.lower() in SURFACE_NAMES
    if isinstance(surface, dict):
        named = False
    mesh = load_surface(surface, hemi)
    if not named:
        if mesh.n_vertices != n_values:
            raise MeshError(f"the map has {n_values} values but the surface {mesh.source} has {mesh.n_vertices} "
                            "vertices; expected one value per vertex")
        return mesh, slice(0, n_values)
    if n_values == FSAVERAGE5_VERTICES:
        return mesh, slice(0, n_values)
    if n_values not in tuple(VERTEX_COUNTS):
        raise MeshError(f"the map has {n_values} values: not an icosahedral (fsaverage) map, expected one of "
                        f"{', '.join(str(v) for v in VERTEX_COUNTS)}; pass surface= a mesh with {n_values} vertices "
                        "(e.g. the subject's lh.pial) to draw a native map")
    if n_values > FSAVERAGE5_VERTICES:
        return mesh, slice(0, FSAVERAGE5_VERTICES)
    coarse = icosphere(level_of(n_values))
    return Surface(mesh.vertices[:n_values], np.asarray(coarse.faces, dtype=np.int64),
                   f"{mesh.source} (ic{coarse.level})"), slice(0, n_values)


def _vertices_faces(surface) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(surface, "vertices") and hasattr(surface, "faces"):
        return np.asarray(surface.vertices), np.asarray(surface.faces)
    if hasattr(surface, "coordinates") and hasattr(surface, "faces"):  # nilearn's InMemoryMesh
        return np.asarray(surface.coordinates), np.asarray(surface.faces)
    if isinstance(surface, (tuple, list)) and len(surface) == 2:
        return np.asarray(surface[0]), np.asarray(surface[1])
    raise MeshError(f"cannot use {type(surface).__name__} as a surface; expected a name "
                    f"({', '.join(sorted(SURFACE_NAMES))}), a file path, a (vertices, faces) pair or an object "
                    "with .vertices and .faces")
