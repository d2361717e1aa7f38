"""Distributed ComBat (d-ComBat, Chen et al., NeuroImage 2022): ComBat fitted from per-site summaries.

Every site keeps its scans. Each computes sums over its own scans, a coordinator combines them, and
the result is the ComBat model that pooling every scan would give (to rounding), including the
reference site, smooth terms and every empirical Bayes option. The rounds:

0. **covariates** (:func:`covariate_summary`): the site's scan count, its covariate columns and
   their kinds, the levels of its categorical columns and, for each smooth term, its quantiles at the
   knot probabilities (as many values as the spline has knots). The coordinator (:func:`make_plan`)
   fixes the shared design: levels (union), the site list and the spline knots, the outer knots at
   the pooled minimum and maximum, the inner ones the scan-weighted average of the sites' quantiles
   (pooled ComBat puts them at the pooled quantiles, which no site can compute alone; they agree
   when the sites' covariate distributions do). A consortium that agreed on knots beforehand passes
   them (``knots=``), and the model then equals pooled ComBat with those knots.
1. **design** (:func:`design_summary`): ``D'D`` and ``D'Y`` of the site's own rows, in blocks: scan
   count, covariate sums ``1'C`` and ``C'C``, data sums ``1'Y`` and ``C'Y``; and, per feature, whether
   the site's values are all equal (and that value), so that constant features are left unchanged as
   pooled ComBat leaves them. The coordinator (:func:`combine_design`) solves the normal equations:
   grand mean and covariate coefficients.
2. **residuals** (:func:`residual_summary`): per feature, the site's sums of ``r = y - alpha - x'beta``
   and of ``r^2``. The coordinator (:func:`combine_residuals`) forms the pooled variance, each site's
   standardised sums and, per site, ComBat's estimates and empirical Bayes, and returns a fitted
   :class:`~surfharm.harmonize.ComBat`: each site harmonizes its own scans with it (``transform``).

No summary holds a per-scan value: every array is sized by features, design columns or knots, and
is a sum over the site's scans (or, for constant features, the value every scan has). Scans with
missing values (NaN) are refused: pooled ComBat's per-feature handling of them needs per-feature
design products that a site would have to send for every feature.

Summaries are written and read as ``.npz`` + JSON (:mod:`surfharm.io.model_files`) by
:meth:`Summary.save` / :func:`load_summary`; ``surfharm dcombat site-summary|combine|apply`` runs
the rounds from the command line.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from surfharm.errors import ModelFileError
from surfharm.harmonize import _design
from surfharm.harmonize.base import HarmonizerInputError, check_data
from surfharm.harmonize.combat import ComBat
from surfharm.io import model_files

FORMAT = "surfharm-dcombat"
STAGES = ("covariates", "plan", "design", "design-combined", "residuals")
#: ComBat options the coordinator fixes in the plan.
OPTIONS = ("eb", "parametric", "mean_only", "reference_site")


@dataclass
class Summary:
    """One message of d-ComBat: ``stage``, JSON ``meta`` and numpy ``arrays`` (sums only)."""

    stage: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path) -> Path:
        """Write as ``.npz`` (arrays) + ``metadata.json`` (no pickle), atomically."""
        return model_files.write_npz(path, self.arrays, {"format": FORMAT, "stage": self.stage, **self.meta})

    @property
    def site(self):
        return self.meta.get("site")


def load_summary(path, stage: str | None = None) -> Summary:
    """Read a file of :meth:`Summary.save`; ``stage`` checks which round it is from."""
    arrays, meta = model_files.read_npz(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a d-ComBat summary (format {meta.get('format')!r})")
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "surfharm_version")}
    found = meta.pop("stage")
    if stage is not None and found != stage:
        raise ModelFileError(f"{path} is a d-ComBat {found!r} file; expected a {stage!r} file")
    return Summary(found, meta, arrays)


# -- round 0: covariates ----------------------------------------------------------------------------

def covariate_summary(covariates, *, site, n_scans: int | None = None, smooth_terms=(), spline_df: int = 5) -> Summary:
    """What the coordinator needs to fix the shared design: columns, kinds, levels, knot quantiles.

    ``covariates``: the site's covariate table (one row per scan, or None with ``n_scans``).
    """
    if covariates is None and n_scans is None:
        raise HarmonizerInputError("covariate_summary needs covariates or n_scans")
    n = len(covariates) if covariates is not None else int(n_scans)
    encoder = _design.CovariateEncoder(smooth_terms=tuple(smooth_terms), spline_df=spline_df)
    encoder.fit(covariates, n)
    arrays = {}
    for col, kind in encoder.kinds.items():
        if kind == "smooth":
            values = _design.as_table(covariates, n)[col].to_numpy(dtype=float)
            arrays[f"quantiles.{col}"] = np.quantile(values, np.linspace(0.0, 1.0, len(encoder.knots[col])))
    meta = {"site": _label(site), "n_scans": n, "columns": encoder.columns, "kinds": encoder.kinds,
            "levels": encoder.levels, "smooth_terms": list(smooth_terms), "spline_df": int(spline_df)}
    return Summary("covariates", meta, arrays)


def make_plan(summaries, *, eb: bool = True, parametric: bool = True, mean_only: bool = False,
              reference_site=None, knots: dict | None = None) -> Summary:
    """Coordinator, round 0: the shared design (sites, covariate encoding, knots) and ComBat options."""
    summaries = _checked(summaries, "covariates")
    first = summaries[0].meta
    for s in summaries[1:]:
        for key in ("columns", "smooth_terms", "spline_df"):
            if s.meta[key] != first[key]:
                raise HarmonizerInputError(f"site {s.site!r} has {key} {s.meta[key]}; site {summaries[0].site!r} "
                                           f"has {first[key]}: every site must summarise the same covariates")
    kinds = {}
    for col in first["columns"]:
        found = {s.meta["kinds"][col] for s in summaries}
        kinds[col] = "categorical" if "categorical" in found else found.pop()
    levels = {col: sorted({lev for s in summaries for lev in s.meta["levels"].get(col, [])})
              for col, kind in kinds.items() if kind == "categorical"}
    bad = [col for col, kind in kinds.items() if kind == "categorical"
           and any(s.meta["kinds"][col] == "numeric" for s in summaries)]
    if bad:
        raise HarmonizerInputError(f"covariate(s) {bad} are numeric at some sites and categorical at others")
    counts = np.array([s.meta["n_scans"] for s in summaries], dtype=float)
    chosen = {}
    for col, kind in kinds.items():
        if kind != "smooth":
            continue
        if knots and col in knots:
            chosen[col] = np.asarray(knots[col], dtype=float)
            continue
        q = np.stack([s.arrays[f"quantiles.{col}"] for s in summaries])
        inner = (counts[:, None] * q).sum(axis=0) / counts.sum()
        inner[0], inner[-1] = q[:, 0].min(), q[:, -1].max()
        chosen[col] = inner
        if np.unique(inner).size < inner.size:
            raise HarmonizerInputError(f"smooth term {col!r}: the sites' quantiles give repeated knots {inner}; "
                                       "lower spline_df or model it as a linear covariate")
    encoder = _design.CovariateEncoder(smooth_terms=tuple(first["smooth_terms"]), spline_df=int(first["spline_df"]),
                                       columns=list(first["columns"]), kinds=kinds, levels=levels, knots=chosen,
                                       names=_names(first["columns"], kinds, levels, chosen))
    sites = _design.site_levels(np.array([s.site for s in summaries], dtype=object))
    by_site = {str(s.site): s.meta["n_scans"] for s in summaries}
    options = {"eb": bool(eb), "parametric": bool(parametric), "mean_only": bool(mean_only),
               "reference_site": None if reference_site is None else _label(reference_site)}
    if reference_site is not None and str(reference_site) not in by_site:
        raise HarmonizerInputError(f"reference_site {reference_site!r} is not among the sites {list(by_site)}")
    meta = {"sites": sites, "site_counts": [int(by_site[str(s)]) for s in sites],
            "covariates": encoder.to_state(), "options": options}
    meta["plan_id"] = _fingerprint(meta)
    return Summary("plan", meta, {})


def _names(columns, kinds, levels, knots) -> list[str]:
    """Design column names, as :class:`~surfharm.harmonize._design.CovariateEncoder` names them."""
    names = []
    for col in columns:
        if kinds[col] == "numeric":
            names.append(col)
        elif kinds[col] == "categorical":
            names += [f"{col}[{lev}]" for lev in levels[col][1:]]
        else:
            names += [f"{col}:spline{k}" for k in range(len(knots[col]) + _design.SPLINE_DEGREE - 2)]
    return names


def plan_encoder(plan: Summary) -> _design.CovariateEncoder:
    return _design.CovariateEncoder.from_state(plan.meta["covariates"])


# -- round 1: design ----------------------------------------------------------------------------------

def design_summary(plan: Summary, X, covariates=None, *, site) -> Summary:
    """A site's ``D'D`` and ``D'Y`` blocks (sums over its scans) and its constant features."""
    _expect(plan, "plan")
    X, C, site = _site_data(plan, X, covariates, site)
    first, last = X[0], X[-1]
    constant = np.all(X == first, axis=0)
    arrays = {"c_sum": C.sum(axis=0), "ctc": C.T @ C, "y_sum": X.sum(axis=0), "cty": C.T @ X,
              "constant": constant, "constant_value": np.where(constant, last, np.nan)}
    meta = {"site": site, "n_scans": int(X.shape[0]), "n_features": int(X.shape[1]), "plan_id": plan.meta["plan_id"]}
    return Summary("design", meta, arrays)


