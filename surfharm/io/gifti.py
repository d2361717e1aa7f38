"""GIfTI: shape/func maps (``.shape.gii``, ``.func.gii``) and surfaces (``.surf.gii``), ``.gii.gz`` too."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from surfharm._atomic import atomic_path
from surfharm.io._files import existing_file, read_all_bytes
from surfharm.io.errors import InputFileError
from surfharm.io.surface import Surface, validate_surface

_POINTSET = nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]
_TRIANGLE = nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]
_HEMI_STRUCTURE = {"lh": "CortexLeft", "rh": "CortexRight"}


def load_gifti(path: str | os.PathLike) -> nib.gifti.GiftiImage:
    """Parse a GIfTI file (gzipped or not); a file that is not GIfTI XML names the file."""
    path = existing_file(path)
    data = read_all_bytes(path)
    if data.lstrip()[:5] not in (b"<?xml", b"<GIFT"):
        raise InputFileError(f"{path}: not a GIfTI file (expected XML starting with '<?xml', got {data[:8]!r})")
    try:
        return nib.GiftiImage.from_bytes(data)
    except Exception as exc:
        raise InputFileError(f"{path}: truncated or corrupt GIfTI ({type(exc).__name__}: {exc})") from None


def read_gifti_maps(path: str | os.PathLike) -> np.ndarray:
    """Read every data array of a shape/func/label GIfTI.

    Returns
    -------
    ndarray
        (n_arrays, V) array: one row per data array (a ``.func.gii`` time series or a stack of subjects).
    """
    image = load_gifti(path)
    arrays = [d.data for d in image.darrays if d.intent not in (_POINTSET, _TRIANGLE)]
    if not arrays:
        raise InputFileError(f"{path}: GIfTI holds no map (only {len(image.darrays)} surface arrays); "
                             "read it with read_surface")
    sizes = {np.asarray(a).size for a in arrays}
    if len(sizes) != 1:
        raise InputFileError(f"{path}: GIfTI data arrays have different lengths {sorted(sizes)}")
    stacked = np.stack([np.asarray(a).reshape(-1) for a in arrays])
    return stacked.astype(np.float32) if stacked.dtype.kind == "f" else stacked


def read_gifti_surface(path: str | os.PathLike) -> Surface:
    """Read a GIfTI surface (one POINTSET and one TRIANGLE array) into a :class:`Surface`."""
    image = load_gifti(path)
    points = [d.data for d in image.darrays if d.intent == _POINTSET]
    triangles = [d.data for d in image.darrays if d.intent == _TRIANGLE]
    if len(points) != 1 or len(triangles) != 1:
        raise InputFileError(f"{path}: expected one POINTSET and one TRIANGLE array in a GIfTI surface, "
                             f"found {len(points)} and {len(triangles)}")
    return validate_surface(points[0], triangles[0], str(path))


def gifti_hemi(path: str | os.PathLike) -> str | None:
    """'lh' / 'rh' from the GIfTI ``AnatomicalStructurePrimary`` metadata, or None when absent."""
    image = load_gifti(path)
    metas = [image.meta] + [d.meta for d in image.darrays]
    for meta in metas:
        value = dict(meta or {}).get("AnatomicalStructurePrimary", "")
        for hemi, structure in _HEMI_STRUCTURE.items():
            if value == structure:
                return hemi
    return None


def write_gifti_map(path: str | os.PathLike, values, *, like: str | os.PathLike | None = None,
                    hemi: str | None = None, inputs=(), overwrite: bool = True) -> Path:
    """Write (V,) or (n_maps, V) values as a shape/func GIfTI (one data array per map).

    ``like``: a GIfTI whose image metadata (e.g. AnatomicalStructurePrimary) is copied.
    ``hemi``: 'lh' or 'rh' to record the hemisphere when ``like`` does not.
    """
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"values for {path} must be (V,) or (n_maps, V), got shape {arr.shape}")
    meta = {}
    if like is not None:
        meta = dict(load_gifti(like).meta or {})
    if hemi is not None:
        meta["AnatomicalStructurePrimary"] = _HEMI_STRUCTURE[hemi]
    dtype = np.int32 if arr.dtype.kind in "iub" else np.float32
    intent = "NIFTI_INTENT_LABEL" if dtype == np.int32 else "NIFTI_INTENT_SHAPE"
    darrays = [nib.gifti.GiftiDataArray(np.ascontiguousarray(row, dtype=dtype), intent=intent,
                                        datatype="NIFTI_TYPE_INT32" if dtype == np.int32 else "NIFTI_TYPE_FLOAT32")
               for row in arr]
    image = nib.GiftiImage(meta=nib.gifti.GiftiMetaData(meta), darrays=darrays)
    with atomic_path(path, inputs=(*inputs, like), overwrite=overwrite) as tmp:
        tmp.write_bytes(image.to_bytes())
    return Path(path)


def write_gifti_surface(path: str | os.PathLike, surface: Surface, *, inputs=(), overwrite: bool = True) -> Path:
    """Write a :class:`Surface` as a GIfTI surface (POINTSET + TRIANGLE)."""
    image = nib.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(surface.vertices, np.float32), intent="NIFTI_INTENT_POINTSET",
                                 datatype="NIFTI_TYPE_FLOAT32"),
        nib.gifti.GiftiDataArray(np.asarray(surface.faces, np.int32), intent="NIFTI_INTENT_TRIANGLE",
                                 datatype="NIFTI_TYPE_INT32"),
    ])
    with atomic_path(path, inputs=inputs, overwrite=overwrite) as tmp:
        tmp.write_bytes(image.to_bytes())
    return Path(path)
