"""Simulated multi-site cohorts with known truth: :func:`simulate_cohort`.

Every scan is built in two steps, and both results are returned row by row:

1. the site-free ("true") map of the subject at that age (:mod:`surfharm.simulate.anatomy`): real
   fsaverage5 base thickness + a smooth individual deviation + sex effect + age effect (adult
   thinning or infant growth);
2. the scan of that map by the scanner of its site (:mod:`surfharm.simulate.sites`).

Randomness is drawn from streams seeded by ``(seed, role)``: the site effects do not change when the
number of subjects changes, and the same config and seed always give the same cohort.

Simulation runs at ``min(level, 5)`` (the base anatomy is fsaverage5); levels 6-7 are reached by
parent averaging through :func:`spherical_ops.upsample_parents`, and the per-vertex scan noise is
added at the final level.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from spherical_ops import icosphere
from spherical_ops.mesh import check_level
from surfharm.atlas import fsaverage_cortex_mask
from surfharm.hemispheres import hemi_name
from surfharm.simulate import anatomy
from surfharm.simulate.fields import gaussian_smoother, smooth_random_fields
from surfharm.simulate.sites import SiteEffect, SiteMaps, apply_site_effect, draw_site_maps

MODES = ("adult", "infant")
#: Planned infant visits (months); each infant attends ``n_sessions`` of them, with +-2 weeks jitter.
INFANT_VISITS_MONTHS = (1.0, 3.0, 6.0, 9.0, 12.0, 18.0, 24.0)
_ROLE_ANATOMY, _ROLE_SITES, _ROLE_SUBJECTS, _ROLE_NOISE, _ROLE_TRAVEL, _ROLE_AT_SITE = range(6)


@dataclass(frozen=True)
class SiteSpec:
    """One site: its name, how many subjects it scans, their ages and its scanner effect.

    ``age_range`` is in years (adult mode) or months (infant mode, ages at the first visit are not
    used: infants follow the visit schedule); None uses the config's ``age_range``.
    """

    name: str
    n_subjects: int
    effect: SiteEffect = field(default_factory=SiteEffect)
    age_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class ScannerChange:
    """A scanner replaced mid-study: scans of ``site`` dated after ``at_fraction`` of the study
    period are acquired on ``new_site`` (a new batch with its own ``effect``)."""

    site: str
    new_site: str
    effect: SiteEffect
    at_fraction: float = 0.5


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated cohort (lengths in mm, FWHM on a 100 mm sphere).

    Attributes
    ----------
    mode : str
        ``"adult"`` (ages in years, slow thinning) or ``"infant"`` (0-24 months, growth curve).
    level : int
        icosahedral level of the maps (3..7; 5 = fsaverage5).
    hemi : str
        ``"lh"`` or ``"rh"`` (``"left"``/``"right"`` accepted).
    sites : tuple[SiteSpec, ...]
        the sites (:class:`SiteSpec`).
    n_sessions : int
        scans per subject (longitudinal when > 1).
    session_interval_years : float
        adult mode: years between sessions.
    n_traveling : int
        extra subjects scanned once at every site (and on a changed scanner), same age.
    age_range : tuple[float, float]
        default age range, years (adult) or months (infant, traveling subjects' ages).
    scanner_change : ScannerChange or None
        optional :class:`ScannerChange` (longitudinal studies).
    subject_global_sd, subject_coarse_sd, subject_fine_sd : float
        individual deviation (mm): a whole-cortex offset, a smooth field of FWHM
        ``subject_coarse_fwhm_mm`` and a finer one of FWHM ``subject_fine_fwhm_mm`` (total vertex SD
        about 0.23 mm with the defaults).
    age_slope, age_slope_sd : float
        adult thinning (mm/year) and its spatial SD.
    sex_effect, sex_effect_sd : float
        female minus male thickness (mm) and its spatial SD.
    growth_tau_months, growth_tau_sd, birth_fraction : float
        infant growth curve (see anatomy).
    seed : int
        seed of every random stream.
    """

    mode: str = "adult"
    level: int = 5
    hemi: str = "lh"
    sites: tuple[SiteSpec, ...] = ()
    n_sessions: int = 1
    session_interval_years: float = 2.0
    n_traveling: int = 8
    age_range: tuple[float, float] = (20.0, 80.0)
    scanner_change: ScannerChange | None = None
    subject_global_sd: float = 0.08
    subject_coarse_sd: float = 0.15
    subject_coarse_fwhm_mm: float = 30.0
    subject_fine_sd: float = 0.15
    subject_fine_fwhm_mm: float = 10.0
    age_slope: float = -0.007
    age_slope_sd: float = 0.002
    sex_effect: float = 0.03
    sex_effect_sd: float = 0.02
    growth_tau_months: float = 4.5
    growth_tau_sd: float = 0.8
    birth_fraction: float = 0.73
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (written next to benchmark results)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SimulationConfig":
        """Build from a plain dict (a config file); unknown keys are refused by name."""
        values = dict(values)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown simulation option(s) {unknown}; expected some of {sorted(known)}")
        if "sites" in values:
            values["sites"] = tuple(_site_from_dict(s) for s in values["sites"])
        if values.get("scanner_change") is not None:
            change = dict(values["scanner_change"])
            change["effect"] = SiteEffect.from_dict(change.get("effect", {}))
            values["scanner_change"] = ScannerChange(**change)
        for key in ("age_range",):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes) -> "SimulationConfig":
        return replace(self, **changes)

    def check(self) -> None:
        """Raise ValueError naming the option and value when the config cannot be simulated."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_level(self.level)
        if self.level < 3:
            raise ValueError(f"level must be 3..7 (642 to 163842 vertices), got {self.level}")
        if len(self.sites) < 2:
            raise ValueError(f"a multi-site cohort needs at least 2 sites, got {len(self.sites)}")
        names = [s.name for s in self.sites] + ([self.scanner_change.new_site] if self.scanner_change else [])
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        for spec in self.sites:
            if spec.n_subjects < 2:
                raise ValueError(f"site {spec.name!r}: n_subjects must be >= 2, got {spec.n_subjects}")
            spec.effect.check(spec.name)
        if self.n_sessions < 1:
            raise ValueError(f"n_sessions must be >= 1, got {self.n_sessions}")
        if self.mode == "infant" and self.n_sessions > len(INFANT_VISITS_MONTHS):
            raise ValueError(f"infant mode has {len(INFANT_VISITS_MONTHS)} planned visits; "
                             f"n_sessions={self.n_sessions}")
        if self.n_traveling < 0:
            raise ValueError(f"n_traveling must be >= 0, got {self.n_traveling}")
        if self.scanner_change is not None:
            change = self.scanner_change
            if change.site not in [s.name for s in self.sites]:
                raise ValueError(f"scanner_change.site {change.site!r} is not one of the sites "
                                 f"{[s.name for s in self.sites]}")
            if not 0.0 < change.at_fraction < 1.0:
                raise ValueError(f"scanner_change.at_fraction must be in (0, 1), got {change.at_fraction}")
            change.effect.check(change.new_site)


def _site_from_dict(values: dict) -> SiteSpec:
    values = dict(values)
    values["effect"] = SiteEffect.from_dict(values.get("effect", {}))
    if values.get("age_range") is not None:
        values["age_range"] = tuple(values["age_range"])
    return SiteSpec(**values)


@dataclass
class SimulatedCohort:
    """A simulated cohort and its ground truth, aligned row by row.

    Attributes
    ----------
    maps : ndarray
        (n_scans, V) float32, observed thickness (mm), NaN outside cortex.
    truth : ndarray
        (n_scans, V) float32, the same scans without any site effect.
    table : DataFrame
        one row per scan: ``subject``, ``session``, ``site``, ``age`` (years), ``sex``
        (``"F"``/``"M"``), ``female`` (0/1), ``traveling`` (bool), ``scan_date`` (months since
        the study began); infant mode adds ``age_months`` and ``log_age`` (log of age in years).
    mask : ndarray
        (V,) bool, cortex (False on the medial wall).
    level, hemi
        mesh of the maps (hemi ``"lh"`` or ``"rh"``).
    site_maps : dict[str, SiteMaps]
        each site's fixed additive/multiplicative fields (at level ``min(level, 5)``).
    config : SimulationConfig
        the :class:`SimulationConfig` that produced it.
    """

    maps: np.ndarray
    truth: np.ndarray
    table: pd.DataFrame
    mask: np.ndarray
    level: int
    hemi: str
    site_maps: dict[str, SiteMaps]
    config: SimulationConfig

    @property
    def sites(self) -> np.ndarray:
        return self.table["site"].to_numpy()

    @property
    def traveling(self) -> np.ndarray:
        """(n_scans,) bool: rows that belong to traveling subjects."""
        return self.table["traveling"].to_numpy(dtype=bool)

    @property
    def traveling_index(self) -> pd.DataFrame:
        """Traveling scans as a (subject x site) table of row numbers into ``maps``."""
        rows = self.table[self.traveling].reset_index().rename(columns={"index": "row"})
        return rows.pivot(index="subject", columns="site", values="row")

    def truth_at_site(self, site: str) -> np.ndarray:
        """Every scan's site-free map as ``site`` would acquire it: (n_scans, V) float32 mm.

        The site's effect (its fixed fields, blur, saturation and fresh scan noise) applied to
        ``truth`` exactly as the simulation applies it to that site's own scans: what a harmonizer
        that maps all scans to ``site``'s appearance aims at (e.g. the age effect it can keep).
        """
        effects = {s.name: s.effect for s in self.config.sites}
        if self.config.scanner_change is not None:
            effects[self.config.scanner_change.new_site] = self.config.scanner_change.effect
        if site not in effects:
            raise ValueError(f"site {site!r} is not in this simulation; its sites are {sorted(effects)}")
        effect = effects[site]
        sim_level = min(self.level, 5)
        sphere = icosphere(sim_level)
        n = sphere.vertices.shape[0]
        mask = fsaverage_cortex_mask(self.hemi, sim_level)
        rng = np.random.default_rng([self.config.seed, _ROLE_AT_SITE, sorted(effects).index(site)])
        # Maps above level 5 are level 5 upsampled, whose first vertices are level 5 itself (nesting).
        truth = np.asarray(self.truth[:, :n], np.float64)
        # Above level 5 a few level-5 cortex vertices may be NaN (the finer mask): 0 like the medial wall.
        truth = np.where(np.isfinite(truth), truth, 0.0)
        scan_effect = effect if self.level <= 5 else replace(effect, noise_sd_mm=0.0)
        out = apply_site_effect(truth, scan_effect, self.site_maps[site], mask, sphere.vertices, rng)
        if self.level > 5:
            out = anatomy.upsample_maps(out, 5, self.level)
            out = out + effect.noise_sd_mm * rng.standard_normal(out.shape)
            out[:, ~self.mask] = np.nan
        return out.astype(np.float32)

    def to_cohort(self):
        """The observed maps as a :class:`surfharm.cohort.Cohort` (maps + table)."""
        from surfharm.cohort import Cohort

        return Cohort(self.maps, self.table, hemi=hemi_name(self.hemi), measure="thickness")


def simulate_cohort(config: SimulationConfig) -> SimulatedCohort:
    """Simulate the cohort described by ``config`` (see the module docstring)."""
    config.check()
    sim_level = min(config.level, 5)
    sphere = icosphere(sim_level)
    vertices = sphere.vertices
    mask = fsaverage_cortex_mask(config.hemi, sim_level)
    biology = _draw_biology(config, vertices, sim_level)
    table = _draw_scans(config)

    subj_rng = np.random.default_rng([config.seed, _ROLE_SUBJECTS])
    subjects = table.drop_duplicates("subject")["subject"].to_numpy()
    deviation = _draw_deviations(config, vertices, len(subjects), subj_rng)
    subject_row = pd.Index(subjects).get_indexer(table["subject"])
    truth = _true_maps(config, biology, deviation[subject_row], table)
    truth[:, ~mask] = np.nan

    observed = np.empty_like(truth)
    effects = {s.name: s.effect for s in config.sites}
    if config.scanner_change is not None:
        effects[config.scanner_change.new_site] = config.scanner_change.effect
    site_maps = {}
    noise_rng = np.random.default_rng([config.seed, _ROLE_NOISE])
    add_noise_now = config.level <= 5
    for i, (name, effect) in enumerate(effects.items()):
        site_maps[name] = draw_site_maps(effect, vertices, np.random.default_rng([config.seed, _ROLE_SITES, i]))
        rows = np.nonzero(table["site"].to_numpy() == name)[0]
        scan_effect = effect if add_noise_now else replace(effect, noise_sd_mm=0.0)
        observed[rows] = apply_site_effect(truth[rows], scan_effect, site_maps[name], mask, vertices, noise_rng)

    final_mask = fsaverage_cortex_mask(config.hemi, config.level)
    if config.level > 5:
        truth = anatomy.upsample_maps(truth, 5, config.level)
        observed = anatomy.upsample_maps(observed, 5, config.level)
        noise_sd = table["site"].map({k: e.noise_sd_mm for k, e in effects.items()}).to_numpy(dtype=np.float64)
        observed = observed + noise_sd[:, None] * noise_rng.standard_normal(observed.shape)
        truth[:, ~final_mask] = np.nan
        observed[:, ~final_mask] = np.nan
    return SimulatedCohort(maps=observed.astype(np.float32), truth=truth.astype(np.float32), table=table,
                           mask=final_mask, level=config.level, hemi=hemi_name(config.hemi), site_maps=site_maps,
                           config=config)


# -- the pieces -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Biology:
    base: np.ndarray          # (V,) mm
    age_slope: np.ndarray     # (V,) mm/year (adult)
    sex_effect: np.ndarray    # (V,) mm, female - male
    growth_tau: np.ndarray    # (V,) months (infant)


def _draw_biology(config: SimulationConfig, vertices: np.ndarray, level: int) -> _Biology:
    rng = np.random.default_rng([config.seed, _ROLE_ANATOMY])
    smoother = gaussian_smoother(vertices, 40.0)
    slope_field, sex_field, tau_field = smooth_random_fields(smoother, 3, rng)
    base = anatomy.to_level(np.asarray(anatomy.fsaverage5_thickness(config.hemi)), level)
    return _Biology(base=base,
                    age_slope=config.age_slope + config.age_slope_sd * slope_field,
                    sex_effect=config.sex_effect + config.sex_effect_sd * sex_field,
                    growth_tau=np.clip(config.growth_tau_months + config.growth_tau_sd * tau_field, 1.5, None))


def _draw_deviations(config: SimulationConfig, vertices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    coarse = smooth_random_fields(gaussian_smoother(vertices, config.subject_coarse_fwhm_mm), n, rng)
    fine = smooth_random_fields(gaussian_smoother(vertices, config.subject_fine_fwhm_mm), n, rng)
    offset = rng.standard_normal((n, 1))
    return config.subject_global_sd * offset + config.subject_coarse_sd * coarse + config.subject_fine_sd * fine


def _true_maps(config: SimulationConfig, bio: _Biology, deviation: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    female = table["female"].to_numpy(dtype=np.float64)[:, None]
    anatomy_now = bio.base[None, :] + deviation + female * bio.sex_effect[None, :]
    if config.mode == "adult":
        age = table["age"].to_numpy(dtype=np.float64)[:, None]
        return anatomy_now + (age - anatomy.ADULT_REFERENCE_AGE) * bio.age_slope[None, :]
    growth = anatomy.infant_growth(table["age_months"].to_numpy(), bio.growth_tau, config.birth_fraction)
    return anatomy_now * growth


def _draw_scans(config: SimulationConfig) -> pd.DataFrame:
    """The scan table: who is scanned where, when and at what age."""
    rng = np.random.default_rng([config.seed, _ROLE_SUBJECTS, 1])
    rows = []
    for spec in config.sites:
        low, high = spec.age_range or config.age_range
        for k in range(spec.n_subjects):
            subject = f"{spec.name}-sub{k + 1:03d}"
            female = int(rng.random() < 0.5)
            start_date = rng.uniform(0.0, 24.0)  # months after the study began
            for session, age in enumerate(_session_ages(config, low, high, rng)):
                date = start_date + (age if config.mode == "infant" else 12.0 * session * config.session_interval_years)
                rows.append((subject, f"ses-{session + 1}", spec.name, age, female, False, date))
    low, high = config.age_range
    trav_rng = np.random.default_rng([config.seed, _ROLE_TRAVEL])
    scanners = [s.name for s in config.sites] + ([config.scanner_change.new_site] if config.scanner_change else [])
    for k in range(config.n_traveling):
        age = trav_rng.uniform(low, high)
        female = int(trav_rng.random() < 0.5)
        for name in scanners:
            rows.append((f"travel-sub{k + 1:03d}", f"ses-travel{name}", name, age, female, True, np.nan))
    table = pd.DataFrame(rows, columns=["subject", "session", "site", "age", "female", "traveling", "scan_date"])
    table["sex"] = np.where(table["female"] == 1, "F", "M")
    if config.mode == "infant":
        table["age_months"] = table["age"]
        table["age"] = table["age_months"] / 12.0
        table["log_age"] = np.log(table["age"])
    if config.scanner_change is not None:
        change = config.scanner_change
        dates = table["scan_date"].to_numpy()
        cut = np.nanmin(dates) + change.at_fraction * (np.nanmax(dates) - np.nanmin(dates))
        moved = (table["site"] == change.site) & ~table["traveling"] & (table["scan_date"] >= cut)
        table.loc[moved, "site"] = change.new_site
    columns = ["subject", "session", "site", "age", "sex", "female", "traveling", "scan_date"]
    columns += [c for c in ("age_months", "log_age") if c in table]
    return table[columns]


def _session_ages(config: SimulationConfig, low: float, high: float, rng: np.random.Generator) -> list[float]:
    if config.mode == "infant":
        visits = np.sort(rng.choice(len(INFANT_VISITS_MONTHS), size=config.n_sessions, replace=False))
        return [max(0.25, INFANT_VISITS_MONTHS[v] + rng.uniform(-0.5, 0.5)) for v in visits]
    first = rng.uniform(low, high)
    return [first + s * config.session_interval_years for s in range(config.n_sessions)]
