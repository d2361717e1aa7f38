"""Format-agnostic entry points: pick the reader/writer from the file name, else from the content."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from surfharm.io import freesurfer, gifti
from surfharm.io._files import existing_file, head_bytes
from surfharm.io.errors import InputFileError
from surfharm.io.surface import Surface

def detect_format(path: str | os.PathLike) -> str:
    """One of 'curv', 'surface', 'mgh', 'gifti', 'annot', 'label' from the name, else the magic number."""
    path = existing_file(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".mgh", ".mgz")):
        return "mgh"
    if name.endswith(".gii"):
        return "gifti"
    if name.endswith(".annot"):
        return "annot"
    if name.endswith(".label"):
        return "label"
    head = head_bytes(path, 15)
    if not head:
        raise InputFileError(f"{path}: empty file (gzip stream with no content); expected a FreeSurfer curv/"
                             "surface/MGH/annot/label file or GIfTI")
    if head[:3] == freesurfer.CURV_MAGIC:
        return "curv" if freesurfer._looks_like_curv(path) else "surface"
    if head[:3] in (freesurfer.TRIANGLE_MAGIC, freesurfer.QUAD_MAGIC):
        return "surface"
    if head[:4] == b"\x00\x00\x00\x01":
        return "mgh"
    if head.lstrip()[:5] in (b"<?xml", b"<GIFT"):
        return "gifti"
    if head.startswith(b"#!ascii"):
        return "label"
    raise InputFileError(
        f"{path}: unknown file format (magic bytes {head[:4].hex()}); expected a FreeSurfer curv/surface/"
        "MGH/annot/label file or GIfTI")


def read_maps(path: str | os.PathLike) -> np.ndarray:
    """Read every map of a file: (n_maps, V). A stacked MGH gives one row per frame, a GIfTI one per array."""
    fmt = detect_format(path)
    if fmt == "curv":
        return freesurfer.read_curv(path)[None, :]
    if fmt == "mgh":
        return freesurfer.read_mgh(path)
    if fmt == "gifti":
        return gifti.read_gifti_maps(path)
    if fmt == "annot":
        return freesurfer.read_annot(path).labels[None, :]
    raise InputFileError(f"{path}: is a {fmt} file, not a per-vertex map (curv, MGH/MGZ, GIfTI shape/func, annot)")


def read_map(path: str | os.PathLike) -> np.ndarray:
    """Read one per-vertex map: (V,) (float32 for measures, int64 labels for an annotation).

    A file holding several maps (a stacked MGH, a multi-array GIfTI) is refused: use :func:`read_maps`.
    """
    maps = read_maps(path)
    if maps.shape[0] != 1:
        raise InputFileError(f"{path}: holds {maps.shape[0]} maps (frames); read_map expects one, use read_maps")
    return maps[0]


def read_surface(path: str | os.PathLike) -> Surface:
    """Read a FreeSurfer surface (white, pial, sphere, sphere.reg; ``.gz`` too) or a GIfTI surface."""
    fmt = detect_format(path)
    if fmt == "surface":
        return freesurfer.read_fs_surface(path)
    if fmt == "gifti":
        return gifti.read_gifti_surface(path)
    raise InputFileError(f"{path}: is a {fmt} file, not a surface (expected a FreeSurfer surface or GIfTI surface)")


def write_map(path: str | os.PathLike, values, like: str | os.PathLike | None = None, *,
              hemi: str | None = None, inputs=(), overwrite: bool = True) -> Path:
    """Write (V,) values (or (n, V) for MGH/GIfTI) in the format given by the name of ``path``.

    ``.mgh``/``.mgz`` -> MGH, ``.gii`` (``.shape.gii``, ``.func.gii``) -> GIfTI, anything else ->
    FreeSurfer curv (``.gz`` compressed). ``like``: the input these values correspond to; its vertex
    count must match and it is never overwritten. Atomic.
    """
    arr = np.asarray(values)
    name = str(path).lower()
    if like is not None:
        n_like = read_maps(like).shape[1]
        if arr.shape[-1] != n_like:
            raise ValueError(f"values have {arr.shape[-1]} vertices but {like} has {n_like}; "
                             f"{path} must keep the input's vertex count")
    inputs = (*inputs, like)
    if name.endswith((".mgh", ".mgz")):
        return freesurfer.write_mgh(path, arr, like=like if _is_mgh(like) else None, inputs=inputs, overwrite=overwrite)
    if name.endswith((".gii", ".gii.gz")):
        if name.endswith(".gz"):
            raise ValueError(f"{path}: write GIfTI uncompressed (.gii); its data arrays are already compressed")
        return gifti.write_gifti_map(path, arr, like=like if _is_gifti(like) else None, hemi=hemi,
                                     inputs=inputs, overwrite=overwrite)
    if arr.ndim != 1:
        raise ValueError(f"{path}: a FreeSurfer curv file holds one map, got shape {arr.shape}; use .mgh or .gii")
    return freesurfer.write_curv(path, arr, inputs=inputs, overwrite=overwrite)


def write_surface(path: str | os.PathLike, surface: Surface, *, inputs=(), overwrite: bool = True) -> Path:
    """Write a :class:`Surface`: GIfTI when the name ends in ``.gii``, else a FreeSurfer surface."""
    if str(path).lower().endswith(".gii"):
        return gifti.write_gifti_surface(path, surface, inputs=inputs, overwrite=overwrite)
    return freesurfer.write_fs_surface(path, surface, inputs=inputs, overwrite=overwrite)


_HEMI_NAME = re.compile(r"(?:^|[._-])(lh|rh|left|right|hemi-L|hemi-R)(?:[._-]|$)", re.IGNORECASE)


def hemi_of(path: str | os.PathLike) -> str | None:
    """'lh' or 'rh' from a file name (``lh.thickness``, ``sub-01_hemi-L_...``, ``thick_left.gii``) or
    GIfTI metadata; None when it cannot be told."""
    match = _HEMI_NAME.search(Path(path).name)
    if match:
        token = match.group(1).lower()
        return "lh" if token in ("lh", "left", "hemi-l") else "rh"
    if Path(path).name.lower().removesuffix(".gz").endswith(".gii") and Path(path).exists():
        return gifti.gifti_hemi(path)
    return None


def check_same_hemi(*paths) -> str | None:
    """Return the common hemisphere of ``paths`` (None if none tells); raise when lh and rh are mixed."""
    found = {str(p): hemi_of(p) for p in paths if p is not None}
    hemis = {h for h in found.values() if h}
    if len(hemis) > 1:
        detail = ", ".join(f"{p} is {h}" for p, h in found.items() if h)
        raise InputFileError(f"left and right hemispheres are mixed: {detail}; expected one hemisphere")
    return hemis.pop() if hemis else None


def _is_mgh(path) -> bool:
    return path is not None and detect_format(path) == "mgh"


def _is_gifti(path) -> bool:
    return path is not None and detect_format(path) == "gifti"
