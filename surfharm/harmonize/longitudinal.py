"""Longitudinal ComBat (Beer et al., NeuroImage 2020): repeated scans with a subject random intercept (and slope).

Per feature g, scan j of subject i at site k:

    y_ijg = alpha_g + x_ij' beta_g + u_ig + gamma_kg + sqrt(delta_kg) * eps_ijg,
    u_ig ~ N(0, lambda_g sigma_g^2),  eps_ijg ~ N(0, sigma_g^2)

The fixed effects and the variance ratio ``lambda_g`` are estimated by REML for every feature at
once: with subject means and within-subject deviations, ``X' V^-1 X``, ``X' V^-1 y`` and
``y' V^-1 y`` are sums over the distinct numbers of scans per subject weighted by 1 / (1 + lambda n),
so the REML criterion is evaluated for all features on a grid of lambda (10^-5 .. 10^5, 0.05 decades
apart, and lambda = 0) and refined by parabolas through three points on shrinking stencils.
Then, as in Beer et al., the data are standardised by the fixed effects, the subject's predicted intercept (BLUP) and
``sigma_g``; the site parameters are estimated and shrunk exactly as in ComBat; the subject
intercepts are added back.

``transform`` needs the subjects as well (``subjects=``): a subject's intercept is predicted from
the scans given, with the fitted fixed effects and ``lambda_g``, which on the training scans
reproduces ``fit_transform`` exactly and for new subjects is the usual BLUP.

With ``random_slope="time"`` (a numeric covariate column) each subject also has its own slope on
time, longCombat's ``(1 + time | subject)``:

    y_ijg = alpha_g + x_ij' beta_g + b_i0g + b_i1g t_ij + gamma_kg + sqrt(delta_kg) eps_ijg,
    (b_i0g, b_i1g) ~ N(0, D_g) (2 x 2: intercept and slope variances, their covariance)

estimated by REML with an EM algorithm run for a block of features at once
(:mod:`surfharm.harmonize._mixed`); the data are standardised by the fixed effects, the subject's
predicted line ``b_i0 + b_i1 t`` and ``sigma_g``, and the subject lines are added back, so each
subject's own rate of change (the biology of a longitudinal study) is kept. A subject with a
single scan, or with all scans at one time, has no slope of its own: it still informs the
intercept variance and the fixed effects, and its predicted slope is the part of the slope that its
intercept predicts through the covariance in ``D_g`` (zero when that covariance is zero).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from surfharm.harmonize import _design, _mixed
from surfharm.harmonize.base import Harmonizer, HarmonizerInputError, register
from surfharm.harmonize._tiles import _check_matrix, _chunks, _feature_blocks, _row_blocks
from surfharm.harmonize.combat import ComBat, _constant_features, _normal_equations

LOG10_LAMBDA_GRID = np.arange(-5.0, 5.0 + 1e-9, 0.05)
#: Subjects x features per block of the random-slope EM (its arrays have this many float64 values).
SLOPE_BLOCK_ELEMENTS = 2**19


@register("combat-long")
class LongComBat(ComBat):
    """ComBat for repeated scans: ``fit(X, sites=..., covariates=..., subjects=...)``.

    Same parameters as :class:`ComBat`, and ``random_slope``: the name of a numeric covariate
    column (e.g. ``"age"`` or ``"years_since_baseline"``) on which each subject gets its own random
    slope; ``None`` (default) models a subject random intercept only.

    Extra learned attributes: ``site_coef_`` (K, G) fixed site effects; ``var_pooled_`` is the
    residual variance sigma^2 (with a reference site: that site's mean squared residual, the scale
    the others are mapped to). Intercept model: ``lambda_`` (G,) random-intercept variance over
    sigma^2. Slope model: ``residual_var_`` (G,) sigma^2; ``random_cov_`` (3, G) the variance of the
    intercepts (at time 0), their covariance with the slopes and the variance of the slopes, in data
    units and the time column's units; ``em_iterations_`` (G,) SQUAREM-EM cycles per feature;
    ``time_center_``, ``time_scale_`` (how time was standardised inside the fit). The time column is
    also a fixed-effect covariate (every covariate column is). Features with partly missing values are
    not supported (all-NaN features, such as the medial wall, are returned unchanged).
    """

    def __init__(self, *, eb: bool = True, parametric: bool = True, mean_only: bool = False,
                 reference_site=None, smooth_terms: tuple = (), spline_df: int = 5, random_slope: str | None = None):
        super().__init__(eb=eb, parametric=parametric, mean_only=mean_only, reference_site=reference_site,
                         smooth_terms=smooth_terms, spline_df=spline_df)
        self.random_slope = random_slope

    side_data = ("covariates", "subjects")
    required_side_data = ("subjects",)
    # A new site's location is a fixed effect estimated jointly with the subjects' random effects: refit.
    supports_adapt = False
    adapt = Harmonizer.adapt

    allows_partial_nan = False

    def fit(self, X, y=None, *, sites=None, covariates=None, subjects=None) -> "LongComBat":
        """Learn the mixed model and the site effects; ``subjects``: (n_scans,) one label per scan. Returns self."""
        X = _check_matrix(X)
        self._subjects = _check_subjects(subjects, X.shape[0])
        if self.random_slope is not None:
            self._time = _time_column(covariates, self.random_slope, X.shape[0])
            _check_slope_identifiable(self._time, self._subjects, self.random_slope)
        try:
            return super().fit(X, sites=sites, covariates=covariates)
        finally:
            del self._subjects
            self.__dict__.pop("_time", None)

    def _location_scale_fit(self, X):
        n_site = _observed_per_site(X, self._site_design)
        n_obs = n_site.sum(axis=0)
        _refuse_partly_missing(X, n_obs)
        if self.random_slope is not None:
            return self._slope_fit(X, n_site, n_obs)
        return self._intercept_fit(X, n_site, n_obs)

    def _intercept_fit(self, X, n_site, n_obs):
        S, C = self._site_design, self._cov_design
        D = np.hstack([S, C])
        n_scans, n_features = X.shape
        n_sites, n_cols = S.shape[1], D.shape[1]
        subject_ids, subject_codes = np.unique(self._subjects, return_inverse=True)
        per_subject = np.bincount(subject_codes).astype(float)
        # Subject sums of the data and of the design; within-subject cross products.
        y_sum = np.zeros((subject_ids.size, n_features))
        yty = np.zeros(n_features)
        dty = np.zeros((n_cols, n_features))
        for rows, chunk in _chunks(X):
            chunk = np.nan_to_num(chunk)
            np.add.at(y_sum, subject_codes[rows], chunk)
            yty += np.einsum("ij,ij->j", chunk, chunk)
            dty += D[rows].T @ chunk
        d_sum = np.zeros((subject_ids.size, n_cols))
        np.add.at(d_sum, subject_codes, D)
        y_bar, d_bar = y_sum / per_subject[:, None], d_sum / per_subject[:, None]
        within_dd = D.T @ D - d_bar.T @ (per_subject[:, None] * d_bar)
        within_dy = dty - d_bar.T @ y_sum
        within_yy = yty - np.einsum("ij,ij->j", y_bar, y_sum)
        # Subjects grouped by their number of scans: V^-1 weights depend on lambda only through n.
        sizes = np.unique(per_subject)
        groups = []
        for size in sizes:
            members = per_subject == size
            groups.append((size, size * d_bar[members].T @ d_bar[members], size * d_bar[members].T @ y_bar[members],
                           size * np.einsum("ij,ij->j", y_bar[members], y_bar[members])))

        def criterion(lam):
            """REML log-likelihood (up to a constant) for every feature at one lambda >= 0, and beta."""
            a = within_dd.copy()
            b = within_dy.copy()
            yy = within_yy.copy()
            log_det_v = 0.0
            for size, dd, dy, y2 in groups:
                w = 1.0 / (1.0 + lam * size)
                a += w * dd
                b += w * dy
                yy += w * y2
                log_det_v += np.log1p(lam * size) * np.count_nonzero(per_subject == size)
            beta = np.linalg.solve(a, b)
            rss = np.maximum(yy - np.einsum("pg,pg->g", b, beta), 1e-300)
            return -0.5 * ((n_scans - n_cols) * np.log(rss) + log_det_v + np.linalg.slogdet(a)[1]), beta, rss

        log_lambdas = np.concatenate([[-np.inf], LOG10_LAMBDA_GRID])
        scores = np.stack([criterion(10.0 ** t)[0] for t in log_lambdas])        # (grid, G)
        best = np.argmax(scores, axis=0)
        log_lam = log_lambdas[best].copy()
        interior = (best >= 2) & (best < len(log_lambdas) - 1)
        idx = np.flatnonzero(interior)
        if idx.size:
            lo, mid, hi = (scores[best[idx] + k, idx] for k in (-1, 0, 1))
            curvature = lo - 2 * mid + hi
            step = np.where(curvature < 0, 0.5 * (lo - hi) / np.where(curvature < 0, curvature, -1.0), 0.0)
            log_lam[idx] += np.clip(step, -0.5, 0.5) * (LOG10_LAMBDA_GRID[1] - LOG10_LAMBDA_GRID[0])
        # Two more parabolas on shrinking stencils, each feature at its own lambda.
        idx = np.flatnonzero(np.isfinite(log_lam))
        stats = (within_dd, within_dy[:, idx], within_yy[idx],
                 [(size, dd, dy[:, idx], y2[idx]) for size, dd, dy, y2 in groups], per_subject, n_scans - n_cols)
        for h in (0.01, 0.001):
            if not idx.size:
                break
            lo, mid, hi = (self._criterion_at(10.0 ** (log_lam[idx] + k * h), *stats) for k in (-1, 0, 1))
            curvature = lo - 2 * mid + hi
            step = np.where(curvature < 0, 0.5 * (lo - hi) / np.where(curvature < 0, curvature, -1.0), 0.0)
            log_lam[idx] += np.clip(step, -1.0, 1.0) * h
        lam = np.where(np.isfinite(log_lam), 10.0 ** log_lam, 0.0)
        beta, rss = self._solve_at(lam, within_dd, within_dy, within_yy, groups)
        self.lambda_ = lam
        self.site_coef_ = beta[:n_sites]
        self.covariate_coef_ = beta[n_sites:]
        if self.reference_index_ is None:
            self.grand_mean_ = (self.site_counts_[:, None] * self.site_coef_).sum(axis=0) / n_scans
        else:
            self.grand_mean_ = self.site_coef_[self.reference_index_].copy()
        sigma2 = rss / (n_scans - n_cols)
        constant = _constant_features(X, sigma2, self.grand_mean_)
        self.unchanged_ = constant | (n_obs == 0) | ~(sigma2 > 0)
        self.var_pooled_ = np.where(self.unchanged_, 1.0, sigma2)

        # Standardise: remove fixed effects (site kept) and the subject intercept; per-site sums.
        intercepts = self._intercepts(y_bar - d_bar @ beta, per_subject)
        r1 = np.zeros((n_sites, n_features))
        r2 = np.zeros((n_sites, n_features))
        for rows, chunk in _chunks(X):
            centred = np.nan_to_num(chunk - self._standard_mean(rows) - intercepts[subject_codes[rows]])
            r1 += S[rows].T @ centred
            r2 += S[rows].T @ (centred * centred)
        self.var_pooled_ = self._standardising_variance(self.var_pooled_, n_site, r2, self.unchanged_)
        return n_site, r1 / np.sqrt(self.var_pooled_), r2 / self.var_pooled_

    @classmethod
    def _criterion_at(cls, lam, within_dd, within_dy, within_yy, groups, per_subject, dof):
        """REML log-likelihood (up to a constant) of each feature at its own lambda (G,)."""
        a, beta, rss = cls._solve_at(lam, within_dd, within_dy, within_yy, groups, return_gram=True)
        log_det_v = np.log1p(lam[:, None] * per_subject[None, :]).sum(axis=1)
        return -0.5 * (dof * np.log(np.maximum(rss, 1e-300)) + log_det_v + np.linalg.slogdet(a)[1])

    @staticmethod
    def _solve_at(lam, within_dd, within_dy, within_yy, groups, return_gram=False):
        """beta (P, G) and the weighted residual sum of squares (G,) at each feature's own lambda."""
        a = np.broadcast_to(within_dd, (lam.size, *within_dd.shape)).copy()
        b = within_dy.T.copy()
        yy = within_yy.copy()
        for size, dd, dy, y2 in groups:
            w = 1.0 / (1.0 + lam * size)
            a += w[:, None, None] * dd
            b += w[:, None] * dy.T
            yy += w * y2
        beta = np.linalg.solve(a, b[..., None])[..., 0]
        rss = yy - np.einsum("gp,gp->g", b, beta)
        if return_gram:
            return a, beta.T, rss
        return beta.T, rss

    def _intercepts(self, mean_residual, n_scans_of_subject):
        """BLUP of each subject's intercept: lambda n / (1 + lambda n) x its mean residual. (subjects, G)."""
        shrink = self.lambda_[None, :] * n_scans_of_subject[:, None]
        return np.nan_to_num(shrink / (1.0 + shrink) * mean_residual)

    # -- random intercept and slope ------------------------------------------------------------------
    def _slope_fit(self, X, n_site, n_obs):
        """REML of the intercept-and-slope model, one block of features at a time; per-site sums."""
        S, C = self._site_design, self._cov_design
        D = np.hstack([S, C])
        n_scans, n_features = X.shape
        n_sites, n_cols = S.shape[1], D.shape[1]
        self.time_center_ = float(self._time.mean())
        self.time_scale_ = float(self._time.std())
        subject_codes = np.unique(self._subjects, return_inverse=True)[1]
        subjects = _mixed.SubjectDesign(D, subject_codes, self._scaled_time(self._time))
        self.site_coef_ = np.zeros((n_sites, n_features))
        self.covariate_coef_ = np.zeros((C.shape[1], n_features))
        self.grand_mean_ = np.zeros(n_features)
        self.var_pooled_ = np.ones(n_features)
        self.residual_var_ = np.ones(n_features)
        self.random_cov_ = np.zeros((3, n_features))
        self.em_iterations_ = np.zeros(n_features, dtype=np.int64)
        self.unchanged_ = np.zeros(n_features, dtype=bool)
        s1 = np.empty((n_sites, n_features))
        s2 = np.empty((n_sites, n_features))
        dtd = D.T @ D
        for block in _feature_blocks_for(n_features, subjects.n_subjects):
            # Least squares first, so that the EM works on residuals (no cancellation in its sums of squares).
            dty = np.zeros((n_cols, block.stop - block.start))
            for rows, tile in _row_blocks(X, block):
                dty += D[rows].T @ np.nan_to_num(tile)
            beta_ols = np.linalg.solve(dtd, dty)
            z0, z1 = np.zeros((2, subjects.n_subjects, dty.shape[1]))
            xty = np.zeros_like(dty)
            rss = np.zeros(dty.shape[1])
            for rows, tile in _row_blocks(X, block):
                tile = np.nan_to_num(tile - D[rows] @ beta_ols)
                a, b = subjects.subject_sums(tile, rows)
                z0 += a
                z1 += b
                xty += D[rows].T @ tile
                rss += np.einsum("ij,ij->j", tile, tile)
            grand_ols = (self.site_counts_ @ beta_ols[:n_sites]) / n_scans
            unchanged = (_constant_features(X, rss / n_scans, grand_ols, start=block.start)
                         | (n_obs[block] == 0) | ~(rss > 0))
            fit = np.flatnonzero(~unchanged)
            beta = beta_ols.copy()
            if fit.size:
                delta, sigma2, d_scaled, steps = _mixed.fit_reml(subjects, z0[:, fit], z1[:, fit], xty[:, fit],
                                                                 rss[fit])
                beta[:, fit] += delta
                self.residual_var_[block][fit] = sigma2
                self.random_cov_[:, block][:, fit] = self._unscale_cov(d_scaled)
                self.em_iterations_[block][fit] = steps
            self.unchanged_[block] = unchanged
            self.site_coef_[:, block] = beta[:n_sites]
            self.covariate_coef_[:, block] = beta[n_sites:]
            if self.reference_index_ is None:
                self.grand_mean_[block] = (self.site_counts_ @ beta[:n_sites]) / n_scans
            else:
                self.grand_mean_[block] = beta[self.reference_index_]
            # Standardise: remove fixed effects (site kept) and each subject's line; per-site sums.
            b0, b1 = self._subject_lines(X, block, D, subject_codes, self._time)
            r1 = np.zeros((n_sites, dty.shape[1]))
            r2 = np.zeros_like(r1)
            tau = self._scaled_time(self._time)
            for rows, tile in _row_blocks(X, block):
                codes = subject_codes[rows]
                tile -= self.grand_mean_[block] + C[rows] @ self.covariate_coef_[:, block]
                tile -= b0[codes] + tau[rows, None] * b1[codes]
                tile = np.nan_to_num(tile)
                r1 += S[rows].T @ tile
                r2 += S[rows].T @ (tile * tile)
            var = self._standardising_variance(self.residual_var_[block], n_site[:, block], r2, self.unchanged_[block])
            self.var_pooled_[block] = var
            s1[:, block] = r1 / np.sqrt(var)
            s2[:, block] = r2 / var
        stopped = int((self.em_iterations_ >= _mixed.MAX_ITERATIONS).sum())
        if stopped:
            warnings.warn(f"the random-slope REML did not converge in {_mixed.MAX_ITERATIONS} cycles for {stopped} of "
                          f"{n_features} features (em_iterations_ == {_mixed.MAX_ITERATIONS}); their last iterate is "
                          "used. This happens where the slope variance is at or near zero",
                          RuntimeWarning, stacklevel=3)
        return n_site, s1, s2

    def _standardising_variance(self, sigma2, n_site, r2, unchanged):
        """The variance the data are standardised by: sigma^2, or the reference site's own.

        With a reference site, its scans must come out unchanged and the others must take its
        scale; residuals about the subjects' predicted intercepts or lines vary less than sigma^2
        (each subject's prediction uses up part of its scans), so the reference site's mean squared
        residual, not sigma^2, is the scale that leaves it as it is.
        """
        if self.reference_index_ is None:
            return sigma2
        i = self.reference_index_
        with np.errstate(invalid="ignore", divide="ignore"):
            var_ref = r2[i] / n_site[i]
        return np.where(np.isfinite(var_ref) & (var_ref > 0) & ~unchanged, var_ref, sigma2)

    def _scaled_time(self, time: np.ndarray) -> np.ndarray:
        return (time - self.time_center_) / self.time_scale_

    def _unscale_cov(self, d_scaled: np.ndarray) -> np.ndarray:
        """(3, B) covariance of (intercept, slope) in scaled time -> in the time column's units (intercept at 0)."""
        c, s = self.time_center_, self.time_scale_
        d00, d01, d11 = d_scaled
        # b_original = L b_scaled, L = [[1, -c/s], [0, 1/s]]
        return np.stack([d00 - 2 * c / s * d01 + (c / s) ** 2 * d11, (d01 - c / s * d11) / s, d11 / s**2])

    def _scaled_cov(self, block: slice) -> np.ndarray:
        """Inverse of :meth:`_unscale_cov` for the stored ``random_cov_`` of a block: (3, B)."""
        c, s = self.time_center_, self.time_scale_
        d00, d01, d11 = self.random_cov_[:, block]
        return np.stack([d00 + 2 * c * d01 + c**2 * d11, s * (d01 + c * d11), s**2 * d11])

    def _subject_lines(self, X, block: slice, design, subject_codes, time):
        """BLUPs (intercept, slope in scaled time) of each subject's line: two (subjects, B) arrays.

        Given the fitted fixed effects and variances; the same code serves ``fit`` and ``transform``,
        so that transforming the training scans reproduces ``fit_transform``.
        """
        subjects = _mixed.SubjectDesign(design, subject_codes, self._scaled_time(time))
        beta = np.vstack([self.site_coef_[:, block], self.covariate_coef_[:, block]])
        z0, z1 = np.zeros((2, subjects.n_subjects, block.stop - block.start))
        for rows, tile in _row_blocks(X, block):
            a, b = subjects.subject_sums(np.nan_to_num(tile - design[rows] @ beta), rows)
            z0 += a
            z1 += b
        fitted = ~self.unchanged_[block]
        b0, b1 = np.zeros_like(z0), np.zeros_like(z1)
        d = self._scaled_cov(block)[:, fitted]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = _mixed.posterior_weights(subjects.ztz, self.residual_var_[block][fitted], *d)
            line = _mixed.blups(w, z0[:, fitted], z1[:, fitted])
        b0[:, fitted], b1[:, fitted] = (np.nan_to_num(x) for x in line)
        return b0, b1

    # -- transform -----------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None, subjects=None, out=None) -> np.ndarray:
        """Remove the site effects; each scan's subject line (``subjects``) is kept. Same shape as ``X``."""
        _refuse_partly_missing(_check_matrix(X))
        return self._transform(X, sites, covariates, out, subjects=subjects)

    def _scan_offsets(self, X, codes, cov, covariates, subjects=None):
        subjects = _check_subjects(subjects, X.shape[0])
        subject_ids, subject_codes = np.unique(subjects, return_inverse=True)
        if self.random_slope is not None:
            return self._line_offsets(X, codes, cov, covariates, subject_codes)
        per_subject = np.bincount(subject_codes).astype(float)
        resid_sum = np.zeros((subject_ids.size, X.shape[1]))
        for rows, chunk in _chunks(X):
            fitted = self.grand_mean_ + cov[rows] @ self.covariate_coef_
            fitted = fitted + (self.site_coef_[codes[rows]] - self.grand_mean_)
            np.add.at(resid_sum, subject_codes[rows], np.nan_to_num(chunk - fitted))
        intercepts = self._intercepts(resid_sum / per_subject[:, None], per_subject)
        return lambda rows, columns: intercepts[subject_codes[rows], columns]

    def _line_offsets(self, X, codes, cov, covariates, subject_codes):
        """offset(rows, block) = b_i0 + b_i1 t of each scan's subject; predicted per block when first asked."""
        time = _time_column(covariates, self.random_slope, X.shape[0])
        design = np.hstack([_design.one_hot(codes, len(self.sites_)), cov])
        tau = self._scaled_time(time)
        cache = {}

        def offset(rows, block):
            if cache.get("block") != (block.start, block.stop):
                cache["block"] = (block.start, block.stop)
                cache["lines"] = self._subject_lines(X, block, design, subject_codes, time)
            b0, b1 = cache["lines"]
            s = subject_codes[rows]
            return b0[s] + tau[rows, None] * b1[s]

        return offset

    # -- persistence ---------------------------------------------------------------------------------
    _ARRAYS = ComBat._ARRAYS + ("site_coef_",)

    def _state_arrays(self) -> tuple[str, ...]:
        if self.random_slope is None:
            return self._ARRAYS + ("lambda_",)
        return self._ARRAYS + ("residual_var_", "random_cov_", "em_iterations_")

    def _extra_metadata(self):
        if self.random_slope is None:
            return {}
        return {"time_center": self.time_center_, "time_scale": self.time_scale_}

    def _load_extra(self, arrays, meta) -> None:
        if self.random_slope is not None:
            self.time_center_, self.time_scale_ = float(meta["time_center"]), float(meta["time_scale"])


