"""Small data classes shared by the readers: a triangle mesh and an annotation.

The mesh type is :class:`spherical_ops.Surface` (re-exported here), the one mesh type of the package:
readers return it, :mod:`surfharm.viz` draws on it, and icospheres (:class:`spherical_ops.IcoSphere`)
are Surfaces too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spherical_ops.mesh import Surface

__all__ = ["Annotation", "Surface", "validate_surface"]


@dataclass(frozen=True, eq=False)
class Annotation:
    """A FreeSurfer annotation (parcellation).

    Attributes
    ----------
    labels : ndarray
        (V,) int64, index into ``names`` per vertex; -1 where no label is assigned.
    names : list[str]
        region names, ``names[labels[v]]`` is vertex v's region.
    ctab : ndarray
        (n_regions, 5) int colour table (r, g, b, alpha, id) as FreeSurfer stores it.
    source : str or None
        the file it was read from, or None.
    """

    labels: np.ndarray
    names: list[str]
    ctab: np.ndarray = field(repr=False)
    source: str | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.labels.shape[0])


def validate_surface(vertices: np.ndarray, faces: np.ndarray, source: str) -> Surface:
    """Return a :class:`Surface` after checking shapes, finiteness and face indices; errors name ``source``."""
    from surfharm.io.errors import InputFileError

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] < 4:
        raise InputFileError(f"{source}: expected (V, 3) vertex coordinates with V >= 4, got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] < 4:
        raise InputFileError(f"{source}: expected (F, 3) triangle faces with F >= 4, got shape {faces.shape}")
    if faces.dtype.kind not in "iu":
        raise InputFileError(f"{source}: face indices must be integers, got dtype {faces.dtype}")
    faces = faces.astype(np.int64, copy=False)
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise InputFileError(f"{source}: {int(bad.sum())} vertices have NaN/inf coordinates "
                             f"(first: vertex {int(np.argmax(bad))})")
    if faces.min() < 0 or faces.max() >= vertices.shape[0]:
        raise InputFileError(
            f"{source}: face indices range {faces.min()}..{faces.max()} "
            f"but the surface has {vertices.shape[0]} vertices")
    return Surface(vertices=vertices, faces=faces, source=source)
