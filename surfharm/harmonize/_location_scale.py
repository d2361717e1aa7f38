"""Per-site location and scale arithmetic shared by the harmonizers (pure numpy, no torch).

Conventions of every function here:

* ``X`` is ``(n_scans, V)``: one row per scan, one column per vertex (or feature), in the measure's
  unit (mm for thickness); NaN marks a missing value;
* ``site_rows`` is a sequence of integer index arrays into the rows of ``X``, one per site;
* a *mask* is a ``(V,)`` bool array of the vertices a model uses; a *valid* array is ``(n_scans, V)``
  bool, True where a value is finite and inside the mask;
* means are in the unit of ``X``; standard deviations too (z-scores are unitless).

Used by :class:`surfharm.harmonize.s2sgan.S2SGAN` (per-site z-scoring, kept-covariate slopes, output
calibration) and by the baselines of :mod:`surfharm.harmonize.baselines` (per-site means and SDs,
the pooled within-site SD, matching one site's mean and SD to another's).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


# -- per-site statistics -----------------------------------------------------------------------------

def site_means_stds(X: np.ndarray, site_rows: Sequence[np.ndarray], *,
                    ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-site, per-vertex mean and standard deviation, NaN ignored.

    Parameters
    ----------
    X : ndarray
        (n_scans, V) maps.
    site_rows : Sequence[ndarray]
        one index array per site.
    ddof : int
        delta degrees of freedom of the standard deviation (0: population SD, 1: sample SD).

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(means, stds)``, each (n_sites, V) in ``X``'s dtype and unit; NaN where a site has no finite
        value at a vertex (or, for the SD, no more than ``ddof`` of them).
    """
    with warnings.catch_warnings():     # all-NaN columns (medial wall) give NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.stack([np.nanmean(X[r], axis=0) for r in site_rows])
        stds = np.stack([np.nanstd(X[r], axis=0, ddof=ddof) for r in site_rows])
    return means, stds


