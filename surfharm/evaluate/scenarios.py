"""Benchmark scenarios: where the data of a benchmark comes from.

A scenario is registered by name with :func:`register_scenario` and is either

* a *data builder* ``build(**params) -> BenchmarkData``: the common runner
  (:func:`surfharm.evaluate.benchmark.run_benchmark`) fits every method and computes the metrics the
  data allows (traveling-subject scores need ``truth``/``traveling``; SSIM needs a mesh); or
* a *runner* ``run(methods, seed, **params) -> DataFrame`` for data of another kind that scores itself
  (the volumetric scenario: 3-D images, its own metrics); the table it returns is written as it is.

Built in: every simulation preset (:data:`surfharm.simulate.PRESETS`), ``roi-table`` (a user's ROI
table, real data: no ground truth, site-effect and biology metrics only) and ``volumetric``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from spherical_ops import icosphere


@dataclass
class BenchmarkData:
    """Everything a benchmark needs, row-aligned.

    Attributes
    ----------
    name : str
        shown in reports.
    X : ndarray
        (n_scans, n_features) observed maps (vertices or ROIs), NaN = outside cortex.
    table : DataFrame
        one row per scan: ``site``, ``subject``, the covariates and the age column.
    covariate_columns : list[str]
        numeric covariates passed to every harmonizer (biology to keep).
    age_columns : list[str]
        the covariate columns coding age (partial R^2 and slope use them).
    age_column : str
        the column whose value age prediction targets (years).
    sex_column : str or None
        0/1 column (1 = female) for Cohen's d, or None.
    truth : ndarray or None
        (n_scans, n_features) site-free maps, or None (real data).
    truth_at_target : ndarray or None
        (n_scans, n_features) the site-free maps as the target site would acquire
        them (simulations), or None: the best a harmonizer to that site can do.
    traveling : ndarray or None
        (n_scans,) bool, scans of traveling subjects (held out of every fit), or None.
    target_site : str or None
        the site traveling subjects are compared with.
    faces : ndarray or None
        mesh faces (F, 3) of vertex maps (for SSIM), or None.
    mask : ndarray or None
        (n_features,) bool, features inside cortex (SSIM windows), or None.
    config : dict[str, Any]
        JSON-able description written next to the results.
    """

    name: str
    X: np.ndarray
    table: pd.DataFrame
    covariate_columns: list[str]
    age_columns: list[str]
    age_column: str = "age"
    sex_column: str | None = "female"
    truth: np.ndarray | None = None
    truth_at_target: np.ndarray | None = None
    traveling: np.ndarray | None = None
    target_site: str | None = None
    faces: np.ndarray | None = None
    mask: np.ndarray | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError naming the column or shape at fault."""
        if self.X.ndim != 2 or self.X.shape[0] != len(self.table):
            raise ValueError(f"X has shape {self.X.shape} but the table has {len(self.table)} rows")
        needed = ["site", "subject", self.age_column, *self.covariate_columns, *self.age_columns]
        needed += [self.sex_column] if self.sex_column else []
        missing = sorted({c for c in needed if c not in self.table.columns})
        if missing:
            raise ValueError(f"benchmark table lacks column(s) {missing}; columns are {list(self.table.columns)}")
        for name in ("truth", "truth_at_target"):
            value = getattr(self, name)
            if value is not None and value.shape != self.X.shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {self.X.shape}")

    @property
    def study(self) -> np.ndarray:
        """(n_scans,) bool: the scans methods are fitted and scored on (all but traveling scans)."""
        return np.ones(len(self.table), bool) if self.traveling is None else ~self.traveling


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    build: Callable[..., BenchmarkData] | None = None
    run: Callable[..., pd.DataFrame] | None = None


_SCENARIOS: dict[str, Scenario] = {}


def register_scenario(name: str, description: str, *, build=None, run=None) -> Scenario:
    """Register a scenario given by a data builder (``build``) or a self-scoring runner (``run``)."""
    if (build is None) == (run is None):
        raise ValueError(f"scenario {name!r}: give exactly one of build= or run=")
    _SCENARIOS[name] = Scenario(name, description, build, run)
    return _SCENARIOS[name]


