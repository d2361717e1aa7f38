"""SAN: spatial autocorrelation normalization of vertex-wise maps (Zhang et al., Hum Brain Mapp 2024).

Stage 1, "local ComBat". Every vertex is fitted by the pooled linear model of ComBat (site
indicators + covariates; :mod:`surfharm.harmonize._linear`) and standardised,
``z = (y - alpha - x'beta) / sd``. Its site location and scale estimates ``gamma_hat``,
``delta_hat`` are shrunk by empirical Bayes towards priors estimated from the vertices within a
geodesic radius (``radius_mm``, default 5 mm on the fsaverage pial surface of the map's level, see
:mod:`surfharm.harmonize._surface_geometry`), i.e. ComBat run on that neighbourhood with the
centre's value kept. All vertices are done at once (the neighbourhood priors are sparse averages),
and the neighbourhoods are computed once per level and cached. A neighbourhood of fewer than 3
vertices (coarse meshes) gives no usable prior: that vertex keeps its least-squares estimates
(counted in ``n_unshrunk_``). The stage-1 result is the standardised residual
``u = (z - gamma*) / sqrt(delta*)``.

Stage 2, a Gaussian-process split per site. For the scans of site k, ``u = f + e`` with ``f`` a
zero-mean Gaussian process of variance ``sigma_f^2`` and correlation ``k(d)`` (``kernel``:
``"exponential"`` ``exp(-d/theta)``, ``"squared_exponential"`` ``exp(-d^2 / (2 theta^2))`` or
``"mixture"`` ``w exp(-d/theta_1) + (1 - w) exp(-d^2 / (2 theta_2^2))``) and ``e`` independent noise of
variance ``sigma_e^2``. The hyperparameters of each site are fitted to that site's empirical spatial
covariance (mean products of ``u`` over vertex pairs, in distance bins up to ``max_pair_mm``; the
value at distance 0 is ``sigma_f^2 + sigma_e^2``) by bounded least squares: a moment estimator, as a
likelihood would need a p x p factorisation at every optimiser step. The posterior means
``f = sigma_f^2 K (sigma_f^2 K + sigma_e^2 I)^-1 u`` and ``e = u - f`` are rescaled to the
sample-size-weighted pooled components: ``u* = f sqrt(s_f^2 / sigma_f^2) + e sqrt(s_e^2 / sigma_e^2)``;
the output is ``alpha + x'beta + sd u*``. The default kernel is the exponential: the published
default, the mixture, was reported to stop on a NaN in its optimiser on smooth data, where the
exponential worked.

Kernel distances are chordal distances on the registration sphere (positive-definite kernels; see
:mod:`surfharm.harmonize._surface_geometry`), or the user's ``distances`` (a dense (V, V) matrix in
mm, or the path of a ``.npy`` file holding one, as SAN's ``distMat``), which then serve both stages.

Exact and approximate solves. Up to ``exact_max_vertices`` (10242: fsaverage5, one hemisphere) the
posterior is the exact solve of one p x p Cholesky factorisation per site. Above (fsaverage6,
fsaverage) it is a subset-of-data approximation: the Gaussian process is conditioned on the
vertices of the nested fsaverage5 mesh only (10242 inducing vertices; for a user matrix, every
m-th vertex) and its posterior mean evaluated at every vertex, ``f = sigma_f^2 K(all, S) alpha_S``;
the finer vertices' own data enter through the noise part ``e = u - f`` only. The error is small
when the spatial range is several times the fsaverage5 spacing (about 3.5 mm on the sphere); it is
measured against the exact solve in tests/harmonize/test_san.py (level 4 conditioned on level 3) and in
benchmarks/bench_san.py.

Applying the model to new scans (SAN itself fits and harmonizes one sample): the model keeps the
stage-1 estimates (linear fit, ``gamma*``, ``delta*``) and, per site, the stage-2 hyperparameters
and the pooled components; a new scan of a known site gets the same stage 1 and the stage-2
posterior computed with its site's stored hyperparameters. The posterior mean of each scan depends
on that scan only, so training scans transformed again equal the fit's own output exactly.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from spherical_ops import VERTEX_COUNTS
from surfharm.errors import ModelFileError
from surfharm.harmonize import _design, _eb
from surfharm.harmonize import _surface_geometry as geo
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

KERNELS = ("exponential", "squared_exponential", "mixture")
#: Fitted factorisations kept in memory for repeated transforms (bytes).
FACTOR_CACHE_BYTES = 1_500 * 2**20
_N_BINS = 24


@register("san")
class SAN(Harmonizer):
    """SAN for vertex maps (see the module docstring).

    Parameters
    ----------
    radius_mm : float
        Geodesic radius of the stage-1 neighbourhoods (published default 5 mm).
    surface : str
        fsaverage surface the radius is measured on: ``"pial"`` (published) or ``"white"``.
    hemi : str
        Hemisphere of the maps (``"lh"``/``"rh"``): which fsaverage surface is used.
    kernel : str
        ``"exponential"`` (default), ``"squared_exponential"`` or ``"mixture"``.
    distances : array, str or None
        A user (V, V) distance matrix in mm (or the path of a ``.npy`` file): replaces both the
        geodesic neighbourhoods and the kernel distances. A model fitted with an array must be
        loaded with ``load(path, distances=D)`` (its fingerprint is checked).
    eb : bool
        Empirical Bayes with neighbourhood priors in stage 1 (default); False keeps the per-vertex
        least-squares estimates.
    exact_max_vertices : int
        Largest vertex count solved exactly in stage 2 (default 10242).
    max_pair_mm : float or None
        Largest pair distance used to fit the kernels (default: 40 mm, at least 4 mesh spacings).

    Learned attributes (K sites, V vertices)
    ----------------------------------------
    sites_, site_counts_;  grand_mean_, feature_sd_ (V,), covariate_coef_ (Q, V);
    gamma_star_, delta_star_ (K, V) stage-1 estimates applied;  n_unshrunk_ vertices without a prior;
    kernel_params_ (K, 3) ``(theta_1, theta_2, w)``;  signal_var_, noise_var_ (K,);
    pooled_signal_var_, pooled_noise_var_;  unchanged_ (V,) features returned as given;
    inducing_ (indices of the vertices the Gaussian process is conditioned on).
    """

    fitted_attribute = "kernel_params_"

    def __init__(self, *, radius_mm: float = 5.0, surface: str = "pial", hemi: str = "lh",
                 kernel: str = "exponential", distances=None, eb: bool = True,
                 exact_max_vertices: int = 10242, max_pair_mm: float | None = None):
        self.radius_mm = radius_mm
        self.surface = surface
        self.hemi = hemi
        self.kernel = kernel
        self.distances = distances
        self.eb = eb
        self.exact_max_vertices = exact_max_vertices
        self.max_pair_mm = max_pair_mm

    allows_partial_nan = False

    # -- geometry -----------------------------------------------------------------------------------
    def _user_distances(self, n_features: int):
        if self.distances is None:
            return None
        D = np.load(self.distances) if isinstance(self.distances, (str, Path)) else np.asarray(self.distances)
        if D.shape != (n_features, n_features):
            raise HarmonizerInputError(f"distances has shape {D.shape}; expected ({n_features}, {n_features}) "
                                       "for maps of that many vertices")
        return np.asarray(D, dtype=np.float64)

    def _level(self, n_features: int):
        if n_features not in VERTEX_COUNTS:
            raise HarmonizerInputError(
                f"SAN works on vertex maps: X has {n_features} features, which is no icosahedral vertex count "
                f"({', '.join(map(str, VERTEX_COUNTS))}); pass distances= (a {n_features} x {n_features} matrix "
                "in mm) for other meshes")
        return VERTEX_COUNTS.index(n_features)

    def _neighbourhoods(self, n_features: int, D) -> sp.csr_matrix:
        if D is not None:
            return geo.neighbourhoods_from_matrix(D, float(self.radius_mm))
        return geo.geodesic_neighbourhoods(self._level(n_features), float(self.radius_mm), self.surface, self.hemi)

    def _kernel_distances(self, rows, cols, D):
        """Dense distances between vertex sets ``rows`` and ``cols`` (indices into all vertices)."""
        if D is not None:
            return D[np.ix_(rows, cols)]
        xyz = geo.sphere_coordinates(self._level(self.n_features_in_))
        from scipy.spatial.distance import cdist

        return cdist(xyz[rows], xyz[cols])

    def _check_params(self):
        if self.kernel not in KERNELS:
            raise HarmonizerInputError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not self.radius_mm >= 0:
            raise HarmonizerInputError(f"radius_mm must be >= 0, got {self.radius_mm}")

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, covariates=None) -> "SAN":
        """Fit both stages on ``X`` (n_scans, V) maps; returns self."""
        start = time.perf_counter()
        self._check_params()
        X = check_data(X, dtype=np.float64)
        n, V = X.shape
        D = self._user_distances(V)
        if D is None:
            self._level(V)
        sites = require_sites(sites, n, f"{type(self).__name__}.fit")
        self.sites_ = _design.site_levels(sites)
        codes = _design.site_codes(sites, self.sites_)
        K = len(self.sites_)
        self.site_counts_ = np.bincount(codes, minlength=K).astype(np.int64)
        small = [(str(s), int(c)) for s, c in zip(self.sites_, self.site_counts_) if c < 3]
        if small:
            raise HarmonizerInputError(f"site(s) {small} have fewer than 3 scans: SAN estimates each site's scale "
                                       "and spatial covariance from its own scans")
        self.encoder_ = _design.CovariateEncoder().fit(covariates, n)
        C = self.encoder_.transform(covariates, n)
        all_nan = np.isnan(X).all(axis=0)
        partial = np.isnan(X).any(axis=0) & ~all_nan
        if partial.any():
            g = int(np.flatnonzero(partial)[0])
            raise HarmonizerInputError(f"X holds NaN at vertex {g} in some scans only ({int(partial.sum())} such "
                                       "vertices); SAN needs complete maps (NaN in every scan, the medial wall, "
                                       "is allowed)")
        used_idx = np.flatnonzero(~all_nan)
        Y = X[:, used_idx]
        lin = fit_linear(Y, codes, K, C, self.encoder_.names)
        sd = lin.pooled_sd                               # ComBat's standardisation
        constant = ~(sd > 1e-12 * np.maximum(np.abs(lin.grand_mean), 1.0))
        sd = np.where(constant, 1.0, sd)

        self.n_features_in_ = V
        self.unchanged_ = all_nan.copy()
        self.unchanged_[used_idx[constant]] = True
        self.grand_mean_ = _embed(lin.grand_mean, used_idx, V)
        self.covariate_coef_ = _embed(lin.covariate_coef, used_idx, V)
        self.feature_sd_ = _embed(sd, used_idx, V, fill=1.0)
        keep = ~constant
        live = used_idx[keep]

        # Stage 1: per-vertex estimates, neighbourhood priors, empirical Bayes.
        Z = (Y[:, keep] - lin.covariate_fit(C)[:, keep]) / sd[keep]
        nb = self._neighbourhoods(V, D)[live][:, live]
        gamma_star, delta_star, unshrunk = self._local_combat(Z, codes, K, nb)
        self.gamma_star_ = np.zeros((K, V))
        self.delta_star_ = np.ones((K, V))
        self.gamma_star_[:, live], self.delta_star_[:, live] = gamma_star, delta_star
        self.n_unshrunk_ = int(unshrunk)
        self.mean_neighbourhood_size_ = float(nb.getnnz(axis=1).mean())

        # Stage 2: per-site kernel hyperparameters from the empirical spatial covariance.
        U = (Z - gamma_star[codes]) / np.sqrt(delta_star[codes])
        self.inducing_ = self._inducing(live, D)
        est = np.searchsorted(live, self.inducing_)
        pairs = self._pairs(self.inducing_, D)
        params, sig, noi = [], [], []
        for k in range(K):
            p_k, s_k, e_k = _fit_kernel(U[codes == k][:, est], pairs, self.kernel)
            params.append(p_k)
            sig.append(s_k)
            noi.append(e_k)
        self.kernel_params_ = np.array(params)
        self.signal_var_ = np.array(sig)
        self.noise_var_ = np.array(noi)
        w = self.site_counts_ / n
        self.pooled_signal_var_ = float(w @ self.signal_var_)
        self.pooled_noise_var_ = float(w @ self.noise_var_)
        self._factors = {}
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _local_combat(self, Z, codes, K, nb):
        counts = np.asarray(nb.getnnz(axis=1), dtype=np.float64)
        W = sp.diags(1.0 / counts) @ (nb > 0).astype(np.float64)
        gamma_star, delta_star = np.empty((K, Z.shape[1])), np.empty((K, Z.shape[1]))
        unshrunk = np.zeros(Z.shape[1], bool)
        for k in range(K):
            z = Z[codes == k]
            n_k = z.shape[0]
            s1, s2 = z.sum(axis=0), (z * z).sum(axis=0)
            g_hat = s1 / n_k
            d_hat = (s2 - s1 * s1 / n_k) / (n_k - 1)
            d_hat = np.where(d_hat > 0, d_hat, 1.0)
            if not self.eb:
                gamma_star[k], delta_star[k] = g_hat, d_hat
                unshrunk[:] = True
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                g_bar = W @ g_hat
                tau2 = (W @ (g_hat * g_hat) - g_bar**2) * counts / (counts - 1)
                m = W @ d_hat
                v = (W @ (d_hat * d_hat) - m**2) * counts / (counts - 1)
                a = (2 * v + m**2) / v
                b = (m * v + m**3) / v
            ok = (counts >= 3) & (tau2 > 1e-12) & (v > 1e-12) & np.isfinite(a) & np.isfinite(b)
            unshrunk |= ~ok
            gamma_star[k], delta_star[k] = g_hat, d_hat
            if ok.any():
                n_vec = np.full(int(ok.sum()), float(n_k))
                g, d = _eb.parametric(n_vec, s1[ok], s2[ok], g_hat[ok], d_hat[ok],
                                      gamma_bar=g_bar[ok], tau2=tau2[ok], a=a[ok], b=b[ok])
                gamma_star[k, ok], delta_star[k, ok] = g, np.where(np.isfinite(d) & (d > 0), d, d_hat[ok])
        return gamma_star, delta_star, int(unshrunk.sum())

    def _inducing(self, live: np.ndarray, D) -> np.ndarray:
        """Vertices the Gaussian process is conditioned on: all of them up to exact_max_vertices."""
        if live.size <= self.exact_max_vertices:
            return live
        if D is None:
            coarse = max(v for v in VERTEX_COUNTS if v <= self.exact_max_vertices)
            return live[live < coarse]                  # nested meshes: the first vertices are the coarser level
        step = int(np.ceil(live.size / self.exact_max_vertices))
        return live[::step]

    def _pairs(self, verts: np.ndarray, D):
        """(distance, i, j) of vertex pairs (indices into ``verts``) closer than the pair limit."""
        if D is not None:
            sub = D[np.ix_(verts, verts)]
            nn = np.median(np.where(sub > 0, sub, np.inf).min(axis=1))
            limit = self.max_pair_mm or max(40.0, 4 * nn)
            i, j = np.nonzero(np.triu((sub > 0) & (sub <= limit), k=1))
            return sub[i, j], i, j
        from scipy.spatial import cKDTree

        xyz = geo.sphere_coordinates(self._level(self.n_features_in_))[verts]
        tree = cKDTree(xyz)
        nn = float(np.median(tree.query(xyz, k=2)[0][:, 1]))
        limit = self.max_pair_mm or max(40.0, 4 * nn)
        pairs = tree.query_pairs(limit, output_type="ndarray")
        d = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1)
        return d, pairs[:, 0], pairs[:, 1]

    # -- transform ---------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None) -> np.ndarray:
        """Harmonize scans of known sites with the fitted stage-1 estimates and stage-2 hyperparameters."""
        self.check_is_fitted()
        X = check_data(X)
        check_n_features(self, X)
        sites = require_sites(sites, X.shape[0], f"{type(self).__name__}.transform")
        codes = _design.site_codes(sites, self.sites_)
        C = self.encoder_.transform(covariates, X.shape[0])
        live = np.flatnonzero(~self.unchanged_)
        Y = np.asarray(X[:, live], dtype=np.float64)
        if np.isnan(Y).any():
            rows, cols = np.nonzero(np.isnan(Y))
            raise HarmonizerInputError(f"X holds NaN at scan {rows[0]}, vertex {live[cols[0]]}: SAN needs every "
                                       "vertex it was fitted on (only vertices NaN in every training scan may be NaN)")
        sd = self.feature_sd_[live]
        fit_part = self.grand_mean_[live] + (C @ self.covariate_coef_[:, live] if C.shape[1] else 0.0)
        U = ((Y - fit_part) / sd - self.gamma_star_[:, live][codes]) / np.sqrt(self.delta_star_[:, live][codes])
        D = self._user_distances(self.n_features_in_)
        for k in np.unique(codes):
            rows = codes == k
            f = self._posterior_signal(k, U[rows], live, D)
            e = U[rows] - f
            gain_f = np.sqrt(self.pooled_signal_var_ / self.signal_var_[k])
            gain_e = np.sqrt(self.pooled_noise_var_ / self.noise_var_[k])
            U[rows] = gain_f * f + gain_e * e
        out = np.array(X, dtype=X.dtype, copy=True)
        out[:, live] = fit_part + sd * U
        return out

    def _posterior_signal(self, k: int, U: np.ndarray, live: np.ndarray, D) -> np.ndarray:
        """Posterior mean of the spatial part for the rows ``U`` (scans x live vertices) of site ``k``."""
        s2f, s2e = float(self.signal_var_[k]), float(self.noise_var_[k])
        ind = self.inducing_
        pos = np.searchsorted(live, ind)
        factor = self._factor(k, ind, D)
        alpha = sla.cho_solve(factor, U[:, pos].T, check_finite=False)          # (S, n)
        if ind.size == live.size:
            return (U.T - s2e * alpha).T                # sigma_f^2 K alpha = u - sigma_e^2 alpha (exact)
        # Subset of data: E[f | u_S] at every vertex, then each other vertex's own value enters by the
        # one-point update E[f_v | u_S, u_v] = m_v + c / (c + sigma_e^2) (u_v - m_v), with c the
        # posterior variance of f_v given u_S (averaged over a sample of the vertices of its class).
        out = np.empty_like(U)
        step = max(1, (64 * 2**20) // (8 * ind.size))
        for start in range(0, live.size, step):
            block = live[start:start + step]
            Kx = _kernel(self._kernel_distances(block, ind, D), self.kernel, self.kernel_params_[k])
            out[:, start:start + step] = (s2f * (Kx @ alpha)).T
        in_s = np.isin(live, ind)
        out[:, pos] = (U[:, pos].T - s2e * alpha).T
        classes = self._vertex_classes(live[~in_s], D)
        lower = np.tril(factor[0])
        rng = np.random.default_rng(0)
        for cls in np.unique(classes):
            members = np.flatnonzero(~in_s)[classes == cls]
            sample = live[rng.choice(members, size=min(128, members.size), replace=False)]
            kx = s2f * _kernel(self._kernel_distances(sample, ind, D), self.kernel, self.kernel_params_[k])
            w = sla.solve_triangular(lower, kx.T, lower=True, check_finite=False)
            c = max(float(np.mean(s2f - (w * w).sum(axis=0))), 0.0)
            gain = c / (c + s2e)
            out[:, members] += gain * (U[:, members] - out[:, members])
        return out

    def _vertex_classes(self, verts: np.ndarray, D) -> np.ndarray:
        """Icosahedral generation of each vertex (the level at which it appears); one class for a user mesh."""
        if D is not None:
            return np.zeros(verts.size, dtype=np.int64)
        return np.searchsorted(np.asarray(VERTEX_COUNTS), verts, side="right")

    def _factor(self, k: int, ind: np.ndarray, D):
        cache = getattr(self, "_factors", None)
        if cache is None:
            cache = self._factors = {}
        if k in cache:
            return cache[k]
        A = _kernel(self._kernel_distances(ind, ind, D), self.kernel, self.kernel_params_[k])
        A *= float(self.signal_var_[k])
        A[np.diag_indices_from(A)] += float(self.noise_var_[k])
        try:
            factor = sla.cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise HarmonizerInputError(
                f"site {self.sites_[k]!r}: the kernel matrix is not positive definite on these distances (a user "
                "distance matrix that is not Euclidean-like); use the default sphere distances") from None
        if A.nbytes * (len(cache) + 1) <= FACTOR_CACHE_BYTES:
            cache[k] = factor
        return factor

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_factors", None)                      # a cache, recomputed when needed
        return state

    # -- model files -------------------------------------------------------------------------------
    _ARRAYS = ("grand_mean_", "covariate_coef_", "feature_sd_", "gamma_star_", "delta_star_", "kernel_params_",
               "signal_var_", "noise_var_", "site_counts_", "unchanged_", "inducing_")

    def _file_params(self):
        params = super()._file_params()
        if params.get("distances") is not None and not isinstance(params["distances"], (str, Path)):
            params["distances"] = None                    # kept by fingerprint: pass it again to load
        elif isinstance(params.get("distances"), Path):
            params["distances"] = str(params["distances"])
        return params

    def _get_state(self):
        arrays = {name: np.asarray(getattr(self, name)) for name in self._ARRAYS}
        D = self._user_distances(self.n_features_in_)
        meta = {"sites": list(self.sites_), "n_features": int(self.n_features_in_),
                "covariates": self.encoder_.to_state(), "pooled_signal_var": self.pooled_signal_var_,
                "pooled_noise_var": self.pooled_noise_var_, "n_unshrunk": int(self.n_unshrunk_),
                "mean_neighbourhood_size": float(self.mean_neighbourhood_size_),
                "distances_digest": None if D is None else geo.matrix_digest(D)}
        return arrays, meta

    def _set_state(self, arrays, meta) -> None:
        for name in self._ARRAYS:
            setattr(self, name, arrays[name])
        self.unchanged_ = self.unchanged_.astype(bool)
        self.inducing_ = self.inducing_.astype(np.int64)
        self.sites_ = list(meta["sites"])
        self.n_features_in_ = int(meta["n_features"])
        self.encoder_ = _design.CovariateEncoder.from_state(meta["covariates"])
        self.pooled_signal_var_ = float(meta["pooled_signal_var"])
        self.pooled_noise_var_ = float(meta["pooled_noise_var"])
        self.n_unshrunk_ = int(meta["n_unshrunk"])
        self.mean_neighbourhood_size_ = float(meta["mean_neighbourhood_size"])
        self._factors = {}
        digest = meta.get("distances_digest")
        if digest is not None:
            if self.distances is None:
                raise ModelFileError("this SAN model was fitted with a user distance matrix, which model files do "
                                     "not hold: load it with load(path, distances=D) (the same matrix)")
            if geo.matrix_digest(self._user_distances(self.n_features_in_)) != digest:
                raise ModelFileError("the distances given to load differ from those the SAN model was fitted with")

    def _check_state(self, check: StateCheck) -> None:
        K, V = len(self.sites_), self.n_features_in_
        used = ~check.shape("unchanged_", self.unchanged_, (V,)).astype(bool)
        for name in ("grand_mean_", "feature_sd_"):
            check.shape(name, getattr(self, name), (V,))
        check.finite("grand_mean_", self.grand_mean_, used)
        check.finite("feature_sd_", self.feature_sd_, used, positive=True)
        check.shape("covariate_coef_", self.covariate_coef_, (None, V))
        for name in ("gamma_star_", "delta_star_"):
            check.shape(name, getattr(self, name), (K, V))
        check.finite("gamma_star_", self.gamma_star_, used)
        check.finite("delta_star_", self.delta_star_, used, positive=True)
        check.shape("kernel_params_", self.kernel_params_, (K, 3))
        check.finite("kernel_params_", self.kernel_params_)
        for name in ("signal_var_", "noise_var_"):
            check.shape(name, getattr(self, name), (K,))
            check.finite(name, getattr(self, name), positive=True)


# -- kernels ---------------------------------------------------------------------------------------------

def _kernel(d: np.ndarray, kernel: str, params) -> np.ndarray:
    """Correlation ``k(d)`` (in place on ``d`` where possible); ``params = (theta_1, theta_2, w)``."""
    t1, t2, w = (float(x) for x in params)
    if kernel == "exponential":
        d /= -t1
        return np.exp(d, out=d)
    if kernel == "squared_exponential":
        d /= t1
        d *= d
        d *= -0.5
        return np.exp(d, out=d)
    se = np.exp(-0.5 * (d / t2) ** 2)
    d /= -t1
    np.exp(d, out=d)
    d *= w
    se *= 1.0 - w
    d += se
    return d


def _fit_kernel(U: np.ndarray, pairs, kernel: str):
    """Kernel parameters, signal and noise variance of one site from its empirical spatial covariance.

    ``U``: (n_k, S) standardised residuals; ``pairs``: (distance, i, j) of vertex pairs.
    Returns ``(params (3,), sigma_f^2, sigma_e^2)``.
    """
    from scipy.optimize import least_squares

    dist, i, j = pairs
    c0 = float(np.mean(U * U))
    if dist.size == 0 or c0 <= 0:
        return np.array([1.0, 1.0, 1.0]), max(1e-6 * c0, 1e-12), max(c0, 1e-12)
    limit = float(dist.max())
    edges = np.linspace(0.0, limit, _N_BINS + 1)
    which = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, _N_BINS - 1)
    prod = np.zeros(dist.size)
    step = max(1, (32 * 2**20) // (8 * U.shape[0]))
    for s in range(0, dist.size, step):
        prod[s:s + step] = np.einsum("ni,ni->i", U[:, i[s:s + step]], U[:, j[s:s + step]]) / U.shape[0]
    count = np.bincount(which, minlength=_N_BINS).astype(float)
    filled = count > 0
    cov = np.bincount(which, weights=prod, minlength=_N_BINS)[filled] / count[filled]
    centre = np.bincount(which, weights=dist, minlength=_N_BINS)[filled] / count[filled]
    weight = np.sqrt(count[filled] / count.sum())
    lo_t, hi_t = max(float(dist.min()) / 4, 1e-3), 10 * limit
    lo_s, hi_s = 1e-6 * c0, c0 * (1 - 1e-6)

    def model(x):
        params = (x[1], x[2] if kernel == "mixture" else x[1], x[3] if kernel == "mixture" else 1.0)
        return x[0] * _kernel(centre.copy(), kernel, params)

    start_s = float(np.clip(cov[0], lo_s * 10, hi_s * 0.9)) if cov.size else 0.5 * c0
    x0 = [start_s, float(np.clip(limit / 4, lo_t, hi_t))]
    lower, upper = [lo_s, lo_t], [hi_s, hi_t]
    if kernel == "mixture":
        x0 += [float(np.clip(limit / 4, lo_t, hi_t)), 0.5]
        lower += [lo_t, 0.0]
        upper += [hi_t, 1.0]
    fit = least_squares(lambda x: weight * (model(x) - cov), x0, bounds=(lower, upper))
    x = fit.x
    params = np.array([x[1], x[2] if kernel == "mixture" else x[1], x[3] if kernel == "mixture" else 1.0])
    signal = float(x[0])
    return params, signal, max(c0 - signal, 1e-6 * c0)


def _embed(values, idx, V, fill=0.0):
    values = np.asarray(values)
    out = np.full(values.shape[:-1] + (V,), fill, dtype=np.float64)
    out[..., idx] = values
    return out
