"""ComBat harmonization (Johnson, Li & Rabinovic 2007; Fortin et al. 2017, 2018), streamed over scans.

Model, for scan j at site i and feature g (a vertex or an ROI):

    y_jg = alpha_g + x_j' beta_g + gamma_ig + sqrt(delta_ig) * eps_jg,   eps_jg ~ N(0, sigma_g^2)

``x_j`` holds the covariates to keep (age, sex, diagnosis, spline bases of smooth terms). ComBat
standardises every feature by the pooled fit, estimates each site's location ``gamma`` and scale
``delta`` on the standardised data, shrinks them towards priors shared across features (empirical
Bayes, parametric or not), and removes them:

    y*_jg = (y_jg - m_jg - sigma_g gamma*_ig) / sqrt(delta*_ig) + m_jg,   m_jg = alpha_g + x_j' beta_g.

Everything the fit needs is a sum over scans (``D'D``, ``D'Y``, per-site sums of residuals and of
their squares), so ``fit`` reads ``X`` in chunks of scans: a ``np.memmap`` of 5000 scans x 163842
vertices never has to be in memory. ``transform`` writes its output chunk by chunk as well.

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

from surfharm.harmonize import _design, _eb, _np_eb
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    check_matrix_shape,
    check_sites,
    load_state,
    register,
    save_state,
)

#: Bytes of float64 working memory per chunk of scans (each pass holds a few such blocks).
CHUNK_BYTES = 4 * 2**20
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
    sites_ : list of K labels;  site_counts_ : (K,) scans per site;  n_features_in_ : G
    grand_mean_ : (G,);  covariate_coef_ : (Q, G);  var_pooled_ : (G,) (data units squared)
    gamma_hat_, delta_hat_ : (K, G) least-squares site estimates (standardised units)
    gamma_star_, delta_star_ : (K, G) the estimates applied
    gamma_bar_, tau2_, a_prior_, b_prior_ : (K,) priors (NaN when not used)
    unchanged_ : (G,) bool, features returned as given (constant, all NaN, or no residual variance)
    nonparametric_info_ : list, per shrunk site, how non-parametric EB was evaluated (see ``_np_eb``)
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
    def fit(self, X, sites, covariates=None, **kwargs) -> "ComBat":
        """Learn site effects from ``X`` (n_scans, n_features); NaN = missing. Returns self."""
        if kwargs:
            raise TypeError(f"ComBat.fit got unexpected arguments {sorted(kwargs)}")
        X = _check_matrix(X)
        n_scans, n_features = X.shape
        sites = check_sites(sites, n_scans)
        self._fit_design(sites, covariates, n_scans)
        counts = _scan_pass(X, self._site_design, self._first_pass_design())
        self._check_site_sizes(counts)
        sums = self._location_scale_fit(X, counts)
        self._fit_site_effects(*sums)
        self.n_features_in_ = n_features
        del self._site_design, self._cov_design  # per-scan design: not part of the model
        return self

    def _fit_design(self, sites, covariates, n_scans) -> None:
        self.sites_ = _design.site_levels(sites)
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

    def _check_site_sizes(self, counts: "_Counts") -> None:
        if self.mean_only:
            return
        small = [str(s) for s, c in zip(self.sites_, self.site_counts_) if c < 2]
        if small:
            raise HarmonizerInputError(
                f"site(s) {small} have a single scan: ComBat cannot estimate a site's scale (variance) effect "
                "from one scan. Use mean_only=True to correct only the location for such sites, merge the site "
                "with another site of the same scanner, or leave its scans out")

    def _first_pass_design(self):
        """Design whose cross products with X the first pass accumulates (``[S | C]``)."""
        return np.hstack([self._site_design, self._cov_design])

    def _location_scale_fit(self, X, counts):
        """Pooled least squares over all features at once; per-site sums of standardised residuals."""
        S = self._site_design
        D = self._first_pass_design()
        n_sites = S.shape[1]
        dtd = D.T @ D
        coef = np.linalg.solve(dtd, counts.dtx)
        if counts.partial.size:
            # Features with missing scans: each has its own normal equations over its observed scans.
            gram = dtd[None] - counts.missing_gram.reshape(-1, *dtd.shape)
            rhs = counts.dtx[:, counts.partial].T[..., None]
            coef[:, counts.partial] = (np.linalg.pinv(gram, hermitian=True) @ rhs)[..., 0].T
        site_coef, self.covariate_coef_ = coef[:n_sites], coef[n_sites:]
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled_mean = (counts.n_site * site_coef).sum(axis=0) / counts.n_obs
        if self.reference_index_ is None:
            self.grand_mean_ = pooled_mean
        else:
            self.grand_mean_ = site_coef[self.reference_index_].copy()

        # Second pass: per-site sums of r = x - grand mean - covariate effects, and of r^2.
        r1, r2 = _site_sums(X, S, self._standard_mean, has_missing=bool((counts.n_obs < X.shape[0]).any()))
        # Residual sums of squares from those sums: x - D coef = r - c_i at site i, c = site_coef - grand.
        offsets = np.nan_to_num(site_coef - self.grand_mean_)
        ss_site = r2 - 2 * offsets * r1 + counts.n_site * offsets**2
        with np.errstate(invalid="ignore", divide="ignore"):
            var_all = np.maximum(ss_site.sum(axis=0), 0.0) / counts.n_obs
            var_pooled = var_all
            if self.reference_index_ is not None:
                i = self.reference_index_
                var_ref = np.maximum(ss_site[i], 0.0) / counts.n_site[i]
                # A feature the reference site does not vary on keeps the all-site variance.
                var_pooled = np.where(var_ref > 0, var_ref, var_all)
        constant = _constant_features(X, var_all, pooled_mean)
        self.unchanged_ = constant | (counts.n_obs == 0) | ~(var_pooled > 0)
        self.var_pooled_ = np.where(self.unchanged_, 1.0, var_pooled)
        return counts.n_site, r1 / np.sqrt(self.var_pooled_), r2 / self.var_pooled_

    def _standard_mean(self, rows) -> np.ndarray:
        """m_jg = alpha_g + x_j' beta_g for the scans ``rows`` of the design being fitted."""
        return self.grand_mean_ + self._cov_design[rows] @ self.covariate_coef_

    def _fit_site_effects(self, n, s1, s2) -> None:
        """Site estimates from per-site sums of the standardised data; then empirical Bayes.

        ``n, s1, s2``: (K, G) observed scans, sum and sum of squares of standardised values.
        """
        n_sites, n_features = n.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma_hat = s1 / n
            delta_hat = np.where(n >= 2, (s2 - s1 * s1 / n) / (n - 1), np.nan)
        delta_hat[delta_hat == 0] = 1.0  # as in Johnson et al.: a site without spread is not rescaled
        if self.mean_only:
            delta_hat = np.where(n >= 1, 1.0, np.nan)
        usable = (n >= 1) & ~self.unchanged_[None, :]
        gamma_hat[~usable] = np.nan
        delta_hat[~usable] = np.nan
        gamma_star = np.zeros((n_sites, n_features))
        delta_star = np.ones((n_sites, n_features))
        priors = np.full((4, n_sites), np.nan)
        self.nonparametric_info_ = []
        for i in range(n_sites):
            ok = usable[i]
            if i == self.reference_index_:
                continue
            g, d = self._shrink_site(i, n[i, ok], s1[i, ok], s2[i, ok], gamma_hat[i, ok], delta_hat[i, ok], priors)
            gamma_star[i, ok] = g
            delta_star[i, ok] = np.where(np.isfinite(d), d, 1.0)
        self.gamma_hat_, self.delta_hat_ = gamma_hat, delta_hat
        self.gamma_star_, self.delta_star_ = gamma_star, delta_star
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

    # -- transform ---------------------------------------------------------------------------------
    def transform(self, X, sites, covariates=None, *, out=None, **kwargs) -> np.ndarray:
        """Remove the fitted site effects from ``X`` (same shape, dtype and NaN pattern).

        ``out``: optional array (e.g. a writable ``np.memmap``) of X's shape to write into, so
        that neither the input nor the output of a large cohort has to fit in memory.
        """
        self.check_is_fitted("gamma_star_")
        X = _check_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise HarmonizerInputError(
                f"X has {X.shape[1]} features but the model was fitted on {self.n_features_in_}; "
                "use the same vertices/ROIs, in the same order")
        sites = check_sites(sites, X.shape[0])
        codes = _design.site_codes(sites, self.sites_)
        cov = self.encoder_.transform(covariates, X.shape[0])
        offset = self._scan_offsets(X, codes, cov, **kwargs)
        # y* = (y - m - sigma gamma*) / sqrt(delta*) + m = y a + (1 - a) m - sigma gamma* a, a = 1/sqrt(delta*),
        # site by site so that the site's parameters broadcast over its scans; with m = grand + C B the
        # covariate part folds into per-site coefficients (1 - a) B.
        scale = 1.0 / np.sqrt(self.delta_star_)
        constant_part = (1.0 - scale) * self.grand_mean_ - np.sqrt(self.var_pooled_) * self.gamma_star_ * scale
        unchanged = np.flatnonzero(self.unchanged_)
        if out is None:
            out = np.empty(X.shape, dtype=X.dtype if X.dtype in (np.float32, np.float64) else np.float64)
        elif out.shape != X.shape:
            raise HarmonizerInputError(f"out has shape {out.shape}; expected X's shape {X.shape}")
        for site in np.unique(codes):
            scans = np.flatnonzero(codes == site)
            if site == self.reference_index_:
                for rows, chunk in _chunks(X, scans, copy=False):
                    out[rows] = chunk
                continue
            a = scale[site]
            site_coef = self.covariate_coef_ * (1.0 - a)
            for rows, chunk in _chunks(X, scans):
                if unchanged.size:
                    kept = chunk[:, unchanged]
                chunk *= a
                chunk += constant_part[site]
                if site_coef.shape[0]:
                    chunk += cov[rows] @ site_coef
                extra = offset(rows)
                if not np.isscalar(extra):
                    chunk += (1.0 - a) * extra
                if unchanged.size:
                    chunk[:, unchanged] = kept
                out[rows] = chunk
        return out

    def _scan_offsets(self, X, codes, cov, **kwargs):
        """Scan-specific part of the mean beyond the covariates: none in ComBat (see LongComBat)."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.transform got unexpected arguments {sorted(kwargs)}")
        return lambda rows: 0

    # -- persistence -------------------------------------------------------------------------------
    _ARRAYS = ("grand_mean_", "covariate_coef_", "var_pooled_", "gamma_hat_", "delta_hat_", "gamma_star_",
               "delta_star_", "gamma_bar_", "tau2_", "a_prior_", "b_prior_", "unchanged_", "site_counts_")

    def save(self, path):
        """Write the fitted model to ``path`` (.npz with a JSON member; no pickle). Returns the path."""
        self.check_is_fitted("gamma_star_")
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        metadata = {"method": self.registry_name, "class": type(self).__name__, "params": self._json_params(),
                    "sites": list(self.sites_), "n_features": int(self.n_features_in_),
                    "reference_index": self.reference_index_, "covariates": self.encoder_.to_state(),
                    **self._extra_metadata()}
        return save_state(path, arrays, metadata)

    def _extra_metadata(self) -> dict[str, Any]:
        return {}

    def _json_params(self) -> dict[str, Any]:
        params = self.get_params()
        params["smooth_terms"] = list(params["smooth_terms"])
        return params

    @classmethod
    def load(cls, path) -> "ComBat":
        """Read a model written by :meth:`save`."""
        arrays, meta = load_state(path)
        if meta.get("class") != cls.__name__:
            raise ValueError(f"{path} holds a {meta.get('class')!r} model, not a {cls.__name__} model")
        params = dict(meta["params"])
        params["smooth_terms"] = tuple(params["smooth_terms"])
        model = cls(**params)
        for name in cls._ARRAYS:
            setattr(model, name, arrays[name])
        model.sites_ = list(meta["sites"])
        model.n_features_in_ = int(meta["n_features"])
        model.reference_index_ = meta["reference_index"]
        model.encoder_ = _design.CovariateEncoder.from_state(meta["covariates"])
        model._load_extra(arrays, meta)
        return model

    def _load_extra(self, arrays, meta) -> None:
        pass


# -- helpers shared by the passes over the data -------------------------------------------------------

class _Counts:
    """What the first pass over the data tells.

    ``n_site`` (K, G) observed (non-NaN) scans per site and feature; ``n_obs`` (G,);
    ``dtx`` (P, G) design' X with NaN as 0; ``partial`` indices of features missing in some scans and
    ``missing_gram`` (len(partial), P*P) the design cross products of their missing scans.
    """

    def __init__(self, n_site, dtx, partial, missing_gram):
        self.n_site = n_site
        self.n_obs = n_site.sum(axis=0)
        self.dtx = dtx
        self.partial = partial
        self.missing_gram = missing_gram


def _scan_pass(X, site_design: np.ndarray, design: np.ndarray | None) -> _Counts:
    """Refuse inf; count observed values per site and feature; accumulate design' X (NaN as 0)."""
    n_scans, n_features = X.shape
    n_site = np.zeros((site_design.shape[1], n_features))
    n_cols = 0 if design is None else design.shape[1]
    dtx = np.zeros((n_cols, n_features))
    outer = None if design is None else np.einsum("ni,nj->nij", design, design).reshape(n_scans, -1)
    slot = np.full(n_features, -1)      # feature -> row of missing_gram
    grams: list[np.ndarray] = []
    n_partial = 0
    for rows, chunk in _chunks(X, copy=False):
        if design is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                product = design[rows].T @ chunk
            # NaN and inf reach the product (every design row has a 1): a finite product means a clean chunk.
            if np.isfinite(product).all():
                n_site += site_design[rows].sum(axis=0)[:, None]
                dtx += product
                continue
        finite = np.isfinite(chunk)
        if finite.all():
            n_site += site_design[rows].sum(axis=0)[:, None]
            if design is not None:
                dtx += product
            continue
        if np.isinf(chunk).any():
            r, c = np.nonzero(np.isinf(chunk))
            raise HarmonizerInputError(
                f"X holds inf at scan {rows[r[0]]}, feature {c[0]}; use NaN for missing values")
        n_site += site_design[rows].T @ finite
        if design is None:
            continue
        dtx += design[rows].T @ np.where(finite, chunk, 0.0)
        cols = np.flatnonzero(~finite.all(axis=0))
        new = cols[slot[cols] < 0]
        slot[new] = np.arange(n_partial, n_partial + new.size)
        n_partial += new.size
        grams.append(np.zeros((new.size, n_cols * n_cols)))
        gram = np.concatenate(grams) if len(grams) > 1 else grams[0]
        gram[slot[cols]] += (~finite[:, cols]).T.astype(float) @ outer[rows]
        grams = [gram]
    n_obs = n_site.sum(axis=0)
    partial = np.flatnonzero((slot >= 0) & (n_obs > 0))
    missing_gram = grams[0][slot[partial]] if grams else np.zeros((0, n_cols * n_cols))
    return _Counts(n_site, dtx, partial, missing_gram)


