"""Voxel-wise ComBat: :class:`surfharm.harmonize.combat.ComBat` on the voxels of registered scans.

Every voxel of the analysis mask (the voxels inside every training scan's brain mask) is one
ComBat feature. The scans are read one at a time into a float32 matrix (n_scans, n_voxels) and
ComBat itself streams over chunks of scans, so 200 scans of 235k voxels (2 mm) take about
0.2 GB for the matrix plus the same for the output. Optionally each scan is first normalized on
its own (WhiteStripe or z-score), as voxel-wise ComBat on T1 intensities usually is.

Sites are required (ComBat estimates one location and scale per site and voxel) and covariates
(age, sex, diagnosis...) are protected as in ComBat.
"""
from __future__ import annotations

import numpy as np

from surfharm.harmonize.base import StateCheck, register
from surfharm.harmonize.combat import ComBat
from surfharm.harmonize.volumetric.base import VolumeHarmonizer, as_scans
from surfharm.harmonize.volumetric.voxelwise import (
    analysis_mask,
    check_analysis_mask,
    grid_state,
    prenormalizer,
    set_grid_state,
    volumes_from_matrix,
    voxel_matrix,
)
from surfharm.io.nifti import VolumeInputError

#: Prefix of the inner ComBat model's arrays in a voxel-wise ComBat model file.
COMBAT_PREFIX = "combat."


@register("voxel-combat")
class VoxelComBat(VolumeHarmonizer):
    """ComBat on the voxels of scans registered to one grid (see the module docstring).

    Parameters
    ----------
    normalize : {None, "white-stripe", "zscore"}
        Per-scan normalization before ComBat (None: the intensities as given, e.g. tissue maps).
    combat : dict, optional
        Keyword arguments of :class:`surfharm.harmonize.combat.ComBat` (e.g. ``{"eb": False}``,
        ``{"reference_site": "scanner1"}``, ``{"smooth_terms": ["age"]}``); checked by ``fit``.
    """

    side_data = ("covariates", "masks")
    fitted_attribute = "combat_"

    def __init__(self, *, normalize: str | None = None, combat: dict | None = None) -> None:
        self.normalize = normalize
        self.combat = combat

    def _combat(self) -> ComBat:
        """A new ComBat with the ``combat`` options; unknown options are named with the known ones."""
        params = dict(self.combat or {})
        known = sorted(ComBat().get_params(deep=False))
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise VolumeInputError(f"combat options {unknown} are not ComBat parameters; known: {known}")
        if "smooth_terms" in params:
            params["smooth_terms"] = tuple(params["smooth_terms"])
        return ComBat(**params)

    def fit(self, X, y=None, *, sites=None, covariates=None, masks=None) -> "VoxelComBat":
        """Fit ComBat on the analysis-mask voxels of ``X`` (volumes with ``masks``, or a matrix)."""
        scans = as_scans(X, masks)
        if sites is None:
            raise VolumeInputError("voxel-wise ComBat needs the site of every scan (sites=...)")
        combat = self._combat()
        mask, affine, shape = (None, None, None) if scans.is_matrix else analysis_mask(scans)
        Y = voxel_matrix(scans, mask, affine, scans.name(0), prenormalizer(self.normalize), allow_nan=True).values
        self.combat_ = combat.fit(Y, sites=sites, covariates=covariates)
        self.analysis_mask_, self.affine_, self.grid_shape_ = mask, affine, shape
        self.n_scans_fit_ = len(scans)
        self._remember_features(scans)
        return self

    def transform(self, X, *, sites=None, covariates=None, masks=None):
        """Remove the fitted site effects; voxels outside the analysis mask keep their (normalized) values."""
        out = self.transform_iter(X, sites=sites, covariates=covariates, masks=masks)
        return out if isinstance(out, np.ndarray) else list(out)

    def transform_iter(self, X, *, sites=None, covariates=None, masks=None):
        """As :meth:`transform`, but the volumes form yields one volume at a time."""
        self.check_is_fitted()
        if sites is None:
            raise VolumeInputError("voxel-wise ComBat needs the site of every scan (sites=...)")
        scans = as_scans(X, masks)
        if scans.is_matrix != (self.analysis_mask_ is None):
            raise VolumeInputError("this voxel-wise ComBat was fitted on a " + (
                "matrix" if self.analysis_mask_ is None else "list of volumes") + "; give the same form to transform")
        prenorm = prenormalizer(self.normalize)
        Y = voxel_matrix(scans, self.analysis_mask_, self.affine_, "the training scans", prenorm,
                         allow_nan=True).values
        harmonized = self.combat_.transform(Y, sites=sites, covariates=covariates)
        if scans.is_matrix:
            return harmonized.astype(scans.matrix.dtype, copy=False)
        return volumes_from_matrix(harmonized, scans, self.analysis_mask_, prenorm)

    # -- model file: the inner ComBat's arrays under "combat.*", its metadata under "combat" ----------
    def _get_state(self):
        arrays, meta = super()._get_state()
        combat_arrays, combat_meta = self.combat_._get_state()
        arrays.update({COMBAT_PREFIX + k: v for k, v in combat_arrays.items()})
        meta["combat"] = {"method": self.combat_.registry_name, "class": type(self.combat_).__name__,
                          "params": self.combat_._file_params(), **combat_meta}
        grid_state(self, arrays, meta)
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        combat_meta = meta["combat"]
        combat_arrays = {k[len(COMBAT_PREFIX):]: v for k, v in arrays.items() if k.startswith(COMBAT_PREFIX)}
        self.combat_ = ComBat._from_file_params("the ComBat model inside this voxel-wise ComBat model",
                                               combat_meta.get("params", {}))
        self.combat_._set_state(combat_arrays, combat_meta)
        set_grid_state(self, arrays, meta)

    def _check_state(self, check: StateCheck) -> None:
        self.combat_._check_state(_PrefixedCheck(check.path, COMBAT_PREFIX))
        check_analysis_mask(check, self.analysis_mask_, self.grid_shape_, self.combat_.n_features_in_)


class _PrefixedCheck(StateCheck):
    """The checks of :class:`StateCheck`, naming parameters as they are stored (``combat.<name>``)."""

    def __init__(self, path, prefix: str):
        super().__init__(path)
        self.prefix = prefix

    def shape(self, name: str, array, expected: tuple) -> np.ndarray:
        return super().shape(self.prefix + name, array, expected)

    def finite(self, name: str, array, where=None, positive: bool = False) -> None:
        return super().finite(self.prefix + name, array, where, positive)