def combine_design(plan: Summary, summaries) -> Summary:
    """Coordinator, round 1: the pooled least squares; returns what the sites need for round 2."""
    _expect(plan, "plan")
    summaries = _by_site(plan, _checked(summaries, "design"))
    sites = plan.meta["sites"]
    n_features = _same_features(summaries)
    n = np.array([s.meta["n_scans"] for s in summaries], dtype=float)
    K = len(sites)
    Q = summaries[0].arrays["ctc"].shape[0]
    dtd = np.zeros((K + Q, K + Q))
    dty = np.zeros((K + Q, n_features))
    dtd[np.arange(K), np.arange(K)] = n
    for k, s in enumerate(summaries):
        dtd[k, K:] = dtd[K:, k] = s.arrays["c_sum"]
        dtd[K:, K:] += s.arrays["ctc"]
        dty[k] = s.arrays["y_sum"]
        dty[K:] += s.arrays["cty"]
    names = plan_encoder(plan).names
    if n.sum() <= K + Q:
        raise HarmonizerInputError(f"{int(n.sum())} scans cannot fit {K + Q} design columns ({K} sites + {Q} "
                                   f"covariate columns {names}); add scans or drop covariates")
    if np.linalg.matrix_rank(dtd) < K + Q:
        raise HarmonizerInputError(f"the covariate columns {names} are confounded with site or collinear (the "
                                   "pooled design is rank-deficient); drop or change covariates")
    coef = np.linalg.solve(dtd, dty)
    site_coef = coef[:K]
    ref = _reference_index(plan)
    grand = (n[:, None] * site_coef).sum(axis=0) / n.sum() if ref is None else site_coef[ref]
    values = np.stack([s.arrays["constant_value"] for s in summaries])
    constant = np.all(np.stack([s.arrays["constant"] for s in summaries]), axis=0)
    constant &= np.all(values == values[0], axis=0)
    arrays = {"grand_mean": grand, "covariate_coef": coef[K:], "site_coef": site_coef, "constant": constant,
              "pooled_mean": (n[:, None] * site_coef).sum(axis=0) / n.sum()}
    meta = {**plan.meta, "n_features": n_features}
    return Summary("design-combined", meta, arrays)