def _site_sums(X, site_design, standard_mean, has_missing=True):
    """Per-site sums of r and r^2, r = x - standard_mean(rows) (NaN skipped): two (K, G) arrays."""
    n_sites, n_features = site_design.shape[1], X.shape[1]
    r1 = np.zeros((n_sites, n_features))
    r2 = np.zeros((n_sites, n_features))
    for rows, chunk in _chunks(X):
        chunk -= standard_mean(rows)
        if has_missing:
            chunk[np.isnan(chunk)] = 0.0
        r1 += site_design[rows].T @ chunk
        chunk *= chunk
        r2 += site_design[rows].T @ chunk
    return r1, r2


def _constant_features(X, var_all, mean) -> np.ndarray:
    """Features with one value in every observed scan (G,) bool.

    Only features whose residual variance is zero to rounding are read again to check.
    """
    with np.errstate(invalid="ignore"):
        candidates = np.flatnonzero((var_all <= (1e-10 * np.abs(mean)) ** 2) | (var_all == 0))
    constant = np.zeros(X.shape[1], dtype=bool)
    if candidates.size:
        low = np.full(candidates.size, np.inf)
        high = np.full(candidates.size, -np.inf)
        for _, chunk in _chunks(X, columns=candidates):
            low = np.fmin(low, np.fmin.reduce(chunk, axis=0))
            high = np.fmax(high, np.fmax.reduce(chunk, axis=0))
        constant[candidates] = high == low
    return constant


