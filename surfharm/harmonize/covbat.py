"""CovBat: ComBat, then harmonization of the covariance of the residuals (Chen et al., Hum Brain Mapp 2022).

Steps (fit), for scans ``y_j`` of site ``i``:

1. ComBat with all its options (empirical Bayes or not, parametric or not, reference site, smooth
   terms): ``y*_j``.
2. Standardised residuals ``z_j = (y*_j - m_j) / sigma``, ``m_j`` the covariate fit, ``sigma`` ComBat's
   pooled standard deviation; each feature is then centred and scaled by its standard deviation over
   the training scans (``pc_center_``, ``pc_scale_``; the published ``std.var``).
3. PCA of those standardised residuals; the first ``K`` components are kept, ``K`` the first count
   whose cumulative share of variance exceeds ``percent_var`` (0.95), or ``n_components``.
4. The ``K`` scores (each component signed so that its largest training score is positive) are harmonized by
   ComBat without covariates (``score_model_``; empirical Bayes off by default, as published), so that
   every site's scores have the same mean and variance.
5. The residuals are rebuilt from the adjusted scores and the untouched remainder, scaled back and
   the covariate fit is added back.

Since the remainder is untouched, step 5 is ComBat's output plus
``sigma * pc_scale * (adjusted scores - scores) @ components``: that is how it is computed, so
``K = 0`` gives ComBat's output exactly. The PCA basis, the score model and the scaling are part of
the model: ``transform`` projects new scans on the stored components and harmonizes their scores
with the stored per-site estimates.

PCA: the principal components are those of the (n_scans x features) matrix of standardised
residuals, obtained from its (n_scans x n_scans) Gram matrix, accumulated one block of features at a
time (its eigenvectors are the left singular vectors; the components follow from the same
residuals). The features x features covariance is never formed: 163842 vertices cost a Gram matrix
of n_scans^2, the stored components (K x features) and, while fitting, the standardised residuals
themselves when they take at most ``KEEP_BYTES`` (1 GiB); a larger cohort, e.g. a memory map of
thousands of scans, is read a second time instead, one block of features at a time.

Arithmetic is in float32 for float32 scans (whose output is float32) and float64 otherwise; the
Gram matrix, its eigenvectors, the scores and the score model are float64 in both cases.

Missing values (NaN) are left out of the statistics of their feature and count as 0 (the feature's
mean) in a scan's scores; they stay NaN in the output.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from surfharm.harmonize import _design
from surfharm.harmonize.base import HarmonizerInputError, StateCheck, register
from surfharm.harmonize._tiles import FEATURE_BLOCK, _check_matrix
from surfharm.harmonize.combat import ComBat

#: Bytes of float64 per (n_scans x features) block of standardised residuals.
BLOCK_BYTES = 2**25
#: Fit keeps the standardised residuals between its two passes when they take at most this many bytes.
KEEP_BYTES = 2**30


@register("covbat")
class CovBat(ComBat):
    """CovBat: ComBat followed by ComBat on the residuals' principal-component scores.

    Parameters
    ----------
    eb, parametric, mean_only, reference_site, smooth_terms, spline_df
        As for :class:`~surfharm.harmonize.ComBat` (its first step). With a reference site, its
        scans are returned unchanged and the other sites' scores take its means and variances.
    percent_var : float
        Keep the first components whose cumulative share of the residual variance exceeds this
        (0.95, the published default).
    n_components : int, optional
        Keep exactly this many components instead (0: CovBat is ComBat).
    score_eb : bool
        Empirical Bayes for the score model (off by default, as published).
    score_parametric : bool
        Parametric priors for the score model's empirical Bayes.

    Learned attributes, besides ComBat's (G features, K components, P = min(n_scans, G))
    --------------------------------------------------------------------------------------
    n_components_ : K;  pc_center_, pc_scale_ : (G,) centring and scaling of the standardised residuals
    components_ : (K, G) principal axes;  explained_variance_ : (P,) variance of every component
    score_model_ : ComBat on the K scores (no covariates), or None when K = 0
    """

    def __init__(self, *, eb: bool = True, parametric: bool = True, mean_only: bool = False,
                 reference_site=None, smooth_terms: tuple = (), spline_df: int = 5, percent_var: float = 0.95,
                 n_components: int | None = None, score_eb: bool = False, score_parametric: bool = True):
        super().__init__(eb=eb, parametric=parametric, mean_only=mean_only, reference_site=reference_site,
                         smooth_terms=smooth_terms, spline_df=spline_df)
        self.percent_var = percent_var
        self.n_components = n_components
        self.score_eb = score_eb
        self.score_parametric = score_parametric

    fitted_attribute = "n_components_"

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, X, y=None, *, sites=None, covariates=None) -> "CovBat":
        """ComBat, then the PCA of the standardised residuals and the score model. Returns self."""
        self._check_options()
        self.__dict__.pop("n_components_", None)
        X = _check_matrix(X)
        super().fit(X, sites=sites, covariates=covariates)
        sites = np.asarray(sites, dtype=object)
        codes = _design.site_codes(sites, self.sites_)
        cov = self.encoder_.transform(covariates, X.shape[0])
        self._fit_components(X, codes, cov)
        if self.n_components_:
            scores = self._train_scores
            eb = self.score_eb and self.n_components_ >= 2   # empirical Bayes pools >= 2 scores
            self.score_model_ = ComBat(eb=eb, parametric=self.score_parametric, mean_only=self.mean_only,
                                       reference_site=self.reference_site)
            self.score_model_.fit(scores, sites=sites)
        else:
            self.score_model_ = None
        del self._train_scores
        return self

    def _check_options(self) -> None:
        if self.n_components is None:
            if not (isinstance(self.percent_var, (int, float)) and 0 < self.percent_var <= 1):
                raise HarmonizerInputError(f"percent_var must be in (0, 1], got {self.percent_var!r}")
        elif isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) \
                or self.n_components < 0:
            raise HarmonizerInputError(f"n_components must be a count >= 0 or None, got {self.n_components!r}")

    def _fit_components(self, X, codes, cov) -> None:
        """PCA of the standardised residuals by the eigenvectors of their Gram matrix.

        The standardised residuals of the first pass are kept for the second (components) when they
        take at most :data:`KEEP_BYTES`; a larger cohort (e.g. a memory map) is read twice instead.
        """
        n_scans, n_features = X.shape
        dtype = _work_dtype(X)
        self.pc_center_, self.pc_scale_ = self._residual_moments()
        gram = np.zeros((n_scans, n_scans))
        keep = n_scans * n_features * np.dtype(dtype).itemsize <= KEEP_BYTES
        kept = []
        for block in self._blocks(X):
            Z = self._standardised(X, block, codes, cov, dtype)
            gram += Z @ Z.T
            if keep:
                kept.append(Z)
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
        rank_tol = values[0] * max(gram.shape) * np.finfo(dtype).eps if values.size else 0.0
        rank = int((values > rank_tol).sum())
        n_kept = min(n_scans, n_features)
        self.explained_variance_ = values[:n_kept] / max(n_scans - 1, 1)
        if self.n_components is not None:
            k = int(self.n_components)
            if k > rank:
                raise HarmonizerInputError(
                    f"n_components={k} but the standardised residuals have {rank} component(s) with variance "
                    f"({n_scans} scans, {n_features} features); choose n_components <= {rank}")
        elif rank == 0:
            k = 0
        else:
            share = np.cumsum(values[:rank]) / values[:rank].sum()
            k = int(min(np.searchsorted(share, self.percent_var, side="right") + 1, rank))
        self.n_components_ = k
        singular = np.sqrt(values[:k])
        # Signs: each component's largest training score (in magnitude) is positive. Score empirical Bayes
        # pools the scores' site means across components, so the result must not depend on the
        # eigensolver's signs; the scores fix them without another pass over the components.
        vectors = vectors[:, :k]
        largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)]
        vectors = vectors * np.where(largest < 0, -1.0, 1.0)
        left = (vectors / singular).T.astype(dtype)                     # (K, n): S_K^-1 U_K'
        self.components_ = np.zeros((k, n_features), dtype=dtype)
        if k:
            blocks = zip(self._blocks(X), kept) if keep else \
                ((block, self._standardised(X, block, codes, cov, dtype)) for block in self._blocks(X))
            for block, Z in blocks:
                self.components_[:, block] = left @ Z
        del kept
        self._train_scores = vectors * singular                         # U_K S_K = Z V_K'

    def _fit_site_effects(self, n, s1, s2) -> None:
        # Keep ComBat's per-site sums of the standardised data: they give the residuals' moments.
        self._site_sums = (np.array(n, dtype=float), s1.copy(), s2.copy())
        super()._fit_site_effects(n, s1, s2)

    def _residual_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(G,) mean and standard deviation over the training scans of ComBat's residuals ``z``.

        ``z = (s - gamma*_i) / sqrt(delta*_i)`` at site i, ``s`` the standardised data whose per-site
        count, sum and sum of squares (n, s1, s2) ComBat's fit computed: so
        ``sum z = sum_i (s1 - n gamma*) / sqrt(delta*)`` and
        ``sum z^2 = sum_i (s2 - 2 gamma* s1 + n gamma*^2) / delta*``, over observed values only. This
        saves a pass over the data. A feature with fewer than 2 observed scans, no spread, or left
        unchanged by ComBat gets centre 0 and scale 1 (its residuals are 0).
        """
        n, s1, s2 = self._site_sums
        del self._site_sums
        gamma, delta = self.gamma_star_, self.delta_star_
        count = n.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            center = np.nansum((s1 - n * gamma) / np.sqrt(delta), axis=0) / count
            total_sq = np.nansum((s2 - 2 * gamma * s1 + n * gamma * gamma) / delta, axis=0)
            scale = np.sqrt(np.maximum(total_sq - count * center * center, 0.0) / (count - 1))
        ok = (count >= 2) & np.isfinite(scale) & (scale > 1e-12 * np.maximum(1.0, np.abs(center))) & ~self.unchanged_
        return np.where(ok, center, 0.0), np.where(ok, scale, 1.0)

    def _blocks(self, X):
        """Feature blocks of at most BLOCK_BYTES per (n_scans x block) float64 array."""
        width = int(np.clip(BLOCK_BYTES // (8 * max(X.shape[0], 1)), 256, FEATURE_BLOCK))
        for start in range(0, X.shape[1], width):
            yield slice(start, min(start + width, X.shape[1]))

    def _standardised(self, X, block: slice, codes, cov, dtype) -> np.ndarray:
        """(n_scans, B) standardised residuals of the PCA (``dtype``; NaN as 0).

        ComBat's residual over sigma, ``z = (y* - m) / sigma = (y - m - sigma gamma*) / (sigma sqrt(delta*))``
        (the reference site has gamma* = 0 and delta* = 1; features ComBat leaves unchanged are 0),
        centred and scaled by ``pc_center_`` and ``pc_scale_``.
        """
        unchanged = self.unchanged_[block]
        # z = (y - m) a_i - b_i per site i: a = 1 / (sigma sqrt(delta*)), b = gamma* / sqrt(delta*).
        spread = np.sqrt(self.delta_star_[:, block])
        a = np.where(unchanged, 0.0, 1.0 / (np.sqrt(self.var_pooled_[block]) * spread))
        b = np.where(unchanged, 0.0, self.gamma_star_[:, block] / spread)
        # (z - center) / scale, folded into a and b.
        a, b = a / self.pc_scale_[block], (b + self.pc_center_[block]) / self.pc_scale_[block]
        # m = grand mean + covariates @ coefficients, as one product; then Z = y - m in its place.
        design = np.column_stack([np.ones(X.shape[0]), cov]).astype(dtype)
        Z = design @ np.vstack([self.grand_mean_[block], self.covariate_coef_[:, block]]).astype(dtype)
        np.subtract(X[:, block], Z, out=Z, dtype=dtype)            # a memory map reads one block here
        a, b = a.astype(dtype), b.astype(dtype)
        runs = _site_runs(codes)
        if runs is None:                   # scans of the sites interleaved: per-scan rows of a and b
            Z *= a[codes]
            Z -= b[codes]
        else:                              # scans grouped by site: in place, site by site
            for rows, site in runs:
                Z[rows] *= a[site]
                Z[rows] -= b[site]
        if unchanged.any():
            Z[:, unchanged] = 0.0          # also where y is NaN (NaN * 0 is NaN)
        if np.isnan(Z.sum()):           # one cheap reduction when nothing is missing
            Z[np.isnan(Z)] = 0.0
        return Z

    def _scores(self, X, codes, cov) -> np.ndarray:
        """(n_scans, K) principal-component scores of the scans' standardised residuals (float64)."""
        dtype = _work_dtype(X)
        components = self.components_.astype(dtype, copy=False)
        scores = np.zeros((X.shape[0], self.n_components_))
        for block in self._blocks(X):
            scores += self._standardised(X, block, codes, cov, dtype) @ components[:, block].T
        return scores

    def _scores_of_output(self, out, cov) -> np.ndarray | None:
        """The scores of :meth:`_scores` from ComBat's output ``y*`` of the same scans; None if it holds NaN.

        The standardised residual is ``(y* - m) u - c`` with ``u = 1 / (sigma pc_scale)`` and
        ``c = pc_center / pc_scale`` per feature (0 where ComBat leaves the feature unchanged), so the
        scores are ``y* (V u)' - [1, covariates] (B u) V' - c V'``: one product per block of features,
        with no per-scan arithmetic. NaN in ``y*`` would spread through the product; the caller then
        takes the residual route, which counts them as 0.
        """
        dtype = out.dtype if out.dtype in (np.float32, np.float64) else np.float64
        unit = np.where(self.unchanged_, 0.0, 1.0 / (np.sqrt(self.var_pooled_) * self.pc_scale_))
        shift = np.where(self.unchanged_, 0.0, self.pc_center_ / self.pc_scale_)
        design = np.column_stack([np.ones(out.shape[0]), cov])
        scores = np.zeros((out.shape[0], self.n_components_))
        constant = np.zeros((design.shape[1], self.n_components_))
        components = self.components_.astype(dtype, copy=False)
        unit_w = unit.astype(dtype)
        for block in self._blocks(out):
            projection = components[:, block] * unit_w[block]           # (K, B)
            scores += np.asarray(out[:, block], dtype=dtype) @ projection.T
            mean = np.vstack([self.grand_mean_[block], self.covariate_coef_[:, block]]) * unit[block]
            constant += mean.astype(dtype) @ components[:, block].T
            constant[0] += components[:, block] @ shift[block].astype(dtype)
        scores -= design @ constant
        return scores if np.isfinite(scores).all() else None

    # -- transform ---------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None, out=None) -> np.ndarray:
        """ComBat, then each scan's scores moved by the score model; same shape, dtype and NaN pattern.

        ``out``: optional array of X's shape (e.g. a writable ``np.memmap``) to write into.
        """
        self.check_is_fitted()
        out = super().transform(X, sites=sites, covariates=covariates, out=out)
        if not self.n_components_:
            return out
        X = _check_matrix(X)
        sites = np.asarray(sites, dtype=object)
        codes = _design.site_codes(sites, self.sites_)
        cov = self.encoder_.transform(covariates, X.shape[0])
        scores = self._scores_of_output(out, cov)
        if scores is None:                                                       # missing values
            scores = self._scores(X, codes, cov)
        change = self.score_model_.transform(scores, sites=sites) - scores       # 0 for the reference site
        moved = np.flatnonzero(np.any(change != 0, axis=1))
        if not moved.size:
            return out
        dtype = _work_dtype(X)
        change = change[moved].astype(dtype)
        components = self.components_.astype(dtype, copy=False)
        unit = (np.sqrt(self.var_pooled_) * self.pc_scale_).astype(dtype)
        contiguous = moved.size == X.shape[0]
        for block in self._blocks(X):
            correction = change @ (components[:, block] * unit[block])
            if contiguous:
                out[:, block] += correction
            else:
                out[moved, block] += correction
        return out

    # -- a new site --------------------------------------------------------------------------------
    def adapt(self, X, *, sites=None, covariates=None, replace: bool = False, priors: str = "own") -> "CovBat":
        """Add new sites: ComBat's :meth:`~surfharm.harmonize.ComBat.adapt`, then the new sites' score
        locations and scales from their own projected scans (the PCA basis and the other sites held
        fixed). Returns self."""
        self.check_is_fitted()
        X = _check_matrix(X)
        super().adapt(X, sites=sites, covariates=covariates, replace=replace, priors=priors)
        if self.n_components_:
            sites = np.asarray(sites, dtype=object)
            codes = _design.site_codes(sites, self.sites_)
            scores = self._scores(X, codes, self.encoder_.transform(covariates, X.shape[0]))
            self.score_model_.adapt(scores, sites=sites, replace=replace, priors=priors)
        return self

    # -- persistence -------------------------------------------------------------------------------
    _PCA_ARRAYS = ("pc_center_", "pc_scale_", "components_", "explained_variance_")

    def _state_arrays(self) -> tuple[str, ...]:
        return super()._state_arrays() + self._PCA_ARRAYS

    def _get_state(self):
        arrays, meta = super()._get_state()
        meta["n_components"] = int(self.n_components_)
        meta["score_model"] = None
        if self.score_model_ is not None:
            score_arrays, score_meta = self.score_model_._get_state()
            arrays.update({f"score_model.{k}": v for k, v in score_arrays.items()})
            meta["score_model"] = {"params": self.score_model_._file_params(), **score_meta}
        return arrays, meta

    def _load_extra(self, arrays, meta) -> None:
        self.n_components_ = int(meta["n_components"])
        self.score_model_ = None
        if meta.get("score_model"):
            score_meta = dict(meta["score_model"])
            self.score_model_ = ComBat(**score_meta.pop("params"))
            prefix = "score_model."
            self.score_model_._set_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                                         score_meta)

    def _check_state(self, check: StateCheck) -> None:
        super()._check_state(check)
        n_features = self.n_features_in_
        for name in ("pc_center_", "pc_scale_"):
            check.shape(name, getattr(self, name), (n_features,))
            check.finite(name, getattr(self, name), positive=name == "pc_scale_")
        check.shape("components_", self.components_, (self.n_components_, n_features))
        check.finite("components_", self.components_)
        if self.n_components_:
            if self.score_model_ is None:
                from surfharm.errors import ModelFileError

                raise ModelFileError(f"{check.path}: the model has {self.n_components_} components but no score "
                                     "model; the file is damaged: fit it again")
            check.shape("score_model.gamma_star_", self.score_model_.gamma_star_,
                        (len(self.sites_), self.n_components_))
            self.score_model_._check_state(check)

    def _extra_metadata(self) -> dict[str, Any]:
        return {}


def _site_runs(codes: np.ndarray, max_runs: int = 64) -> list[tuple[slice, int]] | None:
    """``[(rows, site code), ...]`` for runs of consecutive scans of one site; None if there are more
    than ``max_runs`` (the sites' scans interleaved)."""
    if codes.size == 0:
        return []
    starts = np.flatnonzero(np.diff(codes)) + 1
    if starts.size >= max_runs:
        return None
    bounds = np.concatenate([[0], starts, [codes.size]])
    return [(slice(int(lo), int(hi)), int(codes[lo])) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _work_dtype(X) -> type:
    """float32 arithmetic for float32 scans (their output is float32), float64 otherwise."""
    return np.float32 if X.dtype == np.float32 else np.float64