def masked_site_normalisation(X: np.ndarray, site_rows: Sequence[np.ndarray], mask: np.ndarray,
                              min_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-site z-scoring statistics of the vertices in ``mask``.

    Parameters
    ----------
    X : ndarray
        (n_scans, V) maps (mm).
    site_rows : Sequence[ndarray]
        one index array per site.
    mask : ndarray
        (V,) bool, the vertices used.
    min_std : float
        floor of the standard deviations (mm), so that near-constant vertices are not
        divided by ~0.

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(mean, std)``, each (n_sites, V) float32 in mm: population mean and SD per site, floored
        at ``min_std`` inside ``mask``; 0 and 1 outside it.
    """
    means, stds = site_means_stds(X, site_rows)
    mean = means.astype(np.float32)
    std = stds.astype(np.float32)
    mean[:, ~mask] = 0.0
    std = np.where(mask, np.maximum(std, min_std), 1.0).astype(np.float32)
    return mean, std


def channel_site_normalisation(maps: np.ndarray, site_rows: Sequence[np.ndarray], mask: np.ndarray,
                               min_std: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`masked_site_normalisation` of every channel of ``maps`` (n_scans, C, V): ``(mean, std)``,
    each (n_sites, C, V) float32 in the maps' unit."""
    stats = [masked_site_normalisation(maps[:, c], site_rows, mask, min_std) for c in range(maps.shape[1])]
    return np.stack([m for m, _ in stats], axis=1), np.stack([s for _, s in stats], axis=1)


def zscore_channels(maps: np.ndarray, mean: np.ndarray, std: np.ndarray,
                    mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-scores of multi-channel maps, 0 where a scan's vertex is missing in any channel or outside ``mask``.

    ``maps``, ``mean``, ``std``: (n, C, V) (each scan's own statistics); ``mask``: (V,) bool. Returns
    ``(z, valid)``: (n, C, V) float32 and the (n, V) bool vertices finite in every channel inside ``mask``.
    """
    valid = np.isfinite(maps).all(axis=1) & mask
    z = (np.nan_to_num(maps) - mean) / std
    return np.where(valid[:, None], z, 0.0).astype(np.float32), valid


def pooled_within_site_std(stds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pooled within-site standard deviation ``sqrt(sum_s (n_s - 1) sd_s^2 / (n - k))``, NaN ignored.

    Parameters
    ----------
    stds : ndarray
        (n_sites, V) per-site sample standard deviations (``ddof=1``).
    counts : ndarray
        (n_sites,) scans per site.

    Returns
    -------
    ndarray
        (V,) in the unit of ``stds``.
    """
    dof = (counts - 1)[:, None]
    return np.sqrt(np.nansum(dof * stds ** 2, axis=0) / max(dof.sum(), 1))


# -- moving between location/scale frames ------------------------------------------------------------

def standardize(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(X - mean) / std``: (n, V) values -> z-scores, with (V,) ``mean`` and ``std`` in X's unit."""
    return (X - mean) / std


def unstandardize(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``z * std + mean``: (n, V) z-scores -> values in the unit of (V,) ``mean`` and ``std``."""
    return z * std + mean


def match_location_scale(X: np.ndarray, loc: np.ndarray, scale: np.ndarray, ref_loc: np.ndarray,
                         ref_scale: np.ndarray) -> np.ndarray:
    """``(X - loc) / scale * ref_scale + ref_loc``: values of one frame moved to another.

    ``X`` is (n, V); the others broadcast against it ((V,) or (n, V)), all in X's unit.
    """
    return unstandardize(standardize(X, loc, scale), ref_loc, ref_scale)


def zscore_inside(X: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score maps with one site's statistics, 0 where a value is missing or outside ``mask``.

    Parameters
    ----------
    X : ndarray
        (n, V) maps (mm), NaN allowed.
    mean, std : ndarray
        (V,) the site's statistics (mm).
    mask : ndarray
        (V,) bool, the vertices used.

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(z, valid)``: (n, V) float32 z-scores and the (n, V) bool array of finite values inside ``mask``.
    """
    valid = np.isfinite(X) & mask
    z = standardize(np.where(valid, X, 0.0), mean, std)
    return np.where(valid, z, 0.0).astype(np.float32), valid


# -- covariates kept out of the site statistics -----------------------------------------------------

def within_site_slopes(values: np.ndarray, X: np.ndarray, site_rows: Sequence[np.ndarray],
                       mask: np.ndarray) -> np.ndarray | None:
    """Least-squares slopes of the maps on covariates, both centred within each site.

    Pass several sites for one slope pooled over them, or one site for that site's own slope.

    Parameters
    ----------
    values : ndarray
        (n_scans, p) covariate values (their own units).
    X : ndarray
        (n_scans, V) maps (mm).
    site_rows : Sequence[ndarray]
        one index array per site taking part.
    mask : ndarray
        (V,) bool, the vertices fitted.

    Returns
    -------
    ndarray or None
        (p, V_mask) float64 slopes in mm per covariate unit, for the vertices of ``mask`` in order; None
        when the centred covariates are rank-deficient (a column constant within every site, or
        collinear columns).
    """
    design = np.concatenate([values[r] - values[r].mean(axis=0) for r in site_rows])
    maps = np.concatenate([X[r][:, mask] - X[r][:, mask].mean(axis=0) for r in site_rows])
    if np.linalg.matrix_rank(design) < values.shape[1]:
        return None
    return np.linalg.lstsq(design, maps.astype(np.float64), rcond=None)[0]


def covariate_part(values: np.ndarray, center: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """``(values - center) @ slopes``: the covariates' linear part of each map.

    Parameters
    ----------
    values : ndarray
        (n, p) covariate values.
    center : ndarray
        (p,) their reference values.
    slopes : ndarray
        (p, V) mm per covariate unit.

    Returns
    -------
    ndarray
        (n, V) float32 in mm.
    """
    return ((values - center) @ slopes).astype(np.float32)


# -- output calibration -------------------------------------------------------------------------------

def masked_mean_std(z: np.ndarray, valid: np.ndarray, mask: np.ndarray,
                    floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex mean and population SD of ``z`` over its valid entries (the calibration statistics).

    Parameters
    ----------
    z : ndarray
        (n, V) values (z-units for the calibration of a generator's outputs).
    valid : ndarray
        (n, V) bool, the entries that count.
    mask : ndarray
        (V,) bool, the vertices used.
    floor : float
        lower bound of the SD (same unit as ``z``), so that dividing by it cannot blow up a
        vertex held nearly constant.

    Returns
    -------
    tuple[ndarray, ndarray]
        ``(mean, std)``, each (V,) float64 in the unit of ``z``: 0 and 1 outside ``mask``.
    """
    count = np.maximum(valid.sum(axis=0), 1)
    mean = np.where(valid, z, 0.0).sum(axis=0) / count
    var = np.where(valid, (z - mean) ** 2, 0.0).sum(axis=0) / count
    return np.where(mask, mean, 0.0), np.where(mask, np.maximum(np.sqrt(var), floor), 1.0)
