"""Shared plumbing of the voxel-wise methods (RAVEL, voxel-wise ComBat): one grid, one analysis mask.

Voxel-wise methods model each voxel across scans, so every scan must be registered to one grid.
Their **analysis mask** is the set of voxels inside every training scan's brain mask; it is fixed
by ``fit`` and reused by ``transform``. The in-mask voxels of all scans are held as one float32
matrix ``(n_scans, n_voxels)`` (200 scans x 235k voxels = 190 MB), and the methods work on it in
chunks of voxels so that no float64 copy of the whole matrix is ever made.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from surfharm.errors import ModelFileError
from surfharm.harmonize.base import StateCheck
from surfharm.harmonize.volumetric.base import IntensityMapHarmonizer, Scans
from surfharm.io.nifti import AFFINE_ATOL, Volume, VolumeInputError, load_volume

DEFAULT_CHUNK = 50_000
PRENORMALIZERS = ("white-stripe", "zscore", None)


@dataclass
class VoxelMatrix:
    """In-mask voxels of every scan: ``values`` (n_scans, n_voxels) float32, with the grid they came
    from (``mask`` (X, Y, Z) bool and ``affine``; both None in the matrix form)."""

    values: np.ndarray
    mask: np.ndarray | None
    affine: np.ndarray | None


def prenormalizer(name: str | None) -> IntensityMapHarmonizer | None:
    """The per-scan normalization applied before a voxel-wise method: ``"white-stripe"``,
    ``"zscore"`` or None (the scans are used as given)."""
    if name is None:
        return None
    if name == "white-stripe":
        from surfharm.harmonize.volumetric.white_stripe import WhiteStripe

        return WhiteStripe()
    if name == "zscore":
        from surfharm.harmonize.volumetric.zscore import ZScore

        return ZScore()
    raise VolumeInputError(f"normalize must be one of {PRENORMALIZERS}, got {name!r}")


def chunks(n: int, size: int = DEFAULT_CHUNK) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` items."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def analysis_mask(scans: Scans) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """``(mask, affine, shape)``: voxels inside every scan's brain mask, after checking one grid.

    Given masks are read on their own (a mask shared by all scans once); derived masks need each
    volume. Each volume is checked against its own mask again when its voxels are read.
    """
    ref_vol, common = scans.volume(0)
    common = common.copy()
    shape, affine = ref_vol.data.shape, ref_vol.affine
    for i in range(1, len(scans)):
        if scans.mask_sources is None:
            vol, mask = scans.volume(i)
            check_grid(vol, shape, affine, ref_vol.name)
        elif scans.mask_sources[i] is scans.mask_sources[0]:
            continue
        else:
            mask_vol = load_volume(scans.mask_sources[i], name=f"mask of {scans.name(i)}")
            check_grid(mask_vol, shape, affine, ref_vol.name)
            mask = mask_vol.data > 0.5
        common &= mask
    if not common.any():
        raise VolumeInputError("the brain masks of the scans have no voxel in common; are the scans registered "
                               "to one template?")
    return common, affine, shape


def check_grid(vol: Volume, shape: tuple, affine: np.ndarray | None, reference: str) -> None:
    """Refuse a volume that is not on the grid voxel-wise methods were given (``reference``)."""
    if vol.data.shape != tuple(shape):
        raise VolumeInputError(f"{vol.name} has shape {vol.data.shape} but {reference} has {tuple(shape)}; "
                               "voxel-wise methods need every scan registered to one grid")
    if vol.affine is not None and affine is not None and not np.allclose(vol.affine, affine, atol=AFFINE_ATOL):
        raise VolumeInputError(f"{vol.name} has another affine than {reference}; voxel-wise methods need every "
                               "scan registered to one grid")


def voxel_matrix(scans: Scans, mask: np.ndarray | None, affine, reference: str,
                 per_scan: IntensityMapHarmonizer | None = None, allow_nan: bool = False) -> VoxelMatrix:
    """Read the voxels of ``mask`` of every scan into a float32 matrix (one volume in memory at a time).

    ``per_scan`` (a per-scan intensity method, e.g. WhiteStripe) first normalizes each scan from
    the intensities inside the scan's own brain mask. In the matrix form ``mask`` is None and every
    column is a voxel; a NaN is refused unless ``allow_nan`` (ComBat skips missing values feature
    by feature; RAVEL cannot).
    """
    if scans.is_matrix:
        values = scans.matrix.astype(np.float32)
        if not allow_nan and np.isnan(values).any():
            row, col = np.argwhere(np.isnan(values))[0]
            raise VolumeInputError(f"X holds NaN at scan {row}, voxel {col}; voxel-wise methods need every voxel "
                                   "of the analysis mask in every scan")
        if per_scan is not None:
            for i in range(len(values)):
                values[i] = per_scan.intensity_map(scans.values(i), scans.name(i))(values[i])
        return VoxelMatrix(values, None, None)
    values = np.empty((len(scans), int(mask.sum())), dtype=np.float32)
    for i in range(len(scans)):
        vol, brain = scans.volume(i)
        check_grid(vol, mask.shape, affine, reference)
        data = vol.data if per_scan is None else per_scan.transform_volume(vol, brain)
        inside = data[mask]
        if np.isnan(inside).any():
            raise VolumeInputError(f"{vol.name}: NaN voxels inside the analysis mask (the voxels inside every "
                                   "training scan's brain mask); fill them or mask them out")
        values[i] = inside
    return VoxelMatrix(values, mask, affine)


def volumes_from_matrix(values: np.ndarray, scans: Scans, mask: np.ndarray,
                        per_scan: IntensityMapHarmonizer | None = None) -> Iterator[np.ndarray]:
    """Yield each scan's volume with its harmonized in-mask ``values`` (row i of (n_scans, n_voxels)).

    Voxels outside the analysis mask keep the input's values (after ``per_scan`` when given). A
    generator, so that a caller writing files holds one volume at a time.
    """
    for i in range(len(scans)):
        vol, brain = scans.volume(i)
        data = (vol.data if per_scan is None else per_scan.transform_volume(vol, brain)).astype(np.float32, copy=True)
        data[mask] = values[i]
        yield data


def grid_state(model, arrays: dict, meta: dict) -> None:
    """Add a voxel-wise model's grid (analysis mask, grid shape, affine) to its model-file state."""
    if model.analysis_mask_ is not None:
        arrays["analysis_mask"] = model.analysis_mask_
        meta["grid_shape"] = list(model.grid_shape_)
        if model.affine_ is not None:
            arrays["affine"] = model.affine_


def set_grid_state(model, arrays: dict, meta: dict) -> None:
    """Restore what :func:`grid_state` stored (None for a model fitted on a matrix)."""
    model.analysis_mask_ = arrays["analysis_mask"].astype(bool) if "analysis_mask" in arrays else None
    model.affine_ = arrays.get("affine")
    model.grid_shape_ = tuple(meta["grid_shape"]) if "grid_shape" in meta else None


def check_analysis_mask(check: StateCheck, mask, grid_shape, n_voxels: int) -> None:
    """A loaded analysis mask lies on the stored grid and holds one voxel per model feature."""
    if mask is None:
        return
    check.shape("analysis_mask", mask, tuple(grid_shape) if grid_shape is not None else (None,) * 3)
    if int(mask.sum()) != n_voxels:
        raise ModelFileError(f"{check.path}: parameter 'analysis_mask' holds {int(mask.sum())} voxels but the "
                             f"model has {n_voxels}; the model is damaged: fit it again")

