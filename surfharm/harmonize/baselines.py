"""Simple baseline harmonizers, the yardstick every method must beat.

All four ignore covariates (that is what makes them baselines: with age confounded with site they
remove biology along with the site effect). Each maps a scan ``x`` (n_features,) of site ``s`` to

* ``raw``:            ``x`` (identity; the "before" of every comparison);
* ``global-scaling``: ``x * m_ref / m_s`` where ``m`` is one scalar per site, the mean over all
  features and scans (ratio scaling);
* ``mean-shift``:     ``x - mu_s + mu_ref`` per feature;
* ``mean-std``:       ``(x - mu_s) / sd_s * sd_ref + mu_ref`` per feature.

The reference (``mu_ref``, ``sd_ref``, ``m_ref``) is the site ``reference_site`` when given (its scans
are then returned unchanged), otherwise the pooled training data: the grand mean over all scans and
the pooled within-site standard deviation ``sqrt(sum_s (n_s - 1) sd_s^2 / (n - k))``.
NaN values are ignored in the estimates and stay NaN.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from surfharm.harmonize import _location_scale as ls
from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    StateCheck,
    check_data,
    check_n_features,
    register,
    require_sites,
)


class _SiteLocationScale(Harmonizer):
    """Shared machinery: per-site location/scale estimates, a reference, and the map between them."""

    per_feature = True   # False: one scalar per site (global scaling)
    use_scale = False    # match standard deviations as well as means
    multiplicative = False

    side_data = ()        # covariates are not used: that is what makes these baselines
    fitted_attribute = "loc_"

    def __init__(self, *, reference_site=None):
        self.reference_site = reference_site

    def fit(self, X, y=None, *, sites=None) -> "_SiteLocationScale":
        """Estimate each site's location (and scale) from ``X`` (n_scans, n_features)."""
        X = check_data(X, dtype=np.float64)
        sites = require_sites(sites, X.shape[0], f"{type(self).__name__}.fit")
        labels, index = np.unique(sites.astype(str), return_inverse=True)
        site_rows = [np.flatnonzero(index == k) for k in range(len(labels))]
        counts = np.array([len(rows) for rows in site_rows])
        if self.use_scale:
            for label, rows in zip(labels, site_rows):
                if len(rows) < 2:
                    raise HarmonizerInputError(f"site {label!r} has {len(rows)} scan; {self.registry_name} "
                                               "needs at least 2 scans per site")
        with np.errstate(invalid="ignore", divide="ignore"):
            means, stds = ls.site_means_stds(X, site_rows, ddof=1)
        if self.per_feature:
            self.loc_ = means
        else:
            with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
                self.loc_ = np.stack([np.full(X.shape[1], np.nanmean(X[rows])) for rows in site_rows])
        self.scale_ = stds if self.use_scale else np.ones((len(site_rows), X.shape[1]))
        self.sites_ = [str(s) for s in labels]
        self.adapted_sites_ = []
        self.n_features_in_ = X.shape[1]
        self.ref_loc_, self.ref_scale_ = self._reference(X, counts)
        return self

    def _reference(self, X: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.reference_site is not None:
            ref = str(self.reference_site)
            if ref not in self.sites_:
                raise HarmonizerInputError(f"reference_site {ref!r} is not among the sites {self.sites_}")
            k = self.sites_.index(ref)
            return self.loc_[k].copy(), self.scale_[k].copy()
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            loc = np.nanmean(X, axis=0) if self.per_feature else np.full(X.shape[1], np.nanmean(X))
            scale = ls.pooled_within_site_std(self.scale_, counts) if self.use_scale else np.ones(X.shape[1])
        return loc, scale

    supports_adapt = True

    def adapt(self, X, *, sites=None, replace: bool = False) -> "_SiteLocationScale":
        """Add the sites of ``X`` (scanners not seen in training) from their own scans; returns self.

        The reference (pooled or ``reference_site``) is held fixed, so the training scans' output does
        not change; each new site's location (and scale) is estimated as in ``fit``. Needs 2 scans per
        new site for mean-std, 1 otherwise; a known site is refused unless ``replace``.
        """
        from surfharm.harmonize._adapt import new_site_rows

        self.check_is_fitted()
        X = check_data(X, dtype=np.float64)
        check_n_features(self, X)
        needed = 2 if self.use_scale else 1
        groups = new_site_rows(self, sites, X.shape[0], replace=replace, needed=needed, what=self.registry_name)
        site_rows = [rows for _, rows in groups]
        with np.errstate(invalid="ignore", divide="ignore"):
            means, stds = ls.site_means_stds(X, site_rows, ddof=1)
        if not self.per_feature:
            with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
                means = np.stack([np.full(X.shape[1], np.nanmean(X[rows])) for rows in site_rows])
        scales = stds if self.use_scale else np.ones_like(means)
        adapted = list(getattr(self, "adapted_sites_", []) or [])
        for (label, _), loc, scale in zip(groups, means, scales):
            label = str(label)
            if label in self.sites_:
                k = self.sites_.index(label)
                self.loc_[k], self.scale_[k] = loc, scale
            else:
                self.sites_ = [*self.sites_, label]
                self.loc_ = np.vstack([self.loc_, loc[None]])
                self.scale_ = np.vstack([self.scale_, scale[None]])
            if label not in adapted:
                adapted.append(label)
        self.adapted_sites_ = adapted
        return self

    def transform(self, X, *, sites=None) -> np.ndarray:
        """Map every scan onto the reference; same shape and NaN pattern as ``X``."""
        self.check_is_fitted()
        X = check_data(X)
        check_n_features(self, X)
        sites = require_sites(sites, X.shape[0], f"{type(self).__name__}.transform").astype(str)
        unknown = sorted(set(sites) - set(self.sites_))
        if unknown:
            raise HarmonizerInputError(f"site(s) {unknown} were not seen in fit; known sites: {self.sites_}")
        k = np.array([self.sites_.index(s) for s in sites])
        loc, scale = self.loc_[k], self.scale_[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.multiplicative:
                out = X * (self.ref_loc_ / loc)
            else:
                safe_scale = np.where(scale > 0, scale, 1.0)
                ref_scale = np.where(scale > 0, self.ref_scale_, 1.0)
                out = ls.match_location_scale(X, loc, safe_scale, self.ref_loc_, ref_scale)
        return out.astype(X.dtype, copy=False)

    def _get_state(self):
        return ({"loc": self.loc_, "scale": self.scale_, "ref_loc": self.ref_loc_, "ref_scale": self.ref_scale_},
                {"sites": self.sites_, "adapted_sites": list(getattr(self, "adapted_sites_", []))})

    def _set_state(self, arrays, meta) -> None:
        self.sites_ = list(meta["sites"])
        self.adapted_sites_ = list(meta.get("adapted_sites", []))
        self.loc_, self.scale_ = arrays["loc"], arrays["scale"]
        self.ref_loc_, self.ref_scale_ = arrays["ref_loc"], arrays["ref_scale"]
        self.n_features_in_ = self.loc_.shape[1]

    def _check_state(self, check: StateCheck) -> None:
        shape = (len(self.sites_), self.n_features_in_)
        for name in ("loc", "scale"):
            check.shape(name, getattr(self, name + "_"), shape)
        for name in ("ref_loc", "ref_scale"):
            check.shape(name, getattr(self, name + "_"), (self.n_features_in_,))
        # All-NaN features stay NaN by design; elsewhere a location or scale must be a number.
        observed = np.isfinite(self.loc_).all(axis=0)
        check.finite("ref_loc", self.ref_loc_, observed)
        check.finite("scale", self.scale_, np.broadcast_to(observed, shape) & ~np.isnan(self.scale_))


@register("raw")
class Raw(_SiteLocationScale):
    """Identity: returns the data unchanged (still checks sites and features like every method)."""

    def transform(self, X, *, sites=None) -> np.ndarray:
        super().transform(X, sites=sites)
        return check_data(X).copy()


@register("global-scaling")
class GlobalScaling(_SiteLocationScale):
    """Ratio scaling: one factor per site, reference global mean over site global mean."""

    per_feature = False
    multiplicative = True


@register("mean-shift")
class MeanShift(_SiteLocationScale):
    """Per-feature shift of each site's mean onto the reference mean."""


@register("mean-std")
class MeanStd(_SiteLocationScale):
    """Per-feature matching of each site's mean and standard deviation to the reference."""

    use_scale = True


@contextlib.contextmanager
def _quiet_nan_warnings():
    """Silence numpy's 'Mean of empty slice' for all-NaN features (they stay NaN, by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
