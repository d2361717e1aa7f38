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
* Multivariate site effect (covariate-adjusted): kBET rejection rate and iLISI on principal-component
  scores, MANOVA of site (Pillai's trace) on the first components, and per-vertex Box's M tests of
  the local (1-ring) covariance across sites (:func:`multivariate_site_metrics`).
* Biology per feature: the partial R^2 of the age term(s) (variance explained by age beyond the other
  covariates), the age slope beta (mm per unit of the age column) and Cohen's d of sex (female - male
  on age-adjusted residuals, pooled SD).
* Traveling subjects: MAE (mm), PSNR = ``20 log10(5) - 10 log10(MSE)`` with both maps clipped to
  [0, 5] mm, Pearson r, and SSIM on the sphere (:func:`ssim_sphere`); within-subject agreement
  across all sites as ICC(2,1) per feature (:func:`icc_absolute`).

:func:`mae` and :func:`psnr` score 3-D images too (a voxel mask, ``clip=False``); the metrics of
images only (SSIM on 3-D windows, unit calibration, distances between scanners) are in
:mod:`surfharm.evaluate.image_metrics`.
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

    Returns
    -------
    dict[str, float]
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

    Parameters
    ----------
    X : ndarray
        (n_scans, n_features).
    covariates : DataFrame
        numeric covariates (e.g. ``age``, ``female``); all enter the model.
    age_columns
        the column(s) that code age (e.g. ``["age"]`` or ``["log_age"]``).
    sex_column : str or None
        0/1 column (1 = female) for Cohen's d, or None.

    Returns
    -------
    dict[str, ndarray]
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

def _scored(pred, target, mask) -> tuple[np.ndarray, np.ndarray]:
    """``pred`` and ``target`` as float64, reduced to the values ``mask`` selects on their trailing axes."""
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if mask is None:
        return p, t
    mask = np.asarray(mask, dtype=bool)
    return p[..., mask], t[..., mask]


def mae(pred, target, mask=None) -> np.ndarray:
    """Mean absolute error, NaN values ignored.

    Maps ``(n, V)``: one value per scan (row), ``(n,)``. ``mask`` (bool over the trailing axes: the
    vertices of a map, or the voxels of a 3-D image) keeps only the values it marks; a single map or
    image with its mask gives one value (unit of ``target``).
    """
    p, t = _scored(pred, target, mask)
    return np.nanmean(np.abs(p - t), axis=-1)


def psnr(pred, target, mask=None, data_range: float = THICKNESS_RANGE_MM, *, clip: bool = True) -> np.ndarray:
    """Peak signal-to-noise ratio (dB): ``20 log10(data_range) - 10 log10(MSE)``, inf when equal.

    One value per scan (row) of maps, or one per image with a ``mask`` over its voxels (as :func:`mae`);
    NaN values ignored. ``clip=True`` (the S2SGAN authors' definition for thickness maps, with
    ``data_range`` 5 mm) first clips both to [0, data_range]; images in their own unit are scored
    with ``clip=False``.
    """
    p, t = _scored(pred, target, mask)
    if clip:
        p, t = np.clip(p, 0.0, data_range), np.clip(t, 0.0, data_range)
    mse = np.nanmean((p - t) ** 2, axis=-1)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(data_range) - 10.0 * np.log10(mse)


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

    Returns
    -------
    csr_matrix
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

    Returns
    -------
    ndarray
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

    Parameters
    ----------
    maps : ndarray
        (n_subjects, n_sites, n_features): every subject scanned at every site.

    Returns
    -------
    ndarray
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


# -- multivariate site effect -----------------------------------------------------------------------
#
# Site effects that per-feature tests miss: in the joint distribution of the features (neighbourhoods
# of scans in PCA space, a multivariate test of the site means) and in the covariance between nearby
# vertices. All four adjust for the covariates first (least squares on the intercept and the
# covariates), so that an age difference between sites does not count as a site effect.