# -- round 2: residuals -------------------------------------------------------------------------------

def residual_summary(combined: Summary, X, covariates=None, *, site) -> Summary:
    """A site's per-feature sums of ``r = y - alpha - x'beta`` and ``r^2`` over its scans."""
    _expect(combined, "design-combined")
    X, C, site = _site_data(combined, X, covariates, site)
    if X.shape[1] != combined.meta["n_features"]:
        raise HarmonizerInputError(f"X has {X.shape[1]} features; the design round had {combined.meta['n_features']}")
    r = X - combined.arrays["grand_mean"]
    if C.shape[1]:
        r -= C @ combined.arrays["covariate_coef"]
    meta = {"site": site, "n_scans": int(X.shape[0]), "n_features": int(X.shape[1]),
            "plan_id": combined.meta["plan_id"]}
    return Summary("residuals", meta, {"r_sum": r.sum(axis=0), "r2_sum": (r * r).sum(axis=0)})


def combine_residuals(combined: Summary, summaries) -> ComBat:
    """Coordinator, round 2: pooled variance, per-site estimates and empirical Bayes: a fitted ComBat."""
    _expect(combined, "design-combined")
    summaries = _by_site(combined, _checked(summaries, "residuals"))
    n_features = _same_features(summaries)
    if n_features != combined.meta["n_features"]:
        raise HarmonizerInputError(f"residual summaries have {n_features} features; the design round had "
                                   f"{combined.meta['n_features']}")
    n = np.array([s.meta["n_scans"] for s in summaries], dtype=float)
    r1 = np.stack([s.arrays["r_sum"] for s in summaries])
    r2 = np.stack([s.arrays["r2_sum"] for s in summaries])
    offsets = combined.arrays["site_coef"] - combined.arrays["grand_mean"]
    ss_site = r2 - 2 * offsets * r1 + n[:, None] * offsets**2
    var_pooled = np.maximum(ss_site.sum(axis=0), 0.0) / n.sum()
    ref = _reference_index(combined)
    if ref is not None:
        var_ref = np.maximum(ss_site[ref], 0.0) / n[ref]
        var_pooled = np.where(var_ref > 0, var_ref, var_pooled)
    unchanged = combined.arrays["constant"].astype(bool) | ~(var_pooled > 0)
    var_pooled = np.where(unchanged, 1.0, var_pooled)

    model = ComBat(**combined.meta["options"], smooth_terms=tuple(combined.meta["covariates"]["smooth_terms"]),
                   spline_df=int(combined.meta["covariates"]["spline_df"]))
    model.sites_ = list(combined.meta["sites"])
    model.adapted_sites_ = []
    model.site_counts_ = n.astype(np.int64)
    model.encoder_ = plan_encoder(combined)
    model.reference_index_ = ref
    model.grand_mean_ = np.array(combined.arrays["grand_mean"], dtype=float)
    model.covariate_coef_ = np.array(combined.arrays["covariate_coef"], dtype=float)
    model.var_pooled_ = var_pooled
    model.unchanged_ = unchanged
    model._check_site_sizes()
    n_site = np.broadcast_to(n[:, None], (n.size, n_features))
    model._fit_site_effects(n_site, r1 / np.sqrt(var_pooled), r2 / var_pooled)
    model.n_features_in_ = n_features
    return model


