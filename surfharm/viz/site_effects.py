"""Per-vertex summaries of site effects, to be drawn on the cortex.

- :func:`site_mean_maps`: mean map of each site (mm);
- :func:`site_deviation_maps`: each site's mean minus the mean of the site means (mm; 0 = no site
  effect), optionally adjusted for covariates (each site's mean at the cohort's mean age, sex...);
- :func:`site_effect_map`: -log10 p of the F-test "does site explain the map beyond the covariates?"
  at every vertex (a linear model per vertex, solved for all vertices at once).

``maps`` is ``(n_scans, n_vertices)``; NaN marks vertices outside cortex (they stay NaN).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from surfharm.viz.mesh import MeshError

# p-values below this are shown as this (about -log10 p = 300): float64 cannot hold less.
_SMALLEST_P = np.finfo(np.float64).tiny
_VERTEX_CHUNK = 16384


def _check_maps_and_sites(maps, sites) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(maps)
    if arr.ndim != 2:
        raise MeshError(f"maps must be 2-D (n_scans, n_vertices), got shape {arr.shape}")
    labels = np.asarray(sites, dtype=object).reshape(-1)
    if labels.shape[0] != arr.shape[0]:
        raise MeshError(f"sites has {labels.shape[0]} labels but maps has {arr.shape[0]} scans; "
                        "expected one site label per scan")
    return arr, labels


def site_order(sites) -> list:
    """Site labels in a stable order: sorted when they compare, else in order of first appearance."""
    seen = list(dict.fromkeys(np.asarray(sites, dtype=object).reshape(-1).tolist()))
    try:
        return sorted(seen)
    except TypeError:
        return seen


def site_mean_maps(maps, sites) -> tuple[list, np.ndarray]:
    """Return ``(site labels, means (n_sites, n_vertices) float64)``; a vertex NaN in every scan of a site stays NaN."""
    arr, labels = _check_maps_and_sites(maps, sites)
    order = site_order(labels)
    means = np.full((len(order), arr.shape[1]), np.nan)
    for i, site in enumerate(order):
        rows = arr[labels == site].astype(np.float64)
        finite = np.isfinite(rows)
        counts = finite.sum(axis=0)
        sums = np.where(finite, rows, 0.0).sum(axis=0)
        means[i] = np.divide(sums, counts, out=np.full(arr.shape[1], np.nan), where=counts > 0)
    return order, means


def site_deviation_maps(maps, sites, covariates=None) -> tuple[list, np.ndarray]:
    """Return ``(site labels, site effect maps (n_sites, n_vertices))`` in the maps' unit (mm).

    Without covariates: each site's mean minus the mean of the site means (not the pooled mean, so a
    large site does not hide its own offset). With ``covariates`` (e.g. age, sex): the same from the
    linear model ``y = site intercepts + covariates b`` with centred covariates, i.e. each site's
    mean at the cohort's mean covariates. Use them whenever sites differ in age or sex: otherwise
    an age difference between sites shows as a site effect.
    """
    if covariates is None:
        order, means = site_mean_maps(maps, sites)
        return order, means - _mean_over_sites(means)
    arr, labels = _check_maps_and_sites(maps, sites)
    order = site_order(labels)
    onehot = (labels[:, None] == np.asarray(order, dtype=object)[None, :]).astype(float)
    cov = _encode_covariates(covariates, arr.shape[0])
    design = np.hstack([onehot, cov - cov.mean(axis=0)])
    intercepts = np.full((len(order), arr.shape[1]), np.nan)
    finite = np.isfinite(arr)
    complete = np.flatnonzero(finite.all(axis=0))
    solve = np.linalg.pinv(design)  # minimum-norm least squares: defined even when a covariate is collinear
    for start in range(0, complete.size, _VERTEX_CHUNK):
        chunk = complete[start:start + _VERTEX_CHUNK]
        intercepts[:, chunk] = (solve @ arr[:, chunk].astype(np.float64))[: len(order)]
    for col in np.flatnonzero(~finite.all(axis=0) & finite.any(axis=0)):
        rows = finite[:, col]
        coef = np.linalg.pinv(design[rows]) @ arr[rows, col].astype(np.float64)
        present = onehot[rows].any(axis=0)  # a site with no finite scan here has no intercept
        intercepts[present, col] = coef[: len(order)][present]
    return order, intercepts - _mean_over_sites(intercepts)


def _mean_over_sites(values: np.ndarray) -> np.ndarray:
    """Mean over the sites (axis 0) of the finite values; NaN where no site has one."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    return np.divide(np.where(finite, values, 0.0).sum(axis=0), counts, out=np.full(values.shape[1], np.nan),
                     where=counts > 0)


