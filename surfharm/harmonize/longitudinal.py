"""Longitudinal ComBat (Beer et al., NeuroImage 2020): repeated scans with a subject random intercept.

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
Only a random intercept is modelled (no random slope on time).
"""
from __future__ import annotations

import numpy as np

from surfharm.harmonize.base import HarmonizerInputError, register
from surfharm.harmonize.combat import ComBat, _check_matrix, _chunks, _constant_features

LOG10_LAMBDA_GRID = np.arange(-5.0, 5.0 + 1e-9, 0.05)


@register("combat-long")
class LongComBat(ComBat):
    """ComBat for repeated scans: ``fit(X, sites, covariates, subjects=...)``.

    Same parameters as :class:`ComBat`. Extra learned attributes: ``site_coef_`` (K, G) fixed site
    effects, ``lambda_`` (G,) random-intercept variance over residual variance (``var_pooled_`` is
    the residual variance sigma^2). Features with partly missing values are not supported (all-NaN
    features, such as the medial wall, are returned unchanged).
    """

    def fit(self, X, sites, covariates=None, *, subjects=None) -> "LongComBat":
        X = _check_matrix(X)
        self._subjects = _check_subjects(subjects, X.shape[0])
        try:
            return super().fit(X, sites, covariates)
        finally:
            del self._subjects

    def _first_pass_design(self):
        return None  # the mixed model accumulates its own sums below

    def _location_scale_fit(self, X, counts):
        S, C = self._site_design, self._cov_design
        D = np.hstack([S, C])
        n_scans, n_features = X.shape
        n_sites, n_cols = S.shape[1], D.shape[1]
        partial = (counts.n_obs > 0) & (counts.n_obs < n_scans)
        if partial.any():
            g = int(np.flatnonzero(partial)[0])
            raise HarmonizerInputError(
                f"LongComBat needs complete data: feature {g} (and {int(partial.sum()) - 1} more) has missing values in "
                "some scans; drop those features or scans (features missing in every scan are fine)")
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
        self.unchanged_ = constant | (counts.n_obs == 0) | ~(sigma2 > 0)
        self.var_pooled_ = np.where(self.unchanged_, 1.0, sigma2)

        # Standardise: remove fixed effects (site kept) and the subject intercept; per-site sums.
        intercepts = self._intercepts(y_bar - d_bar @ beta, per_subject)
        r1 = np.zeros((n_sites, n_features))
        r2 = np.zeros((n_sites, n_features))
        for rows, chunk in _chunks(X):
            centred = np.nan_to_num(chunk - self._standard_mean(rows) - intercepts[subject_codes[rows]])
            r1 += S[rows].T @ centred
            r2 += S[rows].T @ (centred * centred)
        sd = np.sqrt(self.var_pooled_)
        return counts.n_site, r1 / sd, r2 / self.var_pooled_

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

    def _scan_offsets(self, X, codes, cov, subjects=None, **kwargs):
        if kwargs:
            raise TypeError(f"LongComBat.transform got unexpected arguments {sorted(kwargs)}")
        subjects = _check_subjects(subjects, X.shape[0])
        subject_ids, subject_codes = np.unique(subjects, return_inverse=True)
        per_subject = np.bincount(subject_codes).astype(float)
        resid_sum = np.zeros((subject_ids.size, X.shape[1]))
        for rows, chunk in _chunks(X):
            fitted = self.grand_mean_ + cov[rows] @ self.covariate_coef_
            fitted = fitted + (self.site_coef_[codes[rows]] - self.grand_mean_)
            np.add.at(resid_sum, subject_codes[rows], np.nan_to_num(chunk - fitted))
        intercepts = self._intercepts(resid_sum / per_subject[:, None], per_subject)
        return lambda rows: intercepts[subject_codes[rows]]

    _ARRAYS = ComBat._ARRAYS + ("site_coef_", "lambda_")


def _check_subjects(subjects, n_scans: int) -> np.ndarray:
    if subjects is None:
        raise HarmonizerInputError("LongComBat needs subjects=...: one subject label per scan, the same label for "
                                   "repeated scans of one person")
    arr = np.asarray(subjects).astype(str)
    if arr.ndim != 1 or arr.shape[0] != n_scans:
        raise HarmonizerInputError(f"subjects has shape {arr.shape}; expected one label per scan ({n_scans},)")
    return arr
