"""Scanner (site) effects applied to site-free thickness maps.

A scan of a site-free map ``t`` (mm) at a site is::

    y = A(v) + S(v) * saturate(blur(t)) + noise

* ``blur``: extra Gaussian smoothing of FWHM ``smoothing_fwhm_mm`` (a lower effective resolution);
* ``saturate``: ``c * tanh(t / c)`` with ceiling ``c = saturation_mm`` (thick cortex is
  under-estimated more than thin cortex, a non-linear effect a location/scale model cannot undo);
* ``S(v) = scale_mean + scale_sd * field``: smooth multiplicative effect;
* ``A(v) = additive_mean + additive_sd * field``: smooth additive effect (mm);
* ``noise``: independent per vertex and scan, standard deviation ``noise_sd_mm``;
* ``covariance`` (optional): ``sum_r c_r phi_r(v)`` with ``covariance_rank`` smooth fields ``phi_r``
  (FWHM ``covariance_fwhm_mm``, drawn once per site) and scan coefficients ``c_r ~ N(0,
  covariance_sd_mm^2)``: a low-rank, spatially smooth random component that changes the site's
  covariance between vertices (a scanner effect that location/scale corrections do not remove).

The fields are smooth Gaussian random fields (:func:`surfharm.simulate.fields.smooth_random_fields`)
drawn once per site, so every scan of a site carries the same spatial pattern.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import scipy.sparse as sp

from surfharm.simulate.fields import gaussian_smoother, smooth_random_fields


@dataclass(frozen=True)
class SiteEffect:
    """The scanner effect of one site (all lengths in mm on a 100 mm sphere)."""

    additive_mean: float = 0.0
    additive_sd: float = 0.0
    scale_mean: float = 1.0
    scale_sd: float = 0.0
    field_fwhm_mm: float = 30.0
    saturation_mm: float | None = None
    smoothing_fwhm_mm: float = 0.0
    noise_sd_mm: float = 0.05
    covariance_rank: int = 0
    covariance_sd_mm: float = 0.0
    covariance_fwhm_mm: float = 20.0

    @classmethod
    def from_dict(cls, values: dict) -> "SiteEffect":
        """Build from a dict (config files); unknown keys are refused with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown site-effect option(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, site: str) -> None:
        """Raise ValueError naming the site and the value when an option is out of range."""
        for name in ("additive_sd", "scale_sd", "field_fwhm_mm", "smoothing_fwhm_mm", "noise_sd_mm",
                     "covariance_rank", "covariance_sd_mm", "covariance_fwhm_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"site {site!r}: {name} must be >= 0, got {getattr(self, name)}")
        if self.scale_mean <= 0:
            raise ValueError(f"site {site!r}: scale_mean must be > 0, got {self.scale_mean}")
        if self.saturation_mm is not None and self.saturation_mm <= 0:
            raise ValueError(f"site {site!r}: saturation_mm must be > 0 or None, got {self.saturation_mm}")


@dataclass(frozen=True)
class SiteMaps:
    """The fixed spatial part of one site's effect: additive (V,) mm and multiplicative (V,) factor."""

    additive: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None = None    # (covariance_rank, V) smooth fields of the random component


def draw_site_maps(effect: SiteEffect, vertices: np.ndarray, rng: np.random.Generator) -> SiteMaps:
    """Draw the additive and multiplicative fields of one site on a mesh with ``vertices`` (V, 3)."""
    smoother = gaussian_smoother(vertices, effect.field_fwhm_mm)
    add_field, scale_field = smooth_random_fields(smoother, 2, rng)
    components = None
    if effect.covariance_rank > 0:   # drawn after the other fields: sites without it keep their draws
        components = smooth_random_fields(gaussian_smoother(vertices, effect.covariance_fwhm_mm),
                                          int(effect.covariance_rank), rng)
    return SiteMaps(additive=effect.additive_mean + effect.additive_sd * add_field,
                    scale=effect.scale_mean + effect.scale_sd * scale_field, components=components)


def apply_site_effect(truth: np.ndarray, effect: SiteEffect, maps: SiteMaps, mask: np.ndarray,
                      vertices: np.ndarray, rng: np.random.Generator,
                      blur: sp.spmatrix | None = None) -> np.ndarray:
    """Scan site-free maps ``truth`` (n, V) at a site; returns (n, V) float64, NaN outside ``mask``.

    ``blur`` may pass a precomputed masked smoother (:func:`gaussian_smoother` with ``mask``) to
    avoid rebuilding it; otherwise one is built when ``effect.smoothing_fwhm_mm > 0``.
    """
    out = np.where(mask, truth, 0.0)
    if effect.smoothing_fwhm_mm > 0:
        if blur is None:
            blur = gaussian_smoother(vertices, effect.smoothing_fwhm_mm, mask=mask)
        out = (blur @ out.T).T
    if effect.saturation_mm is not None:
        out = effect.saturation_mm * np.tanh(out / effect.saturation_mm)
    out = maps.additive + maps.scale * out
    if maps.components is not None and effect.covariance_sd_mm > 0:
        coef = effect.covariance_sd_mm * rng.standard_normal((out.shape[0], maps.components.shape[0]))
        out = out + coef @ maps.components
    if effect.noise_sd_mm > 0:
        out = out + effect.noise_sd_mm * rng.standard_normal(out.shape)
    return np.where(mask, out, np.nan)
