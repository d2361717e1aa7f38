"""Harmonization metrics: site effect left, biology kept, agreement of traveling subjects.

Every function takes plain arrays: ``X`` (n_scans, n_features) maps (vertices or ROIs; NaN outside
cortex), site labels (n_scans,), and covariates as a DataFrame of numeric columns. Features that are
NaN in any scan are left out of vertex-wise statistics (the medial wall).

Definitions (as used across the field; Hu et al., NeuroImage 2023, and the S2SGAN authors' code):

* Site effect per feature, after adjusting for covariates:
  location: ANCOVA F-test of site (full model ``1 + covariates + site`` vs ``1 + covariates``) and a
  Kruskal-Wallis test on the covariate-adjusted residuals; scale: Levene's test (Brown-Forsythe,
  deviations from the site medians) on the full-model residuals. Reported as the fraction of features
  significant after Benjamini-Hochberg FDR at ``alpha``, and the median partial eta^2 of site.
* Biology per feature: the partial R^2 of the age term(s) (variance explained by age beyond the other
  covariates), the age slope beta (mm per unit of the age column) and Cohen's d of sex (female - male
  on age-adjusted residuals, pooled SD).
* Traveling subjects: MAE (mm), PSNR = ``20 log10(5) - 10 log10(MSE)`` with both maps clipped to
  [0, 5] mm, Pearson r, and SSIM on the sphere (:func:`ssim_sphere`); within-subject agreement
  across all sites as ICC(2,1) per feature (:func:`icc_absolute`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

#: Dynamic range (mm) of cortical thickness in PSNR and SSIM, as the S2SGAN authors define it.
THICKNESS_RANGE_MM = 5.0


# -- shared helpers ---------------------------------------------------------------------------------

def complete_features(X: np.ndarray) -> np.ndarray:
    """(n_features,) bool: features finite in every scan."""
    return np.isfinite(X).all(axis=0)


def design_matrix(covariates: pd.DataFrame | None, n: int) -> np.ndarray:
    """(n, 1 + q) intercept + numeric covariates (each column centred); refuses non-numeric columns."""
    columns = [np.ones(n)]
    if covariates is not None and len(covariates.columns):
        for name in covariates.columns:
            values = pd.to_numeric(covariates[name], errors="coerce").to_numpy(dtype=np.float64)
            if np.isnan(values).any():
                raise ValueError(f"covariate {name!r} has missing or non-numeric values; "
                                 "encode categories as numbers (e.g. female = 0/1) and drop incomplete rows")
            columns.append(values - values.mean())
    return np.column_stack(columns)


def _site_dummies(sites) -> np.ndarray:
    labels, index = np.unique(np.asarray(sites).astype(str), return_inverse=True)
    return np.eye(len(labels))[index][:, 1:]


def _residuals(design: np.ndarray, Y: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, Y, rcond=None)
    return Y - design @ coef


def _fdr_fraction(p_values: np.ndarray, alpha: float) -> float:
    p = p_values[np.isfinite(p_values)]
    if p.size == 0:
        return float("nan")
    return float(np.mean(stats.false_discovery_control(p) <= alpha))


# -- site effect ------------------------------------------------------------------------------------

def site_effect_tests(X, sites, covariates: pd.DataFrame | None = None, alpha: float = 0.05) -> dict[str, float]:
    """Fraction of features with a significant site effect (location and scale) and its size.

    Returns:
        ``frac_sig_anova``, ``frac_sig_kruskal`` (location), ``frac_sig_levene`` (scale): fractions of
        features with FDR-adjusted p <= ``alpha``; ``site_eta2_median``: median partial eta^2 of site.
    """
    X = np.asarray(X, dtype=np.float64)
    keep = complete_features(X)
    Y = X[:, keep]
    n = Y.shape[0]
    sites = np.asarray(sites).astype(str)
    groups = [np.nonzero(sites == s)[0] for s in np.unique(sites)]
    reduced = design_matrix(covariates, n)
    full = np.column_stack([reduced, _site_dummies(sites)])
    res_reduced = _residuals(reduced, Y)
    res_full = _residuals(full, Y)
    ss_reduced = (res_reduced ** 2).sum(axis=0)
    ss_full = (res_full ** 2).sum(axis=0)
    df_site = full.shape[1] - reduced.shape[1]
    df_error = n - np.linalg.matrix_rank(full)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_stat = ((ss_reduced - ss_full) / df_site) / (ss_full / df_error)
        eta2 = (ss_reduced - ss_full) / ss_reduced
    p_anova = stats.f.sf(f_stat, df_site, df_error)
    p_kruskal = stats.kruskal(*[res_reduced[g] for g in groups], axis=0).pvalue
    p_levene = stats.levene(*[res_full[g] for g in groups], center="median", axis=0).pvalue
    return {
        "frac_sig_anova": _fdr_fraction(p_anova, alpha),
        "frac_sig_kruskal": _fdr_fraction(np.asarray(p_kruskal), alpha),
        "frac_sig_levene": _fdr_fraction(np.asarray(p_levene), alpha),
        "site_eta2_median": float(np.nanmedian(eta2)),
    }


# -- biology ----------------------------------------------------------------------------------------

def covariate_effects(X, covariates: pd.DataFrame, age_columns, sex_column: str | None = None) -> dict[str, np.ndarray]:
    """Per-feature age and sex effects (NaN for incomplete features).

    Args:
        X: (n_scans, n_features).
        covariates: numeric covariates (e.g. ``age``, ``female``); all enter the model.
        age_columns: the column(s) that code age (e.g. ``["age"]`` or ``["log_age"]``).
        sex_column: 0/1 column (1 = female) for Cohen's d, or None.

    Returns:
        ``age_r2``: partial R^2 of the age columns (n_features,); ``age_beta``: slope of the first age
        column (units of X per unit of that column); ``sex_d``: Cohen's d, female - male (if asked).
    """
    X = np.asarray(X, dtype=np.float64)
    age_columns = [age_columns] if isinstance(age_columns, str) else list(age_columns)
    missing = [c for c in [*age_columns, sex_column] if c is not None and c not in covariates.columns]
    if missing:
        raise ValueError(f"covariate column(s) {missing} not found; covariates are {list(covariates.columns)}")
    keep = complete_features(X)
    Y = X[:, keep]
    n = Y.shape[0]
    others = [c for c in covariates.columns if c not in age_columns]
    full = design_matrix(covariates[age_columns + others], n)
    reduced = design_matrix(covariates[others], n)
    coef, *_ = np.linalg.lstsq(full, Y, rcond=None)
    ss_full = ((Y - full @ coef) ** 2).sum(axis=0)
    ss_reduced = (_residuals(reduced, Y) ** 2).sum(axis=0)
    out = {"age_r2": np.full(X.shape[1], np.nan), "age_beta": np.full(X.shape[1], np.nan)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["age_r2"][keep] = (ss_reduced - ss_full) / ss_reduced
    out["age_beta"][keep] = coef[1]
    if sex_column is not None:
        female = covariates[sex_column].to_numpy(dtype=np.float64)
        if not np.isin(female, (0.0, 1.0)).all():
            raise ValueError(f"sex column {sex_column!r} must be 0/1 (1 = female), got values {np.unique(female)[:5]}")
        res = _residuals(design_matrix(covariates[age_columns], n), Y)
        f, m = res[female == 1], res[female == 0]
        pooled = np.sqrt(((len(f) - 1) * f.var(axis=0, ddof=1) + (len(m) - 1) * m.var(axis=0, ddof=1))
                         / max(len(f) + len(m) - 2, 1))
        out["sex_d"] = np.full(X.shape[1], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["sex_d"][keep] = (f.mean(axis=0) - m.mean(axis=0)) / pooled
    return out


def compare_effects(effects: dict[str, np.ndarray], truth: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Summaries of :func:`covariate_effects`, and their agreement with the truth's when given.

    Returns ``age_r2`` (mean over features), ``age_beta`` (mean), ``sex_d`` (mean) and, with
    ``truth``: ``age_r2_ratio`` (mean R^2 / truth's mean R^2), ``age_beta_r`` and ``sex_d_r``
    (Pearson r across features between the maps of effects) and ``age_beta_mae``.
    """
    out = {name: float(np.nanmean(values)) for name, values in effects.items()}
    if truth is not None:
        out["age_r2_ratio"] = out["age_r2"] / float(np.nanmean(truth["age_r2"]))
        for name in ("age_beta", "sex_d"):
            if name in effects and name in truth:
                both = np.isfinite(effects[name]) & np.isfinite(truth[name])
                out[f"{name}_r"] = float(np.corrcoef(effects[name][both], truth[name][both])[0, 1])
        both = np.isfinite(effects["age_beta"]) & np.isfinite(truth["age_beta"])
        out["age_beta_mae"] = float(np.mean(np.abs(effects["age_beta"][both] - truth["age_beta"][both])))
    return out


