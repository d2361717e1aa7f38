"""ComBat harmonization (Johnson, Li & Rabinovic 2007; Fortin et al. 2017, 2018), streamed over scans.

Model, for scan j at site i and feature g (a vertex or an ROI):

    y_jg = alpha_g + x_j' beta_g + gamma_ig + sqrt(delta_ig) * eps_jg,   eps_jg ~ N(0, sigma_g^2)

``x_j`` holds the covariates to keep (age, sex, diagnosis, spline bases of smooth terms). ComBat
standardises every feature by the pooled fit, estimates each site's location ``gamma`` and scale
``delta`` on the standardised data, shrinks them towards priors shared across features (empirical
Bayes, parametric or not), and removes them:

    y*_jg = (y_jg - m_jg - sigma_g gamma*_ig) / sqrt(delta*_ig) + m_jg,   m_jg = alpha_g + x_j' beta_g.

Everything the fit needs is a sum over scans (``D'D``, ``D'Y``, per-site sums of residuals and of
their squares) and, up to empirical Bayes, per feature. So ``fit`` works on one block of features at
a time, reading it in tiles of scans x features: a ``np.memmap`` of 5000 scans x 163842 vertices never
has to be in memory, and the only full-width arrays are the fitted parameters. ``transform`` computes
each tile in float64 and writes it straight into its output (float32 data stay float32 there).

Differences from neuroCombat 0.2.12, on purpose (equal on complete, non-degenerate data):
NaN values are skipped per feature instead of spreading to every output; a constant feature is
returned unchanged instead of being shifted; a site with one scan, a single feature under empirical
Bayes, and covariates confounded with site raise errors that say what to do; ``transform`` applies
exactly the fitted model (reproducing ``fit_transform`` on the training scans); the reference site
works and its scans are returned bit-for-bit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from surfharm.harmonize import _adapt, _design, _eb, _np_eb
from surfharm.harmonize._tiles import (
    _check_matrix,
    _chunks,
    _feature_blocks,
    _refuse_inf,
    _row_blocks,
)
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    StateCheck,
    check_n_features,
    register,
    require_sites,
)

#: Up to this many features, non-parametric EB sums over every pair directly (cheap enough).
DIRECT_NONPARAMETRIC_MAX = 8192



@register("combat")
class ComBat(Harmonizer):
    """ComBat with fit/apply, a reference site, smooth covariates and streaming over scans.

    Parameters
    ----------
    eb : bool
        Shrink the site parameters with empirical Bayes (default). ``False`` uses the per-site
        least-squares estimates as they are.
    parametric : bool
        Normal / inverse-gamma priors (default); ``False`` uses the features' own estimates as a
        non-parametric prior (each feature weighted by its likelihood).
    mean_only : bool
        Remove only the location effect (``delta = 1``). Allows sites with a single scan.
    reference_site : str or int, optional
        Harmonize to this site: its scans are returned unchanged and the pooled model is fitted on it.
    smooth_terms : tuple of str
        Covariate columns modelled by a cubic B-spline basis (e.g. ``("age",)`` for infant cohorts).
    spline_df : int
        Number of spline columns per smooth term (knots at quantiles of the training values).

    Notes
    -----
    Parametric EB iterates until the largest relative change is below 1e-4 (Johnson et al.'s rule,
    kept so that results equal neuroCombat's); ``mean_only`` with parametric EB uses their posterior
    mean with n = 1 and delta = 1, for the same reason. Non-parametric EB sums over all feature pairs
    exactly up to 8192 features, beyond that it evaluates the same sums on a Chebyshev grid checked
    against the exact sum (:mod:`surfharm.harmonize._np_eb`).

    Learned attributes (shapes: K sites, Q covariate columns, G features)
    ---------------------------------------------------------------------
    ``sites_`` : list of K labels;  ``site_counts_`` : (K,) scans per site;  ``n_features_in_`` : G
    ``grand_mean_`` : (G,);  ``covariate_coef_`` : (Q, G);  ``var_pooled_`` : (G,) (data units squared)
    ``gamma_hat_``, ``delta_hat_`` : (K, G) least-squares site estimates (standardised units)
    ``gamma_star_``, ``delta_star_`` : (K, G) the estimates applied
    ``gamma_bar_``, ``tau2_``, ``a_prior_``, ``b_prior_`` : (K,) priors (NaN when not used)
    ``unchanged_`` : (G,) bool, features returned as given (constant, all NaN, or no residual variance)
    ``nonparametric_info_`` : list, per shrunk site, how non-parametric EB was evaluated (see ``_np_eb``)
    """

    def __init__(self, *, eb: bool = True, parametric: bool = True, mean_only: bool = False,
                 reference_site=None, smooth_terms: tuple = (), spline_df: int = 5):
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.reference_site = reference_site
        self.smooth_terms = smooth_terms
        self.spline_df = spline_df

    # -- fit ---------------------------------------------------------------------------------------
    fitted_attribute = "gamma_star_"

    def fit(self, X, y=None, *, sites=None, covariates=None) -> "ComBat":
        """Learn site effects from ``X`` (n_scans, n_features); NaN = missing. Returns self.

        ``sites``: (n_scans,) one label per scan; ``covariates``: DataFrame (or array) of the
        effects to keep, one row per scan; ``y`` is ignored.
        """
        X = _check_matrix(X)
        n_scans, n_features = X.shape
        sites = require_sites(sites, n_scans, f"{type(self).__name__}.fit")
        self._fit_design(sites, covariates, n_scans)
        self._check_site_sizes()
        self._fit_site_effects(*self._location_scale_fit(X))
        self.n_features_in_ = n_features
        del self._site_design, self._cov_design  # per-scan design: not part of the model
        return self

    def _fit_design(self, sites, covariates, n_scans) -> None:
        self.sites_ = _design.site_levels(sites)
        self.adapted_sites_ = []
        codes = _design.site_codes(sites, self.sites_)
        self._site_design = _design.one_hot(codes, len(self.sites_))
        self.site_counts_ = self._site_design.sum(axis=0).astype(np.int64)
        self.encoder_ = _design.CovariateEncoder(smooth_terms=tuple(self.smooth_terms), spline_df=self.spline_df)
        self.encoder_.fit(covariates, n_scans)
        self._cov_design = self.encoder_.transform(covariates, n_scans)
        n_columns = self._site_design.shape[1] + self._cov_design.shape[1]
        if n_scans <= n_columns:
            raise HarmonizerInputError(
                f"{n_scans} scans cannot fit {n_columns} design columns ({len(self.sites_)} sites + "
                f"{self._cov_design.shape[1]} covariate columns {self.encoder_.names}); add scans or drop covariates")
        _design.check_identifiable(self._site_design, self._cov_design, self.encoder_.names)
        self.reference_index_ = None
        if self.reference_site is not None:
            keys = [str(s) for s in self.sites_]
            if str(self.reference_site) not in keys:
                raise HarmonizerInputError(
                    f"reference_site {self.reference_site!r} is not among the sites {keys}")
            self.reference_index_ = keys.index(str(self.reference_site))

    def _check_site_sizes(self) -> None:
        if self.mean_only:
            return
        small = [str(s) for s, c in zip(self.sites_, self.site_counts_) if c < 2]
        if small:
            raise HarmonizerInputError(
                f"site(s) {small} have a single scan: ComBat cannot estimate a site's scale (variance) effect "
                "from one scan. Use mean_only=True to correct only the location for such sites, merge the site "
                "with another site of the same scanner, or leave its scans out")

    def _location_scale_fit(self, X):
        """Pooled least squares and per-site sums of standardised residuals, one block of features at a time.

        Every statistic here is per feature, so each block of FEATURE_BLOCK features is read twice
        (normal equations, then residual sums) in tiles of about CHUNK_BYTES and finished before
        the next: the only full-width arrays are the model's own. Returns ``(n, s1, s2)``, (K, G):
        observed scans, sum and sum of squares of the standardised data per site; ``s1`` and
        ``s2`` are the buffers that become ``gamma_star_`` and ``delta_star_``.
        """
        S, C = self._site_design, self._cov_design
        D = np.hstack([S, C])
        n_sites, n_features = S.shape[1], X.shape[1]
        dtd = D.T @ D
        self.grand_mean_ = np.empty(n_features)
        self.covariate_coef_ = np.empty((C.shape[1], n_features))
        self.var_pooled_ = np.empty(n_features)
        self.unchanged_ = np.empty(n_features, dtype=bool)
        s1 = np.empty((n_sites, n_features))
        s2 = np.empty((n_sites, n_features))
        # Observed scans per site and feature: the site sizes unless values are missing.
        n_site = np.broadcast_to(self.site_counts_.astype(float)[:, None], (n_sites, n_features))
        for block in _feature_blocks(n_features):
            counts = _normal_equations(X, block, S, D)
            if counts.n_site is not None:
                if not n_site.flags.writeable:
                    n_site = np.array(n_site)
                n_site[:, block] = counts.n_site
            n_b = n_site[:, block]
            n_obs = n_b.sum(axis=0)
            coef = np.linalg.solve(dtd, counts.dtx)
            if counts.partial.size:
                # Features with missing scans: each has its own normal equations over its observed scans.
                gram = dtd[None] - counts.missing_gram
                rhs = counts.dtx[:, counts.partial].T[..., None]
                coef[:, counts.partial] = (np.linalg.pinv(gram, hermitian=True) @ rhs)[..., 0].T
            site_coef = coef[:n_sites]
            self.covariate_coef_[:, block] = coef[n_sites:]
            with np.errstate(invalid="ignore", divide="ignore"):
                pooled_mean = (n_b * site_coef).sum(axis=0) / n_obs
            grand = pooled_mean if self.reference_index_ is None else site_coef[self.reference_index_]
            self.grand_mean_[block] = grand

            # Second read: per-site sums of r = x - grand mean - covariate effects, and of r^2.
            r1, r2 = _site_sums(X, block, S, C, grand, coef[n_sites:], has_missing=counts.n_site is not None)
            # Residual sums of squares from those sums: x - D coef = r - c_i at site i, c = site_coef - grand.
            offsets = np.nan_to_num(site_coef - grand)
            ss_site = r2 - 2 * offsets * r1 + n_b * offsets**2
            with np.errstate(invalid="ignore", divide="ignore"):
                var_all = np.maximum(ss_site.sum(axis=0), 0.0) / n_obs
                var_pooled = var_all
                if self.reference_index_ is not None:
                    i = self.reference_index_
                    var_ref = np.maximum(ss_site[i], 0.0) / n_b[i]
                    # A feature the reference site does not vary on keeps the all-site variance.
                    var_pooled = np.where(var_ref > 0, var_ref, var_all)
            constant = _constant_features(X, var_all, pooled_mean, start=block.start)
            unchanged = constant | (n_obs == 0) | ~(var_pooled > 0)
            var_pooled = np.where(unchanged, 1.0, var_pooled)
            self.unchanged_[block] = unchanged
            self.var_pooled_[block] = var_pooled
            s1[:, block] = r1 / np.sqrt(var_pooled)
            s2[:, block] = r2 / var_pooled
        return n_site, s1, s2

    def _standard_mean(self, rows) -> np.ndarray:
        """m_jg = alpha_g + x_j' beta_g for the scans ``rows`` of the design being fitted."""
        return self.grand_mean_ + self._cov_design[rows] @ self.covariate_coef_

    def _fit_site_effects(self, n, s1, s2) -> None:
        """Site estimates from per-site sums of the standardised data; then empirical Bayes.

        ``n, s1, s2``: (K, G) observed scans, sum and sum of squares of standardised values.
        ``s1`` and ``s2`` are overwritten, site by site, by ``gamma_star_`` and ``delta_star_``.
        """
        n_sites, n_features = n.shape
        gamma_hat = np.empty((n_sites, n_features))
        delta_hat = np.empty((n_sites, n_features))
        priors = np.full((4, n_sites), np.nan)
        self.nonparametric_info_ = []
        for i in range(n_sites):
            n_i = n[i]
            with np.errstate(invalid="ignore", divide="ignore"):
                gamma_hat[i] = s1[i] / n_i
                delta_hat[i] = np.where(n_i >= 2, (s2[i] - s1[i] * s1[i] / n_i) / (n_i - 1), np.nan)
            delta_hat[i, delta_hat[i] == 0] = 1.0  # as in Johnson et al.: a site without spread is not rescaled
            if self.mean_only:
                delta_hat[i] = np.where(n_i >= 1, 1.0, np.nan)
            ok = (n_i >= 1) & ~self.unchanged_
            gamma_hat[i, ~ok] = np.nan
            delta_hat[i, ~ok] = np.nan
            if i == self.reference_index_:
                g, d = 0.0, 1.0
            else:
                g, d = self._shrink_site(i, n_i[ok], s1[i, ok], s2[i, ok], gamma_hat[i, ok], delta_hat[i, ok], priors)
                d = np.where(np.isfinite(d), d, 1.0)
            s1[i], s2[i] = 0.0, 1.0
            s1[i, ok], s2[i, ok] = g, d
        self.gamma_hat_, self.delta_hat_ = gamma_hat, delta_hat
        self.gamma_star_, self.delta_star_ = s1, s2
        self.gamma_bar_, self.tau2_, self.a_prior_, self.b_prior_ = priors

    def _shrink_site(self, i, n, s1, s2, gamma_hat, delta_hat, priors):
        if not self.eb:
            return gamma_hat, delta_hat
        gamma_bar, tau2 = _eb.location_prior(gamma_hat)
        priors[0, i], priors[1, i] = gamma_bar, tau2
        if self.parametric and self.mean_only:
            # Johnson et al.'s mean-only rule: the posterior mean with n = 1 and delta = 1.
            return _eb.posterior_mean(gamma_hat, gamma_bar, 1.0, 1.0, tau2), np.ones_like(gamma_hat)
        if self.parametric:
            a, b = _eb.scale_prior(delta_hat)
            priors[2, i], priors[3, i] = a, b
            return _eb.parametric(n, s1, s2, gamma_hat, delta_hat, gamma_bar=gamma_bar, tau2=tau2, a=a, b=b)
        return self._nonparametric_site(n, s1, s2, gamma_hat, delta_hat)

    def _nonparametric_site(self, n, s1, s2, gamma_hat, delta_hat):
        prior = np.flatnonzero(np.isfinite(delta_hat))
        if prior.size < 2:
            raise HarmonizerInputError("non-parametric empirical Bayes needs at least 2 features with a variance "
                                       "estimate at every site; use eb=False")
        self_index = np.full(n.size, -1)
        self_index[prior] = np.arange(prior.size)
        mean = s1 / n
        var_biased = np.maximum(s2 / n - mean * mean, 0.0)
        args = (n, mean, var_biased, gamma_hat[prior], delta_hat[prior], self_index)
        if prior.size <= DIRECT_NONPARAMETRIC_MAX:
            self.nonparametric_info_.append({"method": "direct", "grid": None})
            return _np_eb.direct(*args)
        gamma_star, delta_star, info = _np_eb.interpolated(*args)
        self.nonparametric_info_.append(info)
        return gamma_star, delta_star

    # -- a new site ---------------------------------------------------------------------------------
    supports_adapt = True

    def adapt(self, X, *, sites=None, covariates=None, replace: bool = False, priors: str = "own") -> "ComBat":
        """Add the sites of ``X`` (scans of scanners not seen in training) to the fitted model; returns self.

        The model is held fixed: each new site's location and scale are estimated from its own scans,
        standardised by the stored grand mean, covariate coefficients and pooled variance, and shrunk
        by empirical Bayes with that site's own hyperparameters (``priors="own"``, as a refit would
        estimate them) or the training sites' average (``priors="training"``); see
        :mod:`surfharm.harmonize._adapt`. The training scans' output does not change. Needs 2 scans
        per new site (1 with ``mean_only``); a site already in the model is refused unless ``replace``.
        The adapted sites are listed in ``adapted_sites_`` and saved with the model.
        """
        _adapt.adapt_combat(self, X, sites, covariates, replace=replace, priors=priors, site_model=ComBat)
        return self

    # -- transform ---------------------------------------------------------------------------------
    def transform(self, X, *, sites=None, covariates=None, out=None) -> np.ndarray:
        """Remove the fitted site effects from ``X`` (same shape, dtype and NaN pattern).

        ``out``: optional array (e.g. a writable ``np.memmap``) of X's shape to write into, so
        that neither the input nor the output of a large cohort has to fit in memory.
        """
        return self._transform(X, sites, covariates, out)

    def _transform(self, X, sites, covariates, out, **offset_data) -> np.ndarray:
        self.check_is_fitted()
        X = _check_matrix(X)
        check_n_features(self, X)
        sites = require_sites(sites, X.shape[0], f"{type(self).__name__}.transform")
        codes = _design.site_codes(sites, self.sites_)
        cov = self.encoder_.transform(covariates, X.shape[0])
        offset = self._scan_offsets(X, codes, cov, covariates, **offset_data)
        if out is None:
            out = np.empty(X.shape, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        elif out.shape != X.shape:
            raise HarmonizerInputError(f"out has shape {out.shape}; expected X's shape {X.shape}")
        reference = None if self.reference_index_ is None else codes == self.reference_index_
        # y* = (y - m - sigma gamma*) / sqrt(delta*) + m = y a + (1 - a) m - sigma gamma* a, a = 1/sqrt(delta*),
        # with m = grand + C B (+ the scan's own offset); computed in float64 tile by tile, written into out.
        for block in _feature_blocks(X.shape[1]):
            scale = 1.0 / np.sqrt(self.delta_star_[:, block])                                   # (K, B)
            constant_part = (1.0 - scale) * self.grand_mean_[block] - (
                np.sqrt(self.var_pooled_[block]) * self.gamma_star_[:, block] * scale)
            coef = self.covariate_coef_[:, block]
            unchanged = np.flatnonzero(self.unchanged_[block])
            for rows, tile in _row_blocks(X, block):
                _refuse_inf(tile, rows, block)
                site = codes[rows]
                if unchanged.size:
                    kept = tile[:, unchanged]
                if reference is not None and reference[rows].any():
                    kept_rows = tile[reference[rows]]
                a = scale[site]
                mean_part = cov[rows] @ coef if coef.shape[0] else np.zeros((tile.shape[0], 1))
                extra = offset(rows, block)
                if not np.isscalar(extra):
                    mean_part = mean_part + extra
                tile *= a
                tile += constant_part[site]
                a -= 1.0
                a *= mean_part
                tile -= a
                if unchanged.size:
                    tile[:, unchanged] = kept
                if reference is not None and reference[rows].any():
                    tile[reference[rows]] = kept_rows
                out[rows, block] = tile
        return out

    def _scan_offsets(self, X, codes, cov, covariates):
        """Scan-specific part of the mean beyond the covariates, as ``offset(rows, columns)``.

        None in ComBat (see LongComBat, where it is each subject's predicted intercept or line).
        """
        return lambda rows, columns: 0

    # -- persistence -------------------------------------------------------------------------------
    _ARRAYS = ("grand_mean_", "covariate_coef_", "var_pooled_", "gamma_hat_", "delta_hat_", "gamma_star_",
               "delta_star_", "gamma_bar_", "tau2_", "a_prior_", "b_prior_", "unchanged_", "site_counts_")

    def _get_state(self):
        arrays = {name: getattr(self, name) for name in self._state_arrays()}
        metadata = {"sites": list(self.sites_), "n_features": int(self.n_features_in_),
                    "reference_index": self.reference_index_, "covariates": self.encoder_.to_state(),
                    "adapted_sites": list(getattr(self, "adapted_sites_", [])), **self._extra_metadata()}
        return arrays, metadata

    def _state_arrays(self) -> tuple[str, ...]:
        """Names of the learned arrays that ``save`` writes (may depend on the parameters)."""
        return self._ARRAYS

    def _extra_metadata(self) -> dict[str, Any]:
        return {}

    def _set_state(self, arrays, meta) -> None:
        for name in self._state_arrays():
            setattr(self, name, arrays[name])
        self.sites_ = list(meta["sites"])
        self.n_features_in_ = int(meta["n_features"])
        self.reference_index_ = meta["reference_index"]
        self.encoder_ = _design.CovariateEncoder.from_state(meta["covariates"])
        self.adapted_sites_ = list(meta.get("adapted_sites", []))
        self._load_extra(arrays, meta)

    def _load_extra(self, arrays, meta) -> None:
        pass

    def _check_state(self, check: StateCheck) -> None:
        n_sites, n_features = len(self.sites_), self.n_features_in_
        used = ~check.shape("unchanged_", self.unchanged_, (n_features,)).astype(bool)
        for name in ("grand_mean_", "var_pooled_"):
            check.shape(name, getattr(self, name), (n_features,))
        check.finite("grand_mean_", self.grand_mean_, used)
        check.finite("var_pooled_", self.var_pooled_, used, positive=True)
        check.shape("covariate_coef_", self.covariate_coef_, (None, n_features))
        check.finite("covariate_coef_", self.covariate_coef_, used)
        for name in ("gamma_star_", "delta_star_"):
            check.shape(name, getattr(self, name), (n_sites, n_features))
        check.finite("gamma_star_", self.gamma_star_, used)
        check.finite("delta_star_", self.delta_star_, used, positive=True)


# -- helpers shared by the passes over the data -------------------------------------------------------

class _BlockCounts:
    """What the first read of a block of B features tells.

    ``n_site`` (K, B) observed (non-NaN) scans per site and feature, or None when nothing is missing;
    ``dtx`` (P, B) design' X with NaN as 0 (None without a design); ``partial`` indices (within the
    block) of features missing in some scans and observed in others; ``missing_gram``
    (len(partial), P, P) the design cross products of their missing scans.
    """

    def __init__(self, n_site, dtx, partial, missing_gram):
        self.n_site, self.dtx, self.partial, self.missing_gram = n_site, dtx, partial, missing_gram


def _normal_equations(X, block: slice, site_design: np.ndarray, design: np.ndarray | None) -> _BlockCounts:
    """Refuse inf; count observed values per site; accumulate design' X (NaN as 0) for one feature block."""
    width = block.stop - block.start
    n_cols = 0 if design is None else design.shape[1]
    dtx = None if design is None else np.zeros((n_cols, width))
    n_missing = None        # (K, B) missing values per site, once a tile has a NaN
    missing_gram = None     # (B, P, P) design cross products of each feature's missing scans
    for rows, tile in _row_blocks(X, block):
        if design is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                product = design[rows].T @ tile
            # NaN and inf reach the product (every design row has a 1): a finite product means a clean tile.
            if np.isfinite(product).all():
                dtx += product
                continue
        finite = np.isfinite(tile)
        if finite.all():
            if design is not None:
                dtx += product
            continue
        _refuse_inf(tile, rows, block)
        if n_missing is None:
            n_missing = np.zeros((site_design.shape[1], width))
            missing_gram = None if design is None else np.zeros((width, n_cols, n_cols))
        n_missing += site_design[rows].T @ ~finite
        if design is None:
            continue
        dtx += design[rows].T @ np.where(finite, tile, 0.0)
        cols = np.flatnonzero(~finite.all(axis=0))
        d = design[rows]
        missing_gram[cols] += np.einsum("ng,ni,nj->gij", (~finite[:, cols]).astype(float), d, d)
    if n_missing is None:
        return _BlockCounts(None, dtx, np.zeros(0, dtype=int), np.zeros((0, n_cols, n_cols)))
    n_site = site_design.sum(axis=0)[:, None] - n_missing
    partial = np.flatnonzero((n_missing.sum(axis=0) > 0) & (n_site.sum(axis=0) > 0))
    return _BlockCounts(n_site, dtx, partial, None if design is None else missing_gram[partial])


def _site_sums(X, block: slice, site_design, cov_design, grand_mean, covariate_coef, has_missing=True):
    """Per-site sums of r and r^2 over one feature block, r = x - grand - C B (NaN skipped): two (K, B)."""
    n_sites = site_design.shape[1]
    r1 = np.zeros((n_sites, block.stop - block.start))
    r2 = np.zeros_like(r1)
    for rows, tile in _row_blocks(X, block):
        tile -= grand_mean
        if covariate_coef.shape[0]:
            tile -= cov_design[rows] @ covariate_coef
        if has_missing:
            tile[np.isnan(tile)] = 0.0
        r1 += site_design[rows].T @ tile
        tile *= tile
        r2 += site_design[rows].T @ tile
    return r1, r2


def _constant_features(X, var_all, mean, start: int = 0) -> np.ndarray:
    """Features with one value in every observed scan: (len(var_all),) bool.

    ``var_all`` and ``mean`` describe the features ``start, start + 1, ...`` of X. Only features
    whose residual variance is zero to rounding are read again to check.
    """
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero((var_all <= (1e-10 * np.abs(mean)) ** 2) | (var_all == 0))
    constant = np.zeros(var_all.shape[0], dtype=bool)
    if candidates.size:
        low = np.full(candidates.size, np.inf)
        high = np.full(candidates.size, -np.inf)
        for _, chunk in _chunks(X, columns=candidates + start):
            low = np.fmin(low, np.fmin.reduce(chunk, axis=0))
            high = np.fmax(high, np.fmax.reduce(chunk, axis=0))
        constant[candidates] = high == low
    return constant
