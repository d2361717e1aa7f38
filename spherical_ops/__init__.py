"""Icosahedral spherical-mesh core: FreeSurfer-order icospheres, topology tables and spherical CNN layers.

Depends on numpy, scipy and torch only; never imports ``surfharm``. The meshes and tables need only
numpy (scipy only for ``topology.adjacency`` and the 2-ring, so a 1-ring network never loads it); torch
is imported the first time a layer is used (``spherical_ops.IcoConv`` ...), so reading meshes stays fast.
"""
from spherical_ops import topology
from spherical_ops.mesh import (
    MAX_LEVEL,
    VERTEX_COUNTS,
    IcoSphere,
    Surface,
    icosphere,
    level_of,
    n_faces,
    n_vertices,
    upsample_parents,
)

_LAYERS = ("IcoConv", "IcoPool", "IcoUNet", "IcoUpConv", "IcoUpsample", "GroupNormLeakyReLU")

__all__ = [
    "MAX_LEVEL", "VERTEX_COUNTS", "IcoSphere", "Surface", "icosphere", "level_of", "n_faces", "n_vertices",
    "upsample_parents", "topology", *_LAYERS,
]


def __getattr__(name):
    if name in _LAYERS or name in ("nn", "functional"):
        import importlib

        nn_module = importlib.import_module("spherical_ops.nn")
        if name == "nn":
            return nn_module
        if name == "functional":
            return importlib.import_module("spherical_ops.functional")
        return getattr(nn_module, name)
    raise AttributeError(f"module 'spherical_ops' has no attribute {name!r}")