def _adjusted(X, covariates, n: int) -> np.ndarray:
    Y = np.asarray(X, dtype=np.float64)[:, complete_features(np.asarray(X, dtype=np.float64))]
    return _residuals(design_matrix(covariates, n), Y)


def pca_scores(X, covariates: pd.DataFrame | None = None, n_components: int = 20) -> np.ndarray:
    """(n_scans, m) scores on the first ``m = min(n_components, n_scans - 1, n_features)`` principal
    components of the covariate-adjusted complete features (centred, not scaled: thickness in mm)."""
    Y = _adjusted(X, covariates, np.asarray(X).shape[0])
    Y = Y - Y.mean(axis=0)
    m = max(1, min(n_components, Y.shape[0] - 1, Y.shape[1]))
    U, s, _ = np.linalg.svd(Y, full_matrices=False)
    return U[:, :m] * s[:m]


def _neighbours(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each scan's ``k`` nearest other scans, (n, k) each."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(scores).query(scores, k=k + 1)
    return dist[:, 1:], idx[:, 1:]


def kbet(X, sites, covariates: pd.DataFrame | None = None, *, k: int | None = None, alpha: float = 0.05,
         n_components: int = 20) -> dict[str, float]:
    """kBET (Büttner et al., Nat Methods 2019): how often a scan's neighbourhood has the wrong site mix.

    For every scan, the sites of its ``k`` nearest other scans (Euclidean, on :func:`pca_scores`) are
    compared with the global site proportions by Pearson's chi-square test (``K - 1`` degrees of
    freedom); the result is the fraction of scans whose test rejects at ``alpha`` (0.05). Without any
    site effect it is close to ``alpha``; 1 means every neighbourhood is dominated by some site.
    ``k`` defaults to a quarter of the mean site size, kept within [10, 100] and below the smallest
    site size (kBET's own default is of that order: neighbourhoods small enough to be local, large
    enough for the chi-square approximation).

    Returns ``kbet_rejection`` and the ``kbet_k`` used.
    """
    sites = np.asarray(sites).astype(str)
    labels, codes = np.unique(sites, return_inverse=True)
    n = sites.size
    counts = np.bincount(codes)
    if k is None:
        k = int(np.clip(round(0.25 * n / labels.size), 10, 100))
        k = max(2, min(k, int(counts.min()) - 1, n - 1))
    if labels.size < 2:
        return {"kbet_rejection": float("nan"), "kbet_k": float(k)}
    _, idx = _neighbours(pca_scores(X, covariates, n_components), k)
    observed = np.zeros((n, labels.size))
    np.add.at(observed, (np.repeat(np.arange(n), k), codes[idx].ravel()), 1.0)
    expected = k * counts / n
    chi2 = (((observed - expected) ** 2) / expected).sum(axis=1)
    p = stats.chi2.sf(chi2, labels.size - 1)
    return {"kbet_rejection": float(np.mean(p < alpha)), "kbet_k": float(k)}


def lisi(X, sites, covariates: pd.DataFrame | None = None, *, perplexity: float = 30.0,
         n_components: int = 20) -> dict[str, float]:
    """iLISI (Korsunsky et al., Nat Methods 2019): the effective number of sites around each scan.

    For every scan, Gaussian weights on its ``3 * perplexity`` nearest other scans (on
    :func:`pca_scores`) with the bandwidth set, by bisection, so that the weights' perplexity
    (``exp`` of their entropy) equals ``perplexity`` (30, Harmony's default; lowered to a third of the
    scans when there are few); the inverse Simpson index ``1 / sum_s P_s^2`` of the weight per site.
    1 = one site only, K = perfectly mixed K sites (with equal site sizes).

    Returns ``ilisi`` (mean over scans) and ``ilisi_norm`` = (ilisi - 1) / (K - 1) in [0, 1].
    """
    sites = np.asarray(sites).astype(str)
    labels, codes = np.unique(sites, return_inverse=True)
    n = sites.size
    perplexity = float(min(perplexity, (n - 1) / 3.0))
    k = int(min(n - 1, max(3, round(3 * perplexity))))
    dist, idx = _neighbours(pca_scores(X, covariates, n_components), k)
    d2 = dist**2
    d2 = d2 - d2[:, :1]                                    # shift: weights are scale-free in the nearest one
    target = np.log(perplexity)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    beta = np.ones(n) / max(float(np.median(d2[:, -1])), 1e-12)
    for _ in range(60):
        w = np.exp(-d2 * beta[:, None])
        total = w.sum(axis=1)
        p = w / total[:, None]
        entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
        too_flat = entropy > target                          # entropy too high: narrow the kernel
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(np.isfinite(hi), 0.5 * (lo + hi), beta * 2.0)
    share = np.zeros((n, labels.size))
    np.add.at(share, (np.repeat(np.arange(n), k), codes[idx].ravel()), p.ravel())
    ilisi = 1.0 / (share**2).sum(axis=1)
    mean = float(ilisi.mean())
    return {"ilisi": mean, "ilisi_norm": (mean - 1.0) / (labels.size - 1) if labels.size > 1 else float("nan")}


def manova_site(X, sites, covariates: pd.DataFrame | None = None, *, n_components: int = 10) -> dict[str, float]:
    """MANOVA of site on the first principal components, adjusted for the covariates.

    The scores of the first ``n_components`` (10) components of the covariate-adjusted features
    (:func:`pca_scores`) are the responses; the hypothesis matrix ``H`` compares the models
    ``1 + covariates + site`` and ``1 + covariates``, ``E`` is the full model's residual matrix.
    Pillai's trace ``V = tr(H (H + E)^-1)`` (0 = no site difference, up to min(m, K - 1)) with its
    F approximation and p-value (Pillai 1955; as R's ``summary.manova``).

    Returns ``manova_pillai``, ``manova_f``, ``manova_df1``, ``manova_df2``, ``manova_p``.
    """
    sites = np.asarray(sites).astype(str)
    n = sites.size
    reduced = design_matrix(covariates, n)
    full = np.column_stack([reduced, _site_dummies(sites)])
    q = full.shape[1] - reduced.shape[1]
    df_error = n - np.linalg.matrix_rank(full)
    m = int(max(1, min(n_components, df_error - 1)))
    Y = pca_scores(X, covariates, m)
    m = Y.shape[1]
    res_full, res_reduced = _residuals(full, Y), _residuals(reduced, Y)
    E = res_full.T @ res_full
    H = res_reduced.T @ res_reduced - E
    eig = np.linalg.eigvals(np.linalg.solve(H + E, H)).real
    pillai = float(np.clip(eig, 0.0, 1.0).sum())
    s = min(m, q)
    mm = (abs(m - q) - 1) / 2.0
    nn = (df_error - m - 1) / 2.0
    df1, df2 = s * (2 * mm + s + 1), s * (2 * nn + s + 1)
    f = (df2 / df1) * pillai / (s - pillai) if s > pillai else float("inf")
    return {"manova_pillai": pillai, "manova_f": float(f), "manova_df1": float(df1), "manova_df2": float(df2),
            "manova_p": float(stats.f.sf(f, df1, df2)) if np.isfinite(f) else 0.0}


def ring_neighbourhoods(faces: np.ndarray, n_vertices: int, rings: int = 1) -> list[np.ndarray]:
    """Each vertex with its neighbours up to ``rings`` edges away, the centre first: list of (m_v,) arrays."""
    window = mesh_window(faces, n_vertices, rings=rings)
    out = []
    for v in range(n_vertices):
        cols = window.indices[window.indptr[v]:window.indptr[v + 1]]
        out.append(np.concatenate([[v], cols[cols != v]]))
    return out


def covariance_heterogeneity(X, sites, neighbourhoods, covariates: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Per-vertex test that the sites share the local covariance matrix (Box's M; in the spirit of
    SAN's CovarF/CASH maps).

    For vertex ``v`` with neighbourhood ``N(v)`` (e.g. its 1-ring, 7 vertices; :func:`ring_neighbourhoods`),
    the residuals of the model ``1 + covariates + site`` at ``N(v)`` give each site's ``m x m``
    covariance ``S_k`` (``n_k - 1`` degrees of freedom) and the pooled ``S``; Box's
    ``M = (N - K) ln|S| - sum_k (n_k - 1) ln|S_k|`` with the chi-square approximation
    ``(1 - c) M ~ chi2(m (m + 1) (K - 1) / 2)``,
    ``c = (2m^2 + 3m - 1) / (6 (m + 1) (K - 1)) (sum_k 1/(n_k - 1) - 1/(N - K))``.
    It tests equality of the local covariances (variances and spatial correlations) after the site
    means are removed; it is sensitive to non-normality, as every covariance test. Vertices whose
    neighbourhood holds a NaN feature, or a site with no more scans than ``m``, get NaN.

    Returns ``statistic`` and ``p`` (n_vertices,), and ``df`` (n_vertices,).
    """
    X = np.asarray(X, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    n, V = X.shape
    labels, codes = np.unique(sites, return_inverse=True)
    K = labels.size
    full = np.column_stack([design_matrix(covariates, n), _site_dummies(sites)])
    keep = complete_features(X)
    R = np.full_like(X, np.nan)
    R[:, keep] = _residuals(full, X[:, keep])
    stat, p, df = np.full(V, np.nan), np.full(V, np.nan), np.full(V, np.nan)
    nk = np.bincount(codes, minlength=K).astype(float)
    by_size: dict[int, list[int]] = {}
    for v, hood in enumerate(neighbourhoods):
        if keep[hood].all():
            by_size.setdefault(len(hood), []).append(v)
    for m, verts in by_size.items():
        if K < 2 or (nk <= m).any() or n - K <= m:
            continue
        hoods = np.stack([neighbourhoods[v] for v in verts])            # (B, m)
        step = max(1, (64 * 2**20) // (8 * n * m))
        for s in range(0, len(verts), step):
            block, hb = np.asarray(verts[s:s + step]), hoods[s:s + step]
            local = R[:, hb]                                              # (n, B, m)
            logdet_sites, pooled = 0.0, 0.0
            for k in range(K):
                r = local[codes == k]
                cov_k = np.einsum("nbi,nbj->bij", r, r) / (nk[k] - 1)     # site means are already removed
                pooled = pooled + (nk[k] - 1) * cov_k
                logdet_sites = logdet_sites + (nk[k] - 1) * np.linalg.slogdet(cov_k)[1]
            pooled = pooled / (n - K)
            M = (n - K) * np.linalg.slogdet(pooled)[1] - logdet_sites
            c = (2 * m * m + 3 * m - 1) / (6.0 * (m + 1) * (K - 1)) * ((1.0 / (nk - 1)).sum() - 1.0 / (n - K))
            dof = m * (m + 1) * (K - 1) / 2.0
            stat[block] = (1 - c) * M
            p[block] = stats.chi2.sf((1 - c) * M, dof)
            df[block] = dof
    return {"statistic": stat, "p": p, "df": df}


def multivariate_site_metrics(X, sites, covariates: pd.DataFrame | None = None, faces: np.ndarray | None = None,
                              alpha: float = 0.05) -> dict[str, float]:
    """The benchmark's multivariate columns: ``kbet_rejection``, ``ilisi``, ``manova_pillai``, ``manova_p``
    and, for vertex maps (``faces``), ``cov_het_frac``: the fraction of vertices whose 1-ring covariance
    differs between sites (:func:`covariance_heterogeneity`, FDR ``alpha``)."""
    out = {"kbet_rejection": kbet(X, sites, covariates)["kbet_rejection"],
           "ilisi": lisi(X, sites, covariates)["ilisi"]}
    manova = manova_site(X, sites, covariates)
    out.update(manova_pillai=manova["manova_pillai"], manova_p=manova["manova_p"])
    if faces is not None:
        het = covariance_heterogeneity(X, sites, ring_neighbourhoods(faces, np.asarray(X).shape[1]), covariates)
        out["cov_het_frac"] = _fdr_fraction(het["p"], alpha)
    return out