def get_scenario(name: str) -> Scenario:
    _register_presets()
    if name not in _SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; available: {', '.join(sorted(_SCENARIOS))}")
    return _SCENARIOS[name]


def available_scenarios() -> dict[str, str]:
    """Scenario name -> one-line description."""
    _register_presets()
    return {name: s.description for name, s in sorted(_SCENARIOS.items())}


# -- simulated cortical thickness ---------------------------------------------------------------------

def simulated_data(config, name: str = "simulated", target_site: str | None = None) -> BenchmarkData:
    """Simulate ``config`` (a :class:`surfharm.simulate.SimulationConfig`) as benchmark data.

    ``target_site`` (default: the first site) is the site traveling subjects are compared with; the
    data also hold every scan's truth as that site would acquire it (``truth_at_target``).
    """
    from surfharm.simulate import simulate_cohort

    sim = simulate_cohort(config)
    infant = config.mode == "infant"
    age_term = "log_age" if infant else "age"
    target = config.sites[0].name if target_site is None else target_site
    return BenchmarkData(
        name=name, X=sim.maps, table=sim.table, covariate_columns=[age_term, "female"], age_columns=[age_term],
        age_column="age", sex_column="female", truth=sim.truth, truth_at_target=sim.truth_at_site(target),
        traveling=sim.traveling, target_site=target,
        faces=np.asarray(icosphere(config.level).faces), mask=sim.mask,
        config={"scenario": name, "simulation": config.to_dict()})


def _register_presets() -> None:
    """Register every simulation preset (on first use: importing this module loads no simulator)."""
    from surfharm.simulate import presets

    for preset_name, factory in presets.PRESETS.items():
        if preset_name in _SCENARIOS:
            continue

        def build(_factory=factory, _name=preset_name, seed: int = 0, **overrides):
            return simulated_data(_factory(seed=seed, **overrides), name=_name)
        description = (factory.__doc__ or f"simulation preset {preset_name}").strip().splitlines()[0]
        register_scenario(preset_name, description, build=build)


# -- a user's ROI table (real data) -----------------------------------------------------------------------

_FEMALE = {"f": 1, "female": 1, "w": 1, "woman": 1, "m": 0, "male": 0, "man": 0}