# -- traveling subjects -----------------------------------------------------------------------------

def mae(pred, target) -> np.ndarray:
    """Mean absolute error per scan (rows), NaN features ignored: (n,)."""
    return np.nanmean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64)), axis=-1)


def psnr(pred, target, max_value: float = THICKNESS_RANGE_MM) -> np.ndarray:
    """PSNR per scan (dB) as the S2SGAN authors define it: values clipped to [0, max_value],
    ``20 log10(max_value) - 10 log10(MSE)``; NaN features ignored. (n,)."""
    p = np.clip(np.asarray(pred, np.float64), 0.0, max_value)
    t = np.clip(np.asarray(target, np.float64), 0.0, max_value)
    mse = np.nanmean((p - t) ** 2, axis=-1)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(max_value) - 10.0 * np.log10(mse)


def pearson_r(pred, target) -> np.ndarray:
    """Pearson r across features of each pair of rows (NaN features ignored): (n,)."""
    p = np.atleast_2d(np.asarray(pred, np.float64))
    t = np.atleast_2d(np.asarray(target, np.float64))
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        both = np.isfinite(p[i]) & np.isfinite(t[i])
        out[i] = np.corrcoef(p[i, both], t[i, both])[0, 1]
    return out


def mesh_window(faces: np.ndarray, n_vertices: int, rings: int = 2, mask: np.ndarray | None = None) -> sp.csr_matrix:
    """Uniform averaging over the ``rings``-ring mesh neighbourhood of every vertex.

    The window of vertex ``i`` is ``i`` and every vertex reachable in at most ``rings`` edges (19
    vertices for 2 rings on a regular icosahedral mesh, 18 at the 12 pentagons). With ``mask``, only
    masked vertices enter the windows (weights renormalised), so the medial wall never leaks in.

    Returns:
        (V, V) CSR, rows summing to 1 (rows of vertices whose window is empty sum to 0).
    """
    faces = np.asarray(faces, dtype=np.int64)
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    adjacency = sp.coo_matrix((np.ones(i.size), (i, j)), shape=(n_vertices, n_vertices)).tocsr()
    step = ((adjacency + adjacency.T + sp.identity(n_vertices)) > 0).astype(np.float64)
    window = step
    for _ in range(rings - 1):
        window = ((window @ step) > 0).astype(np.float64)
    if mask is not None:
        window = window @ sp.diags(np.asarray(mask, dtype=np.float64))
    row_sum = np.asarray(window.sum(axis=1)).ravel()
    return (sp.diags(np.where(row_sum > 0, 1.0 / np.where(row_sum > 0, row_sum, 1.0), 0.0)) @ window).tocsr()


