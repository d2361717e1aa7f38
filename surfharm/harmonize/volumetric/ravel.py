"""RAVEL, removal of artificial voxel effect by linear regression (Fortin et al., NeuroImage 2016).

Scans registered to one template are first normalized one by one (WhiteStripe by default, as in
the paper). Voxels of a **control region** (cerebrospinal fluid: no biology of interest) then carry
only unwanted variation; the first ``n_factors`` left singular vectors of the control voxels
(scans x voxels, each voxel centred over scans) are the scans' unwanted factors ``W``
(n_scans, k). Every voxel ``v`` of the analysis mask is modelled as::

    y_v = a_v + Z b_v + W g_v + e_v

(``Z``: optional covariates whose effect is protected), fitted by least squares over the
training scans, and ``W g_v`` is removed. A new scan's factors are its centred control voxels
projected on the training singular vectors, so ``fit`` on a set and ``transform`` of new scans
both work. The scans' sites are not used: the factors are found without them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from surfharm.harmonize.base import StateCheck, register
from surfharm.harmonize.volumetric.base import Scans, VolumeHarmonizer, as_scans, optional_sites
from surfharm.harmonize.volumetric.voxelwise import (
    DEFAULT_CHUNK,
    analysis_mask,
    check_analysis_mask,
    chunks,
    grid_state,
    prenormalizer,
    set_grid_state,
    volumes_from_matrix,
    voxel_matrix,
)
from surfharm.io.nifti import VolumeInputError, load_mask


def covariate_matrix(covariates, n_scans: int) -> np.ndarray:
    """Covariates as a float (n_scans, p) array: numeric columns kept, text columns one-hot coded
    (first level dropped); None gives ``(n_scans, 0)``."""
    if covariates is None:
        return np.zeros((n_scans, 0))
    frame = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(np.asarray(covariates))
    if len(frame) != n_scans:
        raise VolumeInputError(f"covariates have {len(frame)} rows for {n_scans} scans; expected one row per scan")
    coded = pd.get_dummies(frame, drop_first=True, dtype=float)
    values = coded.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise VolumeInputError(f"covariates hold missing values in column(s) "
                               f"{list(coded.columns[np.isnan(values).any(axis=0)])}")
    return values


@register("ravel")
class RAVEL(VolumeHarmonizer):
    """RAVEL on scans registered to one grid (see the module docstring).

    Parameters
    ----------
    n_factors : int
        Number of unwanted factors ``k`` (the paper uses 1 for T1).
    normalize : {"white-stripe", "zscore", None}
        Per-scan normalization applied before RAVEL (``None``: the scans are already normalized).
    control_quantile : float
        When ``fit`` gets no ``control_mask``, the control region is derived: voxels whose
        (normalized) intensity is below this quantile of their scan's brain in *every* training
        scan, i.e. dark CSF voxels on T1.
    chunk_size : int
        Voxels per chunk of the voxel-wise regression (memory bound, not a result).
    """

    side_data = ("covariates", "masks")
    requires_sites = False
    fitted_attribute = "gamma_"
    fit_options = ("control_mask",)

    allows_partial_nan = False

    def __init__(self, *, n_factors: int = 1, normalize: str | None = "white-stripe",
                 control_quantile: float = 0.1, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.n_factors = n_factors
        self.normalize = normalize
        self.control_quantile = control_quantile
        self.chunk_size = chunk_size

    def _prenormalizer(self):
        return prenormalizer(self.normalize)

    def fit(self, X, y=None, *, sites=None, covariates=None, masks=None, control_mask=None) -> "RAVEL":
        """Learn the unwanted factors and each voxel's loading on them.

        ``sites`` are checked when given but not used; ``covariates`` (one row per scan) are
        protected. ``control_mask``: the control (CSF) region, a 3-D mask on the scans' grid (path, image or
        array), or in the matrix form a bool vector over the columns; derived when None.
        """
        scans = as_scans(X, masks)
        optional_sites(sites, len(scans))
        k = int(self.n_factors)
        if not 1 <= k < len(scans):
            raise VolumeInputError(f"n_factors must be between 1 and n_scans - 1 = {len(scans) - 1}, "
                                   f"got {self.n_factors}")
        mask, affine, shape = (None, None, None) if scans.is_matrix else analysis_mask(scans)
        Y = voxel_matrix(scans, mask, affine, scans.name(0), self._prenormalizer()).values
        control = self._control_columns(Y, scans, mask, control_mask)
        if control.sum() <= k:
            raise VolumeInputError(f"the control region holds {int(control.sum())} voxels of the analysis mask; "
                                   f"expected more than n_factors = {k}: give control_mask= (a CSF mask on the "
                                   "scans' grid) or raise control_quantile")
        Vc = Y[:, control].astype(np.float64)
        control_mean = Vc.mean(axis=0)
        U, S, Vt = np.linalg.svd(Vc - control_mean, full_matrices=False)
        if S[k - 1] <= S[0] * 1e-10:
            raise VolumeInputError(f"the control voxels vary along fewer than n_factors = {k} directions across scans")
        W = U[:, :k]
        design = np.column_stack([np.ones(len(scans)), covariate_matrix(covariates, len(scans)), W])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise VolumeInputError("the covariates are collinear with each other or with the unwanted factors; "
                                   "drop a covariate or lower n_factors")
        solver = np.linalg.pinv(design)[-k:]          # rows giving the loadings g_v of W
        gamma = np.empty((k, Y.shape[1]), dtype=np.float32)
        for part in chunks(Y.shape[1], int(self.chunk_size)):
            gamma[:, part] = solver @ Y[:, part].astype(np.float64)
        self.analysis_mask_ = mask
        self.affine_ = affine
        self.grid_shape_ = shape
        self.control_columns_ = control
        self.control_mean_ = control_mean
        self.control_loadings_ = Vt[:k] / S[:k, None]  # (k, n_control): centred control voxels -> W
        self.factors_ = W
        self.singular_values_ = S
        self.gamma_ = gamma
        self.n_scans_fit_ = len(scans)
        self._remember_features(scans)
        return self

    def _control_columns(self, Y: np.ndarray, scans: Scans, mask, control_mask) -> np.ndarray:
        """Bool vector over the analysis-mask voxels: the control region."""
        if control_mask is None:
            if not 0 < self.control_quantile < 1:
                raise VolumeInputError(f"control_quantile must be in (0, 1), got {self.control_quantile}")
            thresholds = np.quantile(Y, self.control_quantile, axis=1)
            return np.all(Y <= thresholds[:, None], axis=0)
        if scans.is_matrix:
            control = np.asarray(control_mask, dtype=bool)
            if control.shape != (Y.shape[1],):
                raise VolumeInputError(f"control_mask has shape {control.shape}; expected ({Y.shape[1]},), one flag "
                                       "per column of X")
            return control
        ref, _ = scans.volume(0)
        return load_mask(control_mask, ref, name=None if not isinstance(control_mask, np.ndarray)
                         else "control_mask")[mask]

    def factors(self, Y: np.ndarray) -> np.ndarray:
        """Unwanted factors ``(n_scans, k)`` of normalized in-mask scans ``Y`` (n_scans, n_voxels)."""
        return (Y[:, self.control_columns_].astype(np.float64) - self.control_mean_) @ self.control_loadings_.T

    def transform(self, X, *, sites=None, covariates=None, masks=None):
        """Scans with ``W g_v`` removed in the analysis mask (volumes form: the rest of each volume keeps
        its normalized intensities). Same forms as ``fit``; ``covariates`` are not needed."""
        out = self.transform_iter(X, sites=sites, covariates=covariates, masks=masks)
        return out if isinstance(out, np.ndarray) else list(out)

    def transform_iter(self, X, *, sites=None, covariates=None, masks=None):
        """As :meth:`transform`, but the volumes form yields one volume at a time."""
        self.check_is_fitted()
        scans = as_scans(X, masks)
        optional_sites(sites, len(scans))
        if scans.is_matrix != (self.analysis_mask_ is None):
            raise VolumeInputError("this RAVEL was fitted on a " + ("matrix" if self.analysis_mask_ is None else
                                   "list of volumes") + "; give the same form to transform")
        if scans.is_matrix and scans.matrix.shape[1] != self.gamma_.shape[1]:
            raise VolumeInputError(f"X has {scans.matrix.shape[1]} voxels; this RAVEL was fitted on "
                                   f"{self.gamma_.shape[1]}")
        prenorm = self._prenormalizer()
        Y = voxel_matrix(scans, self.analysis_mask_, self.affine_, "the training scans", prenorm).values
        W = self.factors(Y)
        for part in chunks(Y.shape[1], int(self.chunk_size)):
            Y[:, part] -= (W @ self.gamma_[:, part]).astype(np.float32)
        if scans.is_matrix:
            return Y.astype(scans.matrix.dtype)
        return volumes_from_matrix(Y, scans, self.analysis_mask_, prenorm)

    def _get_state(self):
        arrays, meta = super()._get_state()
        arrays = {**arrays, "gamma": self.gamma_, "control_columns": self.control_columns_,
                  "control_mean": self.control_mean_, "control_loadings": self.control_loadings_,
                  "factors": self.factors_, "singular_values": self.singular_values_}
        grid_state(self, arrays, meta)
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        super()._set_state(arrays, meta)
        self.gamma_ = arrays["gamma"]
        self.control_columns_ = arrays["control_columns"].astype(bool)
        self.control_mean_ = arrays["control_mean"]
        self.control_loadings_ = arrays["control_loadings"]
        self.factors_ = arrays["factors"]
        self.singular_values_ = arrays["singular_values"]
        set_grid_state(self, arrays, meta)

    def _check_state(self, check: StateCheck) -> None:
        k, n_voxels = check.shape("gamma", self.gamma_, (None, None)).shape
        check.finite("gamma", self.gamma_)
        n_control = int(check.shape("control_columns", self.control_columns_, (n_voxels,)).sum())
        check.shape("control_mean", self.control_mean_, (n_control,))
        check.shape("control_loadings", self.control_loadings_, (k, n_control))
        check.finite("control_mean", self.control_mean_)
        check.finite("control_loadings", self.control_loadings_)
        check_analysis_mask(check, self.analysis_mask_, self.grid_shape_, n_voxels)


__all__ = ["RAVEL", "covariate_matrix"]