def _encode_covariates(covariates, n: int) -> np.ndarray:
    """(n, p) float design columns of the covariates (categorical ones dummy-coded); p may be 0."""
    if covariates is None:
        return np.zeros((n, 0))
    cov = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(np.asarray(covariates))
    if len(cov) != n:
        raise MeshError(f"covariates has {len(cov)} rows but maps has {n} scans; expected one row per scan")
    encoded = pd.get_dummies(cov, drop_first=True, dtype=float)
    if encoded.isna().any().any():
        bad = encoded.columns[encoded.isna().any()].tolist()
        raise MeshError(f"covariates hold missing values in column(s) {bad}; fill or drop those scans first")
    return encoded.to_numpy(dtype=float)


def _design(sites: np.ndarray, covariates) -> tuple[np.ndarray, np.ndarray]:
    """Reduced design [1, covariates] and full design [reduced, site dummies]."""
    n = sites.shape[0]
    reduced = np.hstack([np.ones((n, 1)), _encode_covariates(covariates, n)])
    order = site_order(sites)
    dummies = np.stack([(sites == s).astype(float) for s in order[1:]], axis=1) if len(order) > 1 else np.zeros((n, 0))
    return reduced, np.hstack([reduced, dummies])


def _residual_ss(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Residual sum of squares of least squares fits of every column of ``y`` on ``design``, and the rank."""
    # An orthonormal basis of the design's column space (SVD: rank-safe when a covariate is collinear).
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    basis = u[:, s > s.max() * 1e-10]
    resid = y - basis @ (basis.T @ y)
    return np.einsum("ij,ij->j", resid, resid), basis.shape[1]


def site_effect_map(maps, sites, covariates=None) -> np.ndarray:
    """-log10 p of the per-vertex F-test of site, adjusted for ``covariates``; shape (n_vertices,).

    Model at each vertex: ``y = [1, covariates] b + site dummies g + e``; the test is g = 0
    (one-way ANCOVA). Categorical covariates are dummy-coded. Vertices that are NaN in every
    scan stay NaN; a vertex NaN in some scans is tested on its finite scans (slower: one fit each).
    p-values below ~1e-308 are shown as 1e-308.
    """
    from scipy import stats

    arr, labels = _check_maps_and_sites(maps, sites)
    if len(site_order(labels)) < 2:
        raise MeshError("the site test needs at least two sites; all scans have the same site label")
    reduced, full = _design(labels, covariates)
    out = np.full(arr.shape[1], np.nan)
    finite = np.isfinite(arr)
    complete = finite.all(axis=0)

    def f_test(y, red, ful):
        rss0, p0 = _residual_ss(red, y)
        rss1, p1 = _residual_ss(ful, y)
        df1, df2 = p1 - p0, y.shape[0] - p1
        if df1 < 1 or df2 < 1:
            return np.full(y.shape[1], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = ((rss0 - rss1) / df1) / (rss1 / df2)
        p = stats.f.sf(np.maximum(f, 0.0), df1, df2)
        p = np.where(rss1 <= 0, np.where(rss0 > 0, 0.0, 1.0), p)  # exact fits: all or nothing explained by site
        return -np.log10(np.clip(p, _SMALLEST_P, 1.0))

    cols = np.flatnonzero(complete)
    for start in range(0, cols.size, _VERTEX_CHUNK):
        chunk = cols[start:start + _VERTEX_CHUNK]
        out[chunk] = f_test(arr[:, chunk].astype(np.float64), reduced, full)
    for col in np.flatnonzero(~complete & finite.any(axis=0)):
        rows = finite[:, col]
        out[col] = f_test(arr[rows, col:col + 1].astype(np.float64), reduced[rows], full[rows])[0]
    return out
