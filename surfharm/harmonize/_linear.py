"""The pooled linear model shared by RELIEF and SAN: site indicators + covariates, fitted jointly.

``y_jg = gamma_{s(j) g} + x_j' beta_g + r_jg`` by least squares over complete features. The
*covariate fit* of a scan is ``alpha_g + x_j' beta_g`` with ``alpha_g`` the sample-size-weighted
mean of the site intercepts (as in ComBat); the *site mean* is ``gamma_{s g} - alpha_g``. Fitting
site and covariates together keeps a covariate that differs between sites (age, sex) from being
counted as site effect, or the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surfharm.harmonize import _design
from surfharm.harmonize.base import HarmonizerInputError


@dataclass
class LinearFit:
    grand_mean: np.ndarray      # (p,)
    covariate_coef: np.ndarray  # (Q, p)
    site_offset: np.ndarray     # (K, p): site intercept - grand mean
    residual_sd: np.ndarray     # (p,): sqrt(RSS / (n - K - Q))
    pooled_sd: np.ndarray       # (p,): sqrt(RSS / n), ComBat's pooled standard deviation

    def covariate_fit(self, C: np.ndarray) -> np.ndarray:
        """(n, p) alpha + C beta."""
        return self.grand_mean + (C @ self.covariate_coef if C.shape[1] else 0.0)

    def residuals(self, Y: np.ndarray, codes: np.ndarray, C: np.ndarray) -> np.ndarray:
        """(n, p) y - covariate fit - site mean."""
        return Y - self.covariate_fit(C) - self.site_offset[codes]


def fit_linear(Y: np.ndarray, codes: np.ndarray, n_sites: int, C: np.ndarray, names) -> LinearFit:
    """Least squares of complete data ``Y`` (n, p) on ``[one_hot(codes) | C]``."""
    S = _design.one_hot(codes, n_sites)
    _design.check_identifiable(S, C, names)
    D = np.hstack([S, C])
    n, n_cols = D.shape
    if n <= n_cols:
        raise HarmonizerInputError(f"{n} scans cannot fit {n_cols} design columns ({n_sites} sites + "
                                   f"{C.shape[1]} covariate columns); add scans or drop covariates")
    coef, *_ = np.linalg.lstsq(D, Y, rcond=None)
    resid = Y - D @ coef
    counts = S.sum(axis=0)
    grand = counts @ coef[:n_sites] / n
    rss = (resid * resid).sum(axis=0)
    return LinearFit(grand_mean=grand, covariate_coef=coef[n_sites:], site_offset=coef[:n_sites] - grand,
                     residual_sd=np.sqrt(rss / (n - n_cols)), pooled_sd=np.sqrt(rss / n))