def _feature_blocks_for(n_features: int, n_subjects: int):
    """Feature blocks small enough that the EM's (subjects x features) arrays stay cache-sized."""
    width = int(np.clip(SLOPE_BLOCK_ELEMENTS // max(n_subjects, 1), 256, 16384))
    for start in range(0, n_features, width):
        yield slice(start, min(start + width, n_features))


def _time_column(covariates, name: str, n_scans: int) -> np.ndarray:
    """The numeric time values (n_scans,) of covariate column ``name``."""
    if not isinstance(covariates, pd.DataFrame):
        raise HarmonizerInputError(
            f"random_slope={name!r} names a covariate column: pass covariates as a pandas DataFrame with a "
            f"{name!r} column (got {type(covariates).__name__})")
    if name not in covariates.columns:
        raise HarmonizerInputError(
            f"random_slope={name!r} is not a covariate column; the columns are {[str(c) for c in covariates.columns]}")
    table = _design.as_table(covariates[[name]], n_scans)
    return _design._numeric_column(table[name], name, why="it is the time of the random slope")


def _check_slope_identifiable(time: np.ndarray, subjects: np.ndarray, name: str) -> None:
    """A slope variance needs subjects seen at two or more different times."""
    table = pd.DataFrame({"subject": subjects, "time": time})
    spread = table.groupby("subject")["time"].nunique()
    n_slopes = int((spread >= 2).sum())
    if n_slopes < 2:
        raise HarmonizerInputError(
            f"random_slope={name!r} needs at least 2 subjects scanned at 2 or more different {name!r} values "
            f"to estimate how slopes vary between subjects; {n_slopes} subject(s) are. Use random_slope=None "
            "(subject random intercept only)")


def _refuse_partly_missing(X, n_observed=None) -> None:
    """Refuse features observed in some scans but not all (all-NaN features, e.g. the medial wall, pass)."""
    if n_observed is None:
        n_observed = np.zeros(X.shape[1], dtype=np.int64)
        for _rows, chunk in _chunks(X):
            n_observed += (~np.isnan(chunk)).sum(axis=0)
    partial = (n_observed > 0) & (n_observed < X.shape[0])
    if partial.any():
        g = int(np.flatnonzero(partial)[0])
        raise HarmonizerInputError(
            f"LongComBat needs complete data: feature {g} (and {int(partial.sum()) - 1} more) has missing values (NaN) "
            "in some scans; drop those features or scans (features missing in every scan are fine)")


def _observed_per_site(X, site_design) -> np.ndarray:
    """(K, G) non-NaN scans per site and feature; refuses inf."""
    n_site = np.empty((site_design.shape[1], X.shape[1]))
    for block in _feature_blocks(X.shape[1]):
        counts = _normal_equations(X, block, site_design, None)
        n_site[:, block] = site_design.sum(axis=0)[:, None] if counts.n_site is None else counts.n_site
    return n_site


def _check_subjects(subjects, n_scans: int) -> np.ndarray:
    if subjects is None:
        raise HarmonizerInputError("LongComBat needs subjects=...: one subject label per scan, the same label for "
                                   "repeated scans of one person")
    arr = np.asarray(subjects).astype(str)
    if arr.ndim != 1 or arr.shape[0] != n_scans:
        raise HarmonizerInputError(f"subjects has shape {arr.shape}; expected one label per scan ({n_scans},)")
    return arr
