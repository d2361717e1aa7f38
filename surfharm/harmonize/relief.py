"""RELIEF: removal of latent inter-scanner effects through factorization (Zhang et al., Imaging
Neuroscience 2023).

Steps of the fit (scans in rows, features in columns; ``p`` features, ``n`` scans, ``n_k`` at site k):

1. Pooled least squares of every feature on site indicators + covariates (fitted jointly, as in
   ComBat, see :mod:`surfharm.harmonize._linear`); the residual ``r`` has the covariate fit and the
   site means removed. Features are standardised by the residual standard deviation
   ``sqrt(RSS / (n - K - Q))`` (``scale_features``).
2. Each site's standardised residual block is divided by its noise level ``s_k``, the robust
   ("MAD") estimate of the random-matrix literature: the median singular value of the block divided
   by ``sqrt(max(n_k, p) * mu)``, ``mu`` the median of the Marchenko-Pastur law of its aspect ratio
   (Gavish & Donoho 2014). After this the noise has unit variance at every site.
3. The scaled residual ``Z`` is split as ``Z = J + I_1 + ... + I_K + E``: ``J`` a low-rank part
   shared by all scans, ``I_k`` a low-rank part of site k's scans only, ``E`` noise, by minimising
   ``1/2 ||Z - J - sum_k I_k||_F^2 + lambda_J ||J||_* + sum_k lambda_k ||I_k||_*`` with block
   coordinate descent (each block is a soft-thresholded SVD). The thresholds are the expected
   operator norm of unit noise: ``lambda_J = sqrt(p) + sqrt(n)`` and, for each site,
   ``lambda_k = sqrt(p) + sqrt(n_k)`` with ``n_k`` that site's own size, whatever the order of the
   rows (rows are grouped by site internally, so the order of the input does not change the result
   beyond rounding). Iteration stops when the criterion changes by less than ``eps`` (1e-3,
   absolute) or after ``max_iter`` (1000) rounds.
4. Output: ``covariate fit + sd * (s_k * J + s_pooled * E)``, ``s_pooled = sqrt(sum_k n_k s_k^2 / n)``:
   the joint structure is kept at its site's scale, the noise is put on the pooled scale, and the
   site means and the site-specific structure ``I_k`` are dropped.

Applying the model (``transform``) to any scan of a known site, training scans included: at the
solution of step 3 every block is a soft-thresholded SVD, which acts on each scan (row) linearly,
``j = (z - i) V_J D_J V_J'`` and ``i = (z - j) V_k D_k V_k'`` (``V`` the right singular vectors of
the block, ``D`` the shrinkage factors ``(sigma - lambda) / sigma`` of its singular values). For a
scan ``z`` (its residual standardised with the fitted means, covariate effects, feature scales and
its site's ``s_k``) these two equations are solved jointly, a small linear system in the joint and
site-specific coordinates. What is exact: on the training scans this reproduces the decomposition
of step 3 up to its stopping tolerance (the maps are those of the last iteration; the largest
difference is recorded in ``training_gap_`` in standardised units). What approximates: for a new
scan, the subspaces, shrinkage factors and site scales are those learned without it (the scan does
not move them, as it would by a refit), so a held-out scan gets the output a refit would give it
only up to that influence (measured in tests/harmonize/test_relief.py).

Sites smaller than ``min_site_scans`` (default 10) are refused: the noise level ``s_k`` is the
median of the block's ``min(n_k, p)`` singular values, and the site-specific part is a low-rank
matrix with ``n_k`` columns; with fewer than 10 scans the median rests on fewer than 10 values and
the site's structure cannot be told apart from its noise (RELIEF is reported to be unstable with very
small sites).
"""
from __future__ import annotations

import functools
import time

import numpy as np
from threadpoolctl import threadpool_limits

from surfharm.harmonize import _design
from surfharm.harmonize._linear import fit_linear
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    StateCheck,
    check_data,
    check_n_features,
    register,
    require_sites,
)


