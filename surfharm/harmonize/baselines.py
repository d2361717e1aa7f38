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

from surfharm.harmonize.base import (
    Harmonizer,
    HarmonizerInputError,
    check_data,
    check_sites,
    load_state,
    register,
    save_state,
)


class _SiteLocationScale(Harmonizer):
    """Shared machinery: per-site location/scale estimates, a reference, and the map between them."""

    per_feature = True   # False: one scalar per site (global scaling)
    use_scale = False    # match standard deviations as well as means
    multiplicative = False

    def __init__(self, reference_site=None):
        self.reference_site = reference_site

    def fit(self, X, sites, covariates=None, **kwargs) -> "_SiteLocationScale":
        """Estimate each site's location (and scale) from ``X`` (n_scans, n_features)."""
        X = check_data(X, dtype=np.float64)
        sites = check_sites(sites, X.shape[0])
        labels, index = np.unique(sites.astype(str), return_inverse=True)
        locs, scales, counts = [], [], []
        for k, label in enumerate(labels):
            rows = X[index == k]
            if rows.shape[0] < 2 and self.use_scale:
                raise HarmonizerInputError(
                    f"site {label!r} has {rows.shape[0]} scan; {self.registry_name} needs at least 2 scans per site")
            with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan_warnings():
                loc = np.nanmean(rows, axis=0) if self.per_feature else np.full(X.shape[1], np.nanmean(rows))
                scale = np.nanstd(rows, axis=0, ddof=1) if self.use_scale else np.ones(X.shape[1])
            locs.append(loc)
            scales.append(scale)
            counts.append(rows.shape[0])
        self.sites_ = [str(s) for s in labels]
        self.n_features_in_ = X.shape[1]
        self.loc_ = np.stack(locs)
        self.scale_ = np.stack(scales)
        self.ref_loc_, self.ref_scale_ = self._reference(X, np.asarray(counts))
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
            dof = (counts - 1)[:, None]
            scale = np.sqrt(np.nansum(dof * self.scale_ ** 2, axis=0) / max(dof.sum(), 1)) if self.use_scale \
                else np.ones(X.shape[1])
        return loc, scale

    def transform(self, X, sites, covariates=None, **kwargs) -> np.ndarray:
        """Map every scan onto the reference; same shape and NaN pattern as ``X``."""
        self.check_is_fitted("loc_")
        X = check_data(X)
        if X.shape[1] != self.n_features_in_:
            raise HarmonizerInputError(f"X has {X.shape[1]} features; this harmonizer was fitted on {self.n_features_in_}")
        sites = check_sites(sites, X.shape[0]).astype(str)
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
                out = (X - loc) / safe_scale * ref_scale + self.ref_loc_
        return out.astype(X.dtype, copy=False)

    def save(self, path):
        """Write the fitted state to ``path`` (.npz + JSON metadata, no pickle)."""
        self.check_is_fitted("loc_")
        return save_state(path, {"loc": self.loc_, "scale": self.scale_, "ref_loc": self.ref_loc_,
                                 "ref_scale": self.ref_scale_},
                          {"method": self.registry_name, "params": self.get_params(), "sites": self.sites_})

    @classmethod
    def load(cls, path):
        """Read a harmonizer written by :meth:`save`."""
        arrays, meta = load_state(path)
        if meta.get("method") != cls.registry_name:
            raise ValueError(f"{path} holds a {meta.get('method')!r} model, not {cls.registry_name!r}")
        self = cls(**meta["params"])
        self.sites_ = list(meta["sites"])
        self.loc_, self.scale_ = arrays["loc"], arrays["scale"]
        self.ref_loc_, self.ref_scale_ = arrays["ref_loc"], arrays["ref_scale"]
        self.n_features_in_ = self.loc_.shape[1]
        return self


@register("raw")
class Raw(_SiteLocationScale):
    """Identity: returns the data unchanged (still checks sites and features like every method)."""

    def transform(self, X, sites, covariates=None, **kwargs) -> np.ndarray:
        super().transform(X, sites)
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
