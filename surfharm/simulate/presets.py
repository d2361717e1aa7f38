"""Named simulation presets (``surfharm benchmark --scenario NAME``).

Site effects are of the size reported between scanners for vertex-wise FreeSurfer thickness
(site mean differences of 0.05-0.2 mm, scale differences of a few percent, scan noise ~0.05 mm
after 10 mm smoothing).

* ``adult``: 4 sites x 50 adults (20-80 years), smooth additive + multiplicative effects, 8
  traveling subjects; the default scenario and the one the quality bars are measured on.
* ``adult-nonlinear``: as ``adult`` with saturating (non-linear) effects at two sites.
* ``adult-resolution``: as ``adult`` with extra smoothing (lower effective resolution) at two sites.
* ``adult-confounded``: as ``adult`` but one site scans only older subjects (age confounded with site).
* ``infant``: 3 sites x 30 infants, 3 sessions each between 0 and 24 months, site A's scanner
  replaced mid-study (A -> A2).
* ``quick``: a small ``adult`` (level 4, 3 sites x 40) for a benchmark in about a minute.
* ``adult-covariance``: as ``adult`` at level 4, every site adding a rank-3 spatially smooth random
  component (FWHM 20 mm) of its own patterns and size (SD 0.04-0.16 mm per component): sites differ
  in covariance between vertices as well as in location and scale.
"""
from __future__ import annotations

from collections.abc import Callable

from surfharm.simulate.generate import ScannerChange, SimulationConfig, SiteSpec
from surfharm.simulate.sites import SiteEffect

_ADULT_EFFECTS = (
    SiteEffect(additive_mean=0.10, additive_sd=0.05, scale_mean=1.00, scale_sd=0.02, noise_sd_mm=0.05),
    SiteEffect(additive_mean=-0.08, additive_sd=0.04, scale_mean=1.06, scale_sd=0.03, noise_sd_mm=0.04),
    SiteEffect(additive_mean=0.00, additive_sd=0.08, scale_mean=0.94, scale_sd=0.02, noise_sd_mm=0.06),
    SiteEffect(additive_mean=0.05, additive_sd=0.06, scale_mean=1.03, scale_sd=0.03, noise_sd_mm=0.05),
)
_SITE_NAMES = ("A", "B", "C", "D")


def _adult(n_per_site: int = 50, level: int = 5, n_sites: int = 4, **overrides) -> SimulationConfig:
    sites = tuple(SiteSpec(_SITE_NAMES[i], n_per_site, _ADULT_EFFECTS[i]) for i in range(n_sites))
    return SimulationConfig(mode="adult", level=level, sites=sites, **overrides)


def adult(**overrides) -> SimulationConfig:
    """4 sites x 50 adults (20-80 y), smooth additive + multiplicative site effects, 8 traveling subjects."""
    return _adult(**overrides)


def adult_nonlinear(**overrides) -> SimulationConfig:
    """As adult, with saturating (non-linear) site effects at sites A and C."""
    config = _adult(**overrides)
    sites = list(config.sites)
    sites[0] = SiteSpec("A", sites[0].n_subjects, SiteEffect(additive_mean=0.3, saturation_mm=4.0, noise_sd_mm=0.05))
    sites[2] = SiteSpec("C", sites[2].n_subjects, SiteEffect(additive_mean=0.15, saturation_mm=3.5, scale_mean=1.05,
                                                             noise_sd_mm=0.05))
    return config.replace(sites=tuple(sites))


def adult_resolution(**overrides) -> SimulationConfig:
    """As adult, with extra smoothing (FWHM 12 mm: lower effective resolution) at sites B and D."""
    config = _adult(**overrides)
    sites = list(config.sites)
    for i in (1, 3):
        effect = SiteEffect(**{**sites[i].effect.to_dict(), "smoothing_fwhm_mm": 12.0})
        sites[i] = SiteSpec(sites[i].name, sites[i].n_subjects, effect)
    return config.replace(sites=tuple(sites))


def adult_confounded(**overrides) -> SimulationConfig:
    """As adult, but site B scans only older subjects (55-85 y): age confounded with site."""
    config = _adult(**overrides)
    sites = list(config.sites)
    sites[1] = SiteSpec("B", sites[1].n_subjects, sites[1].effect, age_range=(55.0, 85.0))
    return config.replace(sites=tuple(sites))


def infant(n_per_site: int = 30, level: int = 5, **overrides) -> SimulationConfig:
    """3 sites x 30 infants, 3 sessions each in 0-24 months, site A's scanner replaced mid-study (A2)."""
    effects = (
        SiteEffect(additive_mean=0.08, additive_sd=0.05, scale_mean=1.04, scale_sd=0.02, noise_sd_mm=0.05),
        SiteEffect(additive_mean=-0.06, additive_sd=0.05, scale_mean=0.95, scale_sd=0.03, noise_sd_mm=0.05),
        SiteEffect(additive_mean=0.02, additive_sd=0.06, scale_mean=1.02, scale_sd=0.02, noise_sd_mm=0.05),
    )
    sites = tuple(SiteSpec(name, n_per_site, effect) for name, effect in zip("ABC", effects))
    change = ScannerChange(site="A", new_site="A2", at_fraction=0.5,
                           effect=SiteEffect(additive_mean=-0.10, additive_sd=0.05, scale_mean=0.97, scale_sd=0.02,
                                             smoothing_fwhm_mm=6.0, noise_sd_mm=0.04))
    settings = dict(mode="infant", level=level, sites=sites, n_sessions=3, age_range=(6.0, 18.0),
                    scanner_change=change, n_traveling=6)
    settings.update(overrides)
    return SimulationConfig(**settings)


def quick(**overrides) -> SimulationConfig:
    """A small adult cohort (level 4, 3 sites x 40, 6 traveling subjects): about a minute."""
    settings = dict(n_per_site=40, level=4, n_sites=3, n_traveling=6)
    settings.update(overrides)
    return _adult(**settings)


def adult_covariance(level: int = 4, **overrides) -> SimulationConfig:
    """As adult (level 4), plus a rank-3 smooth random component per site of different size: covariance effects."""
    config = _adult(level=level, **overrides)
    sizes = (0.04, 0.12, 0.08, 0.16)
    sites = [SiteSpec(spec.name, spec.n_subjects,
                      SiteEffect(**{**spec.effect.to_dict(), "covariance_rank": 3, "covariance_sd_mm": sizes[i],
                                    "covariance_fwhm_mm": 20.0}), spec.age_range)
             for i, spec in enumerate(config.sites)]
    return config.replace(sites=tuple(sites))


PRESETS: dict[str, Callable[..., SimulationConfig]] = {
    "adult": adult,
    "adult-nonlinear": adult_nonlinear,
    "adult-resolution": adult_resolution,
    "adult-confounded": adult_confounded,
    "infant": infant,
    "quick": quick,
    "adult-covariance": adult_covariance,
}


def preset(name: str, **overrides) -> SimulationConfig:
    """The :class:`SimulationConfig` of preset ``name``; keyword overrides go to the preset
    (``n_per_site``, ``level``, ``n_sites`` for adult presets) or to the config (``seed``, ...)."""
    if name not in PRESETS:
        raise KeyError(f"unknown simulation preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