@register("relief")
class RELIEF(Harmonizer):
    """RELIEF harmonization (see the module docstring for the model and its application to new scans).

    Parameters
    ----------
    eps : float
        Stop when the criterion changes by less than this (absolute; the published 1e-3).
    max_iter : int
        At most this many rounds of block coordinate descent (published: 1000).
    scale_features : bool
        Standardise each feature by its pooled residual standard deviation (published default).
    min_site_scans : int
        Smallest site accepted (default 10, see the module docstring).

    Learned attributes (K sites, p features, Q covariate columns)
    -------------------------------------------------------------
    sites_, site_counts_ (K,);  grand_mean_ (p,), covariate_coef_ (Q, p), site_offset_ (K, p),
    feature_sd_ (p,);  site_noise_ (K,) the scales ``s_k``;  pooled_noise_ the pooled scale;
    joint_basis_ (p, r_J), joint_shrink_ (r_J,);  site_basis_ (p, sum r_k), site_shrink_ (sum r_k,),
    site_rank_ (K,) ranks ``r_k`` (columns of ``site_basis_`` in site order);  n_iter_, converged_,
    criterion_, training_gap_, fit_seconds_;  unchanged_ (p,) features returned as given (NaN in
    every training scan, or constant after the covariate fit).
    """

    fitted_attribute = "joint_basis_"

    def __init__(self, *, eps: float = 1e-3, max_iter: int = 1000, scale_features: bool = True,
                 min_site_scans: int = 10):
        self.eps = eps
        self.max_iter = max_iter
        self.scale_features = scale_features
        self.min_site_scans = min_site_scans

    allows_partial_nan = False

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, covariates=None) -> "RELIEF":
        """Decompose the site-adjusted residuals of ``X`` (n_scans, n_features); returns self."""
        start = time.perf_counter()
        X = check_data(X, dtype=np.float64)
        n, p_all = X.shape
        sites = require_sites(sites, n, f"{type(self).__name__}.fit")
        self.sites_ = _design.site_levels(sites)
        codes = _design.site_codes(sites, self.sites_)
        n_sites = len(self.sites_)
        self.site_counts_ = np.bincount(codes, minlength=n_sites).astype(np.int64)
        self._check_site_sizes()
        self.encoder_ = _design.CovariateEncoder().fit(covariates, n)
        C = self.encoder_.transform(covariates, n)

        all_nan = np.isnan(X).all(axis=0)
        partial = np.isnan(X).any(axis=0) & ~all_nan
        if partial.any():
            g = int(np.flatnonzero(partial)[0])
            raise HarmonizerInputError(
                f"X holds NaN at feature {g} in some scans only ({int(partial.sum())} such features); RELIEF "
                "decomposes complete matrices: impute those values or drop the feature (a feature NaN in every "
                "scan, such as the medial wall, is allowed and returned as NaN)")
        used = ~all_nan
        Y = X[:, used]
        lin = fit_linear(Y, codes, n_sites, C, self.encoder_.names)
        sd = lin.residual_sd if self.scale_features else np.ones(Y.shape[1])
        constant = ~(sd > 1e-12 * np.maximum(np.abs(lin.grand_mean), 1.0))
        sd = np.where(constant, 1.0, sd)

        p = int(used.sum())
        self.n_features_in_ = p_all
        self.unchanged_ = all_nan.copy()
        self.unchanged_[np.flatnonzero(used)[constant]] = True
        self.grand_mean_ = _embed(lin.grand_mean, used, p_all)
        self.covariate_coef_ = _embed(lin.covariate_coef, used, p_all)
        self.site_offset_ = _embed(lin.site_offset, used, p_all)
        self.feature_sd_ = _embed(sd, used, p_all, fill=1.0)

        Zs = lin.residuals(Y, codes, C) / sd
        Zs[:, constant] = 0.0
        # Rows grouped by site (stable): the decomposition sees the same matrix whatever the input order.
        order = np.argsort(codes, kind="stable")
        Zs, codes_sorted = Zs[order], codes[order]
        bounds = np.concatenate([[0], np.cumsum(self.site_counts_)])
        blocks = [slice(int(bounds[k]), int(bounds[k + 1])) for k in range(n_sites)]
        noise = np.array([mp_noise_level(Zs[b]) for b in blocks])
        if not (noise > 0).all():
            bad = [str(self.sites_[k]) for k in np.flatnonzero(~(noise > 0))]
            raise HarmonizerInputError(f"site(s) {bad} have no residual variation after the covariate fit and site "
                                       "means: RELIEF cannot estimate their noise level")
        self.site_noise_ = noise
        self.pooled_noise_ = float(np.sqrt((self.site_counts_ * noise**2).sum() / n))
        Z = Zs / noise[codes_sorted][:, None]

        lam_joint = np.sqrt(p) + np.sqrt(n)
        lam_site = np.sqrt(p) + np.sqrt(self.site_counts_.astype(float))
        # Small matrices (ROI tables): BLAS threads cost more than they save, and starve on a shared machine.
        threads = 1 if Z.size <= 5_000_000 else None
        with threadpool_limits(threads):
            joint, site_parts, info = _decompose(Z, blocks, lam_joint, lam_site, float(self.eps), int(self.max_iter))
        self.n_iter_, self.converged_, self.criterion_ = info["n_iter"], info["converged"], info["criterion"]
        self.joint_basis_, self.joint_shrink_ = _embed_rows(joint[0], used, p_all), joint[1]
        self.site_basis_ = _embed_rows(np.hstack([b for b, _ in site_parts]) if site_parts else np.zeros((p, 0)),
                                       used, p_all)
        self.site_shrink_ = np.concatenate([s for _, s in site_parts])
        self.site_rank_ = np.array([s.size for _, s in site_parts], dtype=np.int64)
        # How far the linear maps applied by transform are from the iterated decomposition (standardised units).
        j_map, i_map = self._components(Z, codes_sorted, used)
        self.training_gap_ = float(max(np.abs(j_map - info["J"]).max(), np.abs(i_map - info["S"]).max()))
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _check_site_sizes(self) -> None:
        small = [(str(s), int(c)) for s, c in zip(self.sites_, self.site_counts_) if c < self.min_site_scans]
        if small:
            listed = ", ".join(f"{s!r} ({c} scans)" for s, c in small)
            raise HarmonizerInputError(
                f"site(s) {listed} are too small for RELIEF, which needs at least {self.min_site_scans} scans per "
                "site (min_site_scans): a site's noise level is the median of its singular values and its own "
                "low-rank structure is estimated from its scans alone. Merge the site with another site of the "
                "same scanner, leave its scans out, or use ComBat")
        if len(self.sites_) < 2:
            raise HarmonizerInputError(f"RELIEF needs at least 2 sites, got {len(self.sites_)}: {self.sites_}")

    # -- transform ---------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None) -> np.ndarray:
        """Harmonize scans of known sites (see the module docstring: exact on the training scans up to
        the stopping tolerance; for new scans the fitted subspaces are held fixed)."""
        self.check_is_fitted()
        X = check_data(X)
        check_n_features(self, X)
        sites = require_sites(sites, X.shape[0], f"{type(self).__name__}.transform")
        codes = _design.site_codes(sites, self.sites_)
        C = self.encoder_.transform(covariates, X.shape[0])
        used = ~self.unchanged_
        Y = np.asarray(X[:, used], dtype=np.float64)
        if np.isnan(Y).any():
            rows, cols = np.nonzero(np.isnan(Y))
            raise HarmonizerInputError(
                f"X holds NaN at scan {rows[0]}, feature {np.flatnonzero(used)[cols[0]]}: RELIEF needs every "
                "feature it was fitted on (only features NaN in every training scan may be NaN)")
        sd = self.feature_sd_[used]
        fit_part = self.grand_mean_[used] + (C @ self.covariate_coef_[:, used] if C.shape[1] else 0.0)
        Z = (Y - fit_part - self.site_offset_[codes][:, used]) / sd / self.site_noise_[codes][:, None]
        J, S = self._components(Z, codes, used)
        E = Z - J - S
        out_used = fit_part + sd * (self.site_noise_[codes][:, None] * J + self.pooled_noise_ * E)
        out = np.array(X, dtype=X.dtype, copy=True)
        out[:, used] = out_used
        return out

    def _components(self, Z, codes, used):
        """Joint and site-specific parts of the scaled residual rows ``Z`` (the fitted linear maps)."""
        VJ, dJ = self.joint_basis_[used], self.joint_shrink_
        J, S = np.zeros_like(Z), np.zeros_like(Z)
        offsets = np.concatenate([[0], np.cumsum(self.site_rank_)])
        for k in np.unique(codes):
            rows = codes == k
            Vk = self.site_basis_[used][:, offsets[k]:offsets[k + 1]]
            dk = self.site_shrink_[offsets[k]:offsets[k + 1]]
            z = Z[rows]
            rJ, rk = dJ.size, dk.size
            # [a, b] solve a = (z - b Vk') VJ DJ and b = (z - a VJ') Vk Dk, for every scan at once.
            G = np.eye(rJ + rk)
            W = VJ.T @ Vk
            G[:rJ, rJ:] = dJ[:, None] * W
            G[rJ:, :rJ] = dk[:, None] * W.T
            H = np.hstack([(z @ VJ) * dJ, (z @ Vk) * dk])
            coef = np.linalg.solve(G, H.T).T if rJ + rk else H
            J[rows] = coef[:, :rJ] @ VJ.T
            S[rows] = coef[:, rJ:] @ Vk.T
        return J, S

    # -- model files -------------------------------------------------------------------------------
    _ARRAYS = ("grand_mean_", "covariate_coef_", "site_offset_", "feature_sd_", "site_noise_", "joint_basis_",
               "joint_shrink_", "site_basis_", "site_shrink_", "site_rank_", "site_counts_", "unchanged_")

    def _get_state(self):
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        meta = {"sites": list(self.sites_), "n_features": int(self.n_features_in_),
                "covariates": self.encoder_.to_state(), "pooled_noise": self.pooled_noise_,
                "n_iter": int(self.n_iter_), "converged": bool(self.converged_), "criterion": float(self.criterion_),
                "training_gap": float(self.training_gap_)}
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        for name in self._ARRAYS:
            setattr(self, name, arrays[name])
        self.unchanged_ = self.unchanged_.astype(bool)
        self.sites_ = list(meta["sites"])
        self.n_features_in_ = int(meta["n_features"])
        self.encoder_ = _design.CovariateEncoder.from_state(meta["covariates"])
        self.pooled_noise_ = float(meta["pooled_noise"])
        self.n_iter_, self.converged_ = int(meta["n_iter"]), bool(meta["converged"])
        self.criterion_, self.training_gap_ = float(meta["criterion"]), float(meta["training_gap"])

    def _check_state(self, check: StateCheck) -> None:
        K, p = len(self.sites_), self.n_features_in_
        used = ~check.shape("unchanged_", self.unchanged_, (p,)).astype(bool)
        for name in ("grand_mean_", "feature_sd_"):
            check.shape(name, getattr(self, name), (p,))
        check.finite("grand_mean_", self.grand_mean_, used)
        check.finite("feature_sd_", self.feature_sd_, used, positive=True)
        check.shape("site_offset_", self.site_offset_, (K, p))
        check.shape("covariate_coef_", self.covariate_coef_, (None, p))
        check.shape("site_noise_", self.site_noise_, (K,))
        check.finite("site_noise_", self.site_noise_, positive=True)
        check.shape("site_rank_", self.site_rank_, (K,))
        check.shape("joint_basis_", self.joint_basis_, (p, self.joint_shrink_.size))
        check.shape("site_basis_", self.site_basis_, (p, int(np.sum(self.site_rank_))))
        for name in ("joint_basis_", "site_basis_", "joint_shrink_", "site_shrink_"):
            check.finite(name, getattr(self, name)[used] if name.endswith("basis_") else getattr(self, name))