def roi_table_data(path, *, site_column: str = "site", subject_column: str = "subject", age_column: str = "age",
                   sex_column: str | None = "sex", feature_suffix: str = "_thickness", features=None,
                   age_terms: str = "quadratic", min_scans_per_site: int = 10, seed: int = 0) -> BenchmarkData:
    """An ROI table (CSV/TSV, optionally gzipped) as benchmark data: no truth, no traveling subjects.

    Features are the columns ending in ``feature_suffix`` (or the list ``features``). Rows missing a
    feature, the age or the sex are dropped, then sites with fewer than ``min_scans_per_site`` rows.
    Sex is read from F/M, female/male (case-insensitive) or 0/1 (1 = female) into a ``female`` column.
    ``age_terms``: ``"linear"`` (age) or ``"quadratic"`` (age and centred age^2, for lifespan data).
    """
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ROI table {path} does not exist")
    sep = "\t" if ".tsv" in path.suffixes else ","
    table = pd.read_csv(path, sep=sep)
    for col in (site_column, age_column, *([sex_column] if sex_column else [])):
        if col not in table.columns:
            raise ValueError(f"{path}: no column {col!r}; columns start with {list(table.columns)[:12]}")
    features = list(features) if features is not None else [c for c in table.columns if c.endswith(feature_suffix)]
    if not features:
        raise ValueError(f"{path}: no feature column ends in {feature_suffix!r}; pass features= or another suffix")
    out = pd.DataFrame({"site": table[site_column].astype(str),
                        "subject": table[subject_column].astype(str) if subject_column in table else
                        [f"row{i}" for i in range(len(table))],
                        "age": pd.to_numeric(table[age_column], errors="coerce")})
    if out["subject"].duplicated().any():  # subject ids repeat across datasets: make them unique per site
        out["subject"] = out["site"] + "/" + out["subject"]
    covariates = ["age"]
    if sex_column:
        raw = table[sex_column].astype(str).str.strip().str.lower()
        out["female"] = raw.map(_FEMALE).where(raw.map(_FEMALE).notna(), pd.to_numeric(raw, errors="coerce"))
        covariates.append("female")
    X = table[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(X).all(axis=1) & out[covariates].notna().all(axis=1).to_numpy()
    if sex_column:
        keep &= out["female"].isin([0, 1]).to_numpy()
    counts = out.loc[keep, "site"].value_counts()
    keep &= out["site"].isin(counts[counts >= min_scans_per_site].index).to_numpy()
    if keep.sum() == 0:
        raise ValueError(f"{path}: no complete row left (features, age, sex) in a site with "
                         f">= {min_scans_per_site} rows")
    out, X = out[keep].reset_index(drop=True), X[keep]
    age_columns = ["age"]
    if age_terms == "quadratic":
        out["age_sq"] = (out["age"] - out["age"].mean()) ** 2
        age_columns.append("age_sq")
    elif age_terms != "linear":
        raise ValueError(f"age_terms must be 'linear' or 'quadratic', got {age_terms!r}")
    covariates = age_columns + covariates[1:]
    return BenchmarkData(name=f"roi-table:{path.name}", X=X, table=out, covariate_columns=covariates,
                         age_columns=age_columns, age_column="age", sex_column="female" if sex_column else None,
                         config={"scenario": "roi-table", "path": str(path), "site_column": site_column,
                                 "features": len(features), "age_terms": age_terms, "n_scans": int(len(out)),
                                 "n_sites": int(out["site"].nunique())})


# -- a user's Cohort (vertex maps or ROIs) --------------------------------------------------------------

def cohort_data(cohort, *, covariate_columns=("age", "female"), age_columns=("age",),
                sex_column: str | None = "female", name: str = "cohort") -> BenchmarkData:
    """A :class:`surfharm.cohort.Cohort` as benchmark data (real data: no truth, no traveling subjects).

    A ``female`` column is derived from a ``sex`` column (F/M, female/male, or 0/1) when asked for
    and missing. Icosahedral maps get SSIM windows from their mesh; ROI cohorts do not need them.
    """
    table = cohort.table.copy()
    if sex_column == "female" and "female" not in table and "sex" in table:
        raw = table["sex"].astype(str).str.strip().str.lower()
        table["female"] = raw.map(_FEMALE).where(raw.map(_FEMALE).notna(), pd.to_numeric(raw, errors="coerce"))
    missing = [c for c in [*covariate_columns, *age_columns] if c not in table]
    if missing:
        raise ValueError(f"cohort table lacks covariate column(s) {missing}; columns are {list(table.columns)}")
    incomplete = table[list(covariate_columns)].isna().any(axis=1)
    if incomplete.any():
        raise ValueError(f"cohort table has missing covariates in row(s) {np.flatnonzero(incomplete)[:5].tolist()}; "
                         "drop those scans (cohort.subset) first")
    X = np.asarray(cohort.maps)
    level = cohort.level if cohort.feature_names is None else None
    faces = np.asarray(icosphere(level).faces) if level is not None else None
    return BenchmarkData(name=name, X=X, table=table, covariate_columns=list(covariate_columns),
                         age_columns=list(age_columns), sex_column=sex_column,
                         faces=faces, mask=np.isfinite(X).all(axis=0) if faces is not None else None,
                         config={"scenario": "cohort", "name": name, "n_scans": int(X.shape[0])})


# -- volumetric (3-D images, scored by surfharm.evaluate.volumetric_scenario) --------------------------

def _run_volumetric(methods, seed: int = 0, **params) -> pd.DataFrame:
    from surfharm.evaluate.volumetric_scenario import build_volumetric_scenario, run_volumetric_benchmark

    scenario = build_volumetric_scenario(**params) if params else None
    names = [m.name for m in methods] if methods else None
    options = {m.name: m.options for m in methods or () if m.options}
    return run_volumetric_benchmark(methods=names, scenario=scenario, params=options or None)


register_scenario("roi-table", "a user's ROI table (real data): site-effect and biology metrics only",
                  build=roi_table_data)
register_scenario("volumetric", "3-D T1 images simulated from MNI152 (surfharm.simulate.volumes), scored by its "
                  "own metrics", run=_run_volumetric)
