"""Icosahedral spherical-mesh core: FreeSurfer-order icospheres, topology tables and spherical CNN layers.

Depends on numpy and torch only; never imports ``surfharm``.
"""
from spherical_ops.mesh import (
    MAX_LEVEL,
    VERTEX_COUNTS,
    IcoSphere,
    icosphere,
    level_of,
    n_faces,
    n_vertices,
    upsample_parents,
)

__all__ = [
    "MAX_LEVEL", "VERTEX_COUNTS", "IcoSphere", "icosphere", "level_of", "n_faces", "n_vertices",
    "upsample_parents",
]

from spherical_ops import topology  # noqa: E402
from spherical_ops.nn import IcoConv, IcoPool, IcoUNet, IcoUpConv, IcoUpsample  # noqa: E402

__all__ += ["topology", "IcoConv", "IcoPool", "IcoUNet", "IcoUpConv", "IcoUpsample"]