# -- the decomposition ----------------------------------------------------------------------------------

def _svt(M: np.ndarray, lam: float):
    """Soft-thresholded SVD of ``M`` (rows = scans): (thresholded M, right basis (p, r), shrink (r,), nuclear norm).

    The singular vectors come from the eigen-decomposition of the smaller Gram matrix: only singular
    values above ``lam`` are used, which it gives to full relative precision, and it is many times
    faster than an SVD of a tall matrix.
    """
    n, p = M.shape
    gram = M.T @ M if p <= n else M @ M.T
    eigval, eigvec = np.linalg.eigh(gram)
    s = np.sqrt(np.maximum(eigval, 0.0))
    keep = s > lam
    s, vec = s[keep], eigvec[:, keep]
    shrink = (s - lam) / s
    V = vec if p <= n else (M.T @ vec) / s          # right singular vectors (p, r)
    return ((M @ V) * shrink) @ V.T, V, shrink, float((s - lam).sum())


def _decompose(Z, blocks, lam_joint, lam_site, eps, max_iter):
    """Block coordinate descent for ``Z = J + sum_k I_k + E`` (rows of Z grouped by site in ``blocks``)."""
    J = np.zeros_like(Z)
    S = np.zeros_like(Z)                     # the site-specific parts, each on its own rows
    crit_old, converged, done = 0.0, False, 0
    joint = (np.zeros((Z.shape[1], 0)), np.zeros(0))
    site_parts = [(np.zeros((Z.shape[1], 0)), np.zeros(0)) for _ in blocks]
    for _ in range(max_iter):
        done += 1
        J, VJ, dJ, nuc_j = _svt(Z - S, lam_joint)
        joint = (VJ, dJ)
        penalty = lam_joint * nuc_j
        for k, rows in enumerate(blocks):
            S[rows], Vk, dk, nuc_k = _svt(Z[rows] - J[rows], lam_site[k])
            site_parts[k] = (Vk, dk)
            penalty += lam_site[k] * nuc_k
        R = Z - J - S
        crit = 0.5 * float((R * R).sum()) + penalty
        if abs(crit_old - crit) < eps:
            converged = True
            break
        crit_old = crit
    return joint, site_parts, {"n_iter": done, "converged": converged, "criterion": crit, "J": J, "S": S}