def _chunks(X, scans=None, columns=None, copy=True):
    """Yield ``(scan indices, float64 block of those rows)``, about CHUNK_BYTES per block.

    ``scans``: the scans to visit (default all, in order); ``columns``: only these features.
    With ``copy`` (default) each block is a fresh array the caller may modify in place; without,
    it may be a read-only view of X.
    """
    n_scans, n_features = X.shape
    width = n_features if columns is None else len(columns)
    step = max(1, CHUNK_BYTES // (8 * max(width, 1)))
    order = np.arange(n_scans) if scans is None else np.asarray(scans)
    for start in range(0, order.size, step):
        rows = order[start:start + step]
        contiguous = rows[-1] - rows[0] == rows.size - 1
        block = X[rows[0]:rows[-1] + 1] if contiguous else X[rows]
        if columns is not None:
            block = block[:, columns]
        yield rows, (np.array(block, dtype=np.float64, copy=True) if copy
                     else np.asarray(block, dtype=np.float64))


def _check_matrix(X):
    """A 2-D numeric array (a np.memmap stays a memmap: nothing is loaded here)."""
    X = check_matrix_shape(X, allow_bool=False)
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise HarmonizerInputError(f"X is empty (shape {X.shape})")
    return X


def load_model(path) -> ComBat:
    """Read any model of the ComBat family written by ``save`` (ComBat or LongComBat)."""
    from surfharm.harmonize.base import get

    _, meta = load_state(path)
    method = meta.get("method")
    cls = get(method) if method else None
    if cls is None or not issubclass(cls, ComBat):
        raise ValueError(f"{path} holds a {method!r} model, not one of the ComBat family")
    return cls.load(path)