def ssim_sphere(pred, target, window: sp.spmatrix, mask: np.ndarray | None = None,
                data_range: float = THICKNESS_RANGE_MM, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) on the sphere, one value per pair of rows.

    Local means, variances and covariance are window averages (``window`` from :func:`mesh_window`,
    i.e. the 2-ring neighbourhood by default, uniform weights) in place of the Gaussian 11x11 window of
    images; ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L = data_range`` (5 mm); values are clipped to
    [0, L] as for PSNR. The SSIM map is averaged over ``mask`` (default: vertices finite in both maps).

    Returns:
        (n,) SSIM in [-1, 1].
    """
    x = np.clip(np.atleast_2d(np.asarray(pred, np.float64)), 0.0, data_range)
    y = np.clip(np.atleast_2d(np.asarray(target, np.float64)), 0.0, data_range)
    valid = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        valid &= np.asarray(mask, bool)[None, :]
    x, y = np.where(valid, x, 0.0).T, np.where(valid, y, 0.0).T  # (V, n)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = window @ x, window @ y
    var_x = window @ (x * x) - mu_x ** 2
    var_y = window @ (y * y) - mu_y ** 2
    cov = window @ (x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return np.array([ssim_map[valid[i], i].mean() for i in range(valid.shape[0])])


def icc_absolute(maps: np.ndarray) -> np.ndarray:
    """Per-feature ICC(2,1) (Shrout & Fleiss 1979: two-way random effects, absolute agreement, one
    rater) of traveling subjects across sites.

    Args:
        maps: (n_subjects, n_sites, n_features): every subject scanned at every site.

    Returns:
        (n_features,) ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n), with MSR the
        between-subject, MSC the between-site and MSE the residual mean square; 1 = sites agree.
    """
    y = np.asarray(maps, dtype=np.float64)
    n, k = y.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"ICC needs at least 2 subjects and 2 sites, got {n} subjects x {k} sites")
    grand = y.mean(axis=(0, 1))
    subject_mean, site_mean = y.mean(axis=1), y.mean(axis=0)
    msr = k * ((subject_mean - grand) ** 2).sum(axis=0) / (n - 1)
    msc = n * ((site_mean - grand) ** 2).sum(axis=0) / (k - 1)
    resid = y - subject_mean[:, None, :] - site_mean[None, :, :] + grand
    mse = (resid ** 2).sum(axis=(0, 1)) / ((n - 1) * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)


def agreement(pred, target, window: sp.spmatrix | None = None, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean MAE, PSNR, Pearson r (and SSIM when a ``window`` is given) over pairs of rows."""
    out = {"mae": float(np.mean(mae(pred, target))), "psnr": float(np.mean(psnr(pred, target))),
           "r": float(np.mean(pearson_r(pred, target)))}
    if window is not None:
        out["ssim"] = float(np.mean(ssim_sphere(pred, target, window, mask=mask)))
    return out