# -- noise level -----------------------------------------------------------------------------------------

def mp_noise_level(M: np.ndarray) -> float:
    """Noise standard deviation of a low-rank-plus-noise matrix: median singular value over
    ``sqrt(max(shape) * median of the Marchenko-Pastur law with ratio min/max(shape))``."""
    gram = M.T @ M if M.shape[1] <= M.shape[0] else M @ M.T
    s = np.sqrt(np.maximum(np.linalg.eigvalsh(gram), 0.0))
    n_big, n_small = max(M.shape), min(M.shape)
    return float(np.median(s) / np.sqrt(n_big * _mp_median(round(n_small / n_big, 6))))


@functools.lru_cache(maxsize=256)
def _mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law of aspect ratio ``beta`` in (0, 1] (unit variance)."""
    from scipy import integrate, optimize

    lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2

    def density(x):
        return np.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * np.pi * beta * x)

    def cdf(x):
        return integrate.quad(density, lo, x, limit=200)[0]

    return float(optimize.brentq(lambda x: cdf(x) - 0.5, lo + 1e-12, hi))


def _embed(values, used, p_all, fill=0.0):
    values = np.asarray(values)
    out = np.full(values.shape[:-1] + (p_all,), fill, dtype=np.float64)
    out[..., used] = values
    return out


def _embed_rows(values, used, p_all):
    out = np.zeros((p_all, values.shape[1]))
    out[used] = values
    return out