def fit(datasets: dict, *, smooth_terms=(), spline_df: int = 5, knots: dict | None = None, **options) -> ComBat:
    """Every round in one process: ``datasets`` maps each site to ``(X, covariates)``. Returns the ComBat model.

    For simulations and tests; in a real consortium each site runs its own rounds (the CLI).
    """
    plan = make_plan([covariate_summary(cov, site=site, n_scans=len(X), smooth_terms=smooth_terms,
                                        spline_df=spline_df) for site, (X, cov) in datasets.items()],
                     knots=knots, **options)
    combined = combine_design(plan, [design_summary(plan, X, cov, site=site) for site, (X, cov) in datasets.items()])
    return combine_residuals(combined, [residual_summary(combined, X, cov, site=site)
                                        for site, (X, cov) in datasets.items()])


# -- helpers ------------------------------------------------------------------------------------------

def _label(site):
    return int(site) if isinstance(site, (int, np.integer)) and not isinstance(site, bool) else str(site)


def _fingerprint(meta: dict) -> str:
    return hashlib.sha256(model_files.metadata_text(meta).encode()).hexdigest()[:16]


def _expect(summary: Summary, stage: str) -> None:
    if summary.stage != stage:
        raise HarmonizerInputError(f"expected the coordinator's {stage!r} file, got a {summary.stage!r} one")


def _checked(summaries, stage: str) -> list[Summary]:
    summaries = list(summaries)
    if not summaries:
        raise HarmonizerInputError("no site summaries given")
    wrong = [(s.site, s.stage) for s in summaries if s.stage != stage]
    if wrong:
        raise HarmonizerInputError(f"expected {stage!r} summaries; got {wrong}")
    labels = [str(s.site) for s in summaries]
    twice = sorted({s for s in labels if labels.count(s) > 1})
    if twice:
        raise HarmonizerInputError(f"site(s) {twice} sent more than one summary")
    return summaries


def _by_site(plan: Summary, summaries: list[Summary]) -> list[Summary]:
    """The summaries in the plan's site order; every site present, all made with this plan."""
    found = {str(s.site): s for s in summaries}
    expected = [str(s) for s in plan.meta["sites"]]
    missing = [s for s in expected if s not in found]
    extra = [s for s in found if s not in expected]
    if missing or extra:
        raise HarmonizerInputError(f"the plan has sites {expected}; summaries are missing for {missing}"
                                   + (f" and given for unknown sites {extra}" if extra else ""))
    stale = [s.site for s in summaries if s.meta.get("plan_id") != plan.meta["plan_id"]]
    if stale:
        raise HarmonizerInputError(f"site(s) {stale} made their summary with another plan: run that round again")
    ordered = [found[s] for s in expected]
    counts = {str(s): c for s, c in zip(plan.meta["sites"], plan.meta["site_counts"])}
    changed = [s.site for s in ordered if s.meta["n_scans"] != counts[str(s.site)]]
    if changed:
        raise HarmonizerInputError(f"site(s) {changed} summarised another number of scans than in round 0")
    return ordered


def _same_features(summaries) -> int:
    counts = {s.meta["n_features"] for s in summaries}
    if len(counts) != 1:
        raise HarmonizerInputError(f"the sites' summaries have different feature counts {sorted(counts)}")
    return counts.pop()


def _reference_index(plan: Summary):
    ref = plan.meta["options"]["reference_site"]
    return None if ref is None else [str(s) for s in plan.meta["sites"]].index(str(ref))


def _site_data(plan: Summary, X, covariates, site):
    """The site's scans (complete, float64) and design columns, checked against the plan."""
    site = _label(site)
    if str(site) not in [str(s) for s in plan.meta["sites"]]:
        raise HarmonizerInputError(f"site {site!r} is not in the plan (sites {plan.meta['sites']})")
    X = check_data(X, dtype=np.float64, allow_nan=False)
    C = plan_encoder(plan).transform(covariates, X.shape[0])
    return X, C, site
