"""Reading, validating and writing NIfTI volumes and brain masks (nibabel).

Every check names the file (or the position in the list when the volume came as an array), the
offending value and what was expected. Volumes are returned as float32 3-D arrays; masks as bool
3-D arrays. Nothing here writes over an input: :func:`save_volume` goes through
:func:`surfharm._atomic.atomic_path`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surfharm._atomic import atomic_path
from surfharm.errors import HarmonizerInputError
from surfharm.io.errors import InputFileError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Affines that differ by less than this (mm, or unitless for the rotation part) are the same grid:
# NIfTI headers store float32, so a round trip through a file changes the last digits.
AFFINE_ATOL = 1e-3


class VolumeInputError(InputFileError, HarmonizerInputError):
    """A volume or mask that cannot be used (wrong shape, affine, dimension, empty, NaN...).

    An input-file error of :mod:`surfharm.io` and an input error of the harmonizers alike (both
    ``ValueError`` and :class:`surfharm.errors.SurfharmError`), since volumes reach the volumetric
    harmonizers as files or arrays.
    """


@dataclass(frozen=True)
class Volume:
    """One 3-D volume: ``data`` (X, Y, Z) float32, its voxel-to-world ``affine`` (4, 4) in mm,
    and ``name`` (the file path, or ``"volume <i>"`` for an in-memory array), used in messages."""

    data: np.ndarray
    affine: np.ndarray | None
    name: str


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii``/``.nii.gz`` (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def list_niftis(folder: str | os.PathLike) -> list[Path]:
    """The ``.nii``/``.nii.gz`` files of ``folder``, sorted by name; an error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeInputError(f"{folder}: is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_path(p))
    if not files:
        raise VolumeInputError(f"{folder}: holds no .nii or .nii.gz file")
    return files


def load_volume(source, name: str | None = None) -> Volume:
    """Read one 3-D volume from a path, a nibabel image or an array (a :class:`Volume` passes through).

    A 4-D volume whose fourth axis has length 1 is squeezed to 3-D; any other shape is refused.
    inf is refused everywhere; NaN is checked against the mask later (:func:`check_finite_in_mask`).
    """
    import nibabel as nib

    if isinstance(source, Volume):
        return source
    affine = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise VolumeInputError(f"{path}: file does not exist")
        try:
            img = nib.load(path)
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise VolumeInputError(f"{path}: cannot be read as a NIfTI image ({exc})") from None
        data, affine = np.asanyarray(img.dataobj), img.affine
    elif hasattr(source, "dataobj") and hasattr(source, "affine"):
        name = name or getattr(source, "get_filename", lambda: None)() or "image"
        data, affine = np.asanyarray(source.dataobj), source.affine
    else:
        name = name or "volume"
        data = np.asarray(source)
    if data.dtype.kind not in "fiub":
        raise VolumeInputError(f"{name}: voxel type {data.dtype} is not numeric")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeInputError(f"{name}: expected a 3-D volume, got shape {data.shape}"
                               + ("; split a 4-D series into 3-D volumes first" if data.ndim == 4 else ""))
    data = np.asarray(data, dtype=np.float32)
    if np.isinf(data).any():
        raise VolumeInputError(f"{name}: holds {int(np.isinf(data).sum())} infinite voxels, first at "
                               f"{tuple(int(i) for i in np.argwhere(np.isinf(data))[0])}")
    return Volume(data=data, affine=None if affine is None else np.asarray(affine, float), name=name)


def load_mask(source, reference: Volume, name: str | None = None) -> np.ndarray:
    """Read a brain mask and check it against ``reference``; return a bool 3-D array.

    A voxel is in the mask when its value is > 0.5 (binary masks and probability maps both work).
    The mask must have the volume's shape and (when both are known) its affine, and must not be empty.
    """
    if isinstance(source, np.ndarray) and source.dtype == bool:
        # An in-memory bool mask needs no conversion (and cannot hold NaN).
        mask = Volume(data=np.squeeze(source, axis=3) if source.ndim == 4 and source.shape[3] == 1 else source,
                      affine=None, name=name or "mask")
        if mask.data.ndim != 3:
            raise VolumeInputError(f"{mask.name}: expected a 3-D mask, got shape {mask.data.shape}")
    else:
        mask = load_volume(source, name=name)
    if mask.data.shape != reference.data.shape:
        raise VolumeInputError(f"mask {mask.name} has shape {mask.data.shape} but volume {reference.name} "
                               f"has shape {reference.data.shape}; expected the same voxel grid")
    if mask.affine is not None and reference.affine is not None and not np.allclose(
            mask.affine, reference.affine, atol=AFFINE_ATOL):
        raise VolumeInputError(
            f"mask {mask.name} has another affine than volume {reference.name} (largest difference "
            f"{np.abs(mask.affine - reference.affine).max():.4g} mm); expected the same voxel grid; "
            f"resample the mask onto the volume first")
    if mask.data.dtype == bool:
        mask_bool = mask.data
    else:
        if np.isnan(mask.data).any():
            raise VolumeInputError(f"mask {mask.name} holds NaN voxels; expected 0/1 values")
        mask_bool = mask.data > 0.5
    if not mask_bool.any():
        raise VolumeInputError(f"mask {mask.name} is empty (no voxel > 0.5); expected a brain mask")
    return mask_bool


def derive_mask(volume: Volume) -> np.ndarray:
    """Foreground mask of a skull-stripped volume: voxels > 0, largest connected part, holes filled.

    For a volume that still has its skull, give a brain mask instead: the foreground would then
    include scalp and skull, and every method would learn from them.
    """
    from scipy import ndimage

    foreground = np.nan_to_num(volume.data, nan=0.0) > 0
    labels, n = ndimage.label(foreground)
    if n == 0:
        raise VolumeInputError(f"{volume.name}: no voxel > 0, so no brain mask can be derived; give a mask")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def check_finite_in_mask(volume: Volume, mask: np.ndarray) -> None:
    """Refuse NaN voxels inside the mask (outside it they are ignored)."""
    bad = np.isnan(volume.data) & mask
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise VolumeInputError(f"{volume.name}: {int(bad.sum())} NaN voxels inside the brain mask, first at "
                               f"voxel {first}; fill them or remove them from the mask")


def check_same_grid(volumes: Sequence[Volume], what: str = "voxel-wise methods") -> None:
    """All volumes on one voxel grid (same shape and affine), as voxel-wise methods need."""
    ref = volumes[0]
    for vol in volumes[1:]:
        if vol.data.shape != ref.data.shape:
            raise VolumeInputError(f"{vol.name} has shape {vol.data.shape} but {ref.name} has {ref.data.shape}; "
                                   f"{what} need every scan registered to one grid")
        if vol.affine is not None and ref.affine is not None and not np.allclose(vol.affine, ref.affine,
                                                                                 atol=AFFINE_ATOL):
            raise VolumeInputError(f"{vol.name} has another affine than {ref.name}; {what} need every scan "
                                   "registered to one grid")


def save_volume(data: np.ndarray, path: str | os.PathLike, *, like=None,
                affine: np.ndarray | None = None, inputs: Sequence = ()) -> Path:
    """Write ``data`` (3-D) as a float32 NIfTI at ``path``, atomically, never over one of ``inputs``.

    ``like`` (a NIfTI path or a :class:`Volume` read from one) lends its affine and header, so that
    orientation codes and units carry over; ``affine`` overrides it; the default is the identity.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise VolumeInputError(f"output {path} must end in .nii or .nii.gz")
    header = None
    like_path = like.name if isinstance(like, Volume) else like
    if like_path is not None and Path(like_path).is_file():
        like_img = nib.load(like_path)  # header only: the voxel data are not read
        header = like_img.header.copy()
        affine = like_img.affine if affine is None else affine
    if affine is None:
        affine = like.affine if isinstance(like, Volume) and like.affine is not None else np.eye(4)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine, header=header)
    img.set_data_dtype(np.float32)
    # Harmonized intensities are real numbers: drop any integer scaling of the input header.
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, inputs=inputs) as tmp:
        nib.save(img, tmp)
    return path
