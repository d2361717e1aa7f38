"""The benchmark runner: every method on the same data, the same metrics, one table.

For each method (:class:`surfharm.evaluate.methods.MethodSpec`) on :class:`BenchmarkData`:

1. fit on the study scans (all but traveling subjects) and transform them: vertex-wise site tests
   and biology effects (age partial R^2, age slope, sex Cohen's d) against the truth's;
2. leakage-safe cross-validation (:mod:`surfharm.evaluate.crossval`): site AUROC / balanced
   accuracy and age MAE / R^2, the method refit inside every fold;
3. traveling subjects (held out of every fit) transformed by the fit of step 1, compared with the
   same subject's scan at the target site after the same method (``tr_*_target``: do a subject's
   scans agree across sites?) and with the site-free truth (``tr_*_truth``).

A ``truth`` row scores the site-free maps the same way (the floor of site metrics and the target of
biology metrics). Where the data hold every scan's truth as the target site would acquire it
(simulations), a second row scores that, and ``age_r2_ratio_target`` compares each method's age R^2
with it: a harmonizer that maps every scan to a blurred target site keeps that site's age effect,
not the sharp site-free one. A method that fails gets a row with its error message; the others still run.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm import harmonize
from surfharm._atomic import atomic_path, folder_being_written, write_text_atomic
from surfharm._progress import progress_bar
from surfharm.evaluate import metrics
from surfharm.evaluate.crossval import cross_validate, site_folds
from surfharm.evaluate.methods import MethodSpec, default_methods
from surfharm.evaluate.scenarios import BenchmarkData, get_scenario

TRUTH_LABEL = "truth (site-free)"
TARGET_TRUTH_LABEL = "truth at the target site"

#: Columns of the results table: (name, meaning, better) with better = "high", "low", "1" or "".
COLUMNS = (
    ("site_auroc", "site prediction AUROC, cross-validated (0.5 = no site information; well below 0.5 = "
                   "over-correction: the site is still decodable, inverted, because the harmonizer's estimation "
                   "error of its site parameters marks training and unseen scans with opposite signs)", "0.5"),
    ("site_auroc_sd", "standard deviation of the site AUROC over repeated cross-validation splits", ""),
    ("site_balanced_accuracy", "site prediction balanced accuracy, cross-validated", "low"),
    ("frac_sig_anova", "fraction of features with a site effect on location (ANCOVA, FDR 5%)", "low"),
    ("frac_sig_kruskal", "same, Kruskal-Wallis on covariate-adjusted residuals", "low"),
    ("frac_sig_levene", "fraction with a site effect on scale (Levene/Brown-Forsythe, FDR 5%)", "low"),
    ("site_eta2_median", "median partial eta^2 of site", "low"),
    ("kbet_rejection", "kBET rejection rate on the first 20 principal components of the covariate-adjusted maps "
                       "(k = a quarter of the mean site size, alpha 0.05; about 0.05 = no site effect)", "low"),
    ("ilisi", "iLISI, effective number of sites among each scan's neighbours (perplexity 30; the number of sites "
              "= fully mixed)", "high"),
    ("manova_pillai", "MANOVA of site on the first 10 principal components, Pillai's trace (0 = none)", "low"),
    ("manova_p", "... its p-value", "high"),
    ("cov_het_frac", "fraction of vertices whose 1-ring covariance differs between sites (Box's M, FDR 5%)", "low"),
    ("age_r2", "mean partial R^2 of age over features", "truth"),
    ("age_r2_ratio", "age R^2 / truth's age R^2", "1"),
    ("age_r2_ratio_target", "age R^2 / age R^2 of the truth as the target site acquires it (simulations)", "1"),
    ("age_beta", "mean age slope (mm per unit of age)", "truth"),
    ("age_beta_r", "correlation of the age-slope map with the truth's", "high"),
    ("sex_d", "mean Cohen's d of sex (female - male)", "truth"),
    ("sex_d_r", "correlation of the sex-effect map with the truth's", "high"),
    ("age_mae", "age prediction MAE (years), cross-validated", "low"),
    ("age_pred_r2", "age prediction R^2, cross-validated", "high"),
    ("tr_mae_target", "traveling subjects: MAE (mm) to the same subject at the target site", "low"),
    ("tr_psnr_target", "... PSNR (dB, 5 mm range)", "high"),
    ("tr_r_target", "... Pearson r", "high"),
    ("tr_ssim_target", "... SSIM on the sphere (2-ring windows)", "high"),
    ("tr_icc", "traveling subjects: mean ICC(2,1) across all sites (absolute agreement)", "high"),
    ("tr_mae_truth", "traveling subjects: MAE (mm) to the site-free truth", "low"),
    ("tr_psnr_truth", "... PSNR (dB)", "high"),
    ("tr_r_truth", "... Pearson r", "high"),
    ("tr_ssim_truth", "... SSIM", "high"),
    ("fit_seconds", "time to fit and transform the study scans once (s)", "low"),
)


@dataclass
class BenchmarkResult:
    """The results table (one row per method, ``truth`` first when known) and what the plots need."""

    table: pd.DataFrame
    data_name: str
    config: dict
    scan_means: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n_study,) mean over features
    sites: np.ndarray | None = None                                   # (n_study,) site of each study scan


def run_benchmark(data: BenchmarkData, methods: list[MethodSpec] | None = None, *, n_splits: int = 5,
                  seed: int = 0, cv_repeats: int = 1, progress=None) -> BenchmarkResult:
    """Run ``methods`` on ``data``; see the module docstring.

    ``cv_repeats``: the cross-validation is repeated with that many fold splits (seeds ``seed``,
    ``seed + 1``, ...) and its scores averaged; with small cohorts one split moves the site AUROC by
    +-0.05 or more. ``site_auroc_sd`` then gives the spread over the splits.

    Default methods: :func:`default_methods`, without the longitudinal ones when no subject has
    more than one scan.

    ``progress``: optional callable taking a line of text (e.g. ``print``).
    """
    data.check()
    if not methods:
        methods = default_methods()
        if not data.table.loc[data.study, "subject"].duplicated().any():
            # Cross-sectional data: longitudinal methods (fit(..., subjects=...)) have nothing to model.
            methods = [m for m in methods if "subjects" not in m.column_kwargs]
    labels = [m.display for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method labels must be unique, got {labels}; name them LABEL=NAME:...")
    say = progress or (lambda _line: None)
    study = data.study
    table = data.table[study].reset_index(drop=True)
    X = np.asarray(data.X[study])
    cov = table[data.covariate_columns]
    if int(cv_repeats) < 1:
        raise ValueError(f"cv_repeats must be >= 1, got {cv_repeats}")
    folds = [site_folds(table["site"], table["subject"], n_splits=n_splits, seed=seed + r)
             for r in range(int(cv_repeats))]
    n_fits = (len(methods) + (data.truth is not None) + (data.truth_at_target is not None)) * sum(map(len, folds))
    bar = progress_bar(progress is not None, total=n_fits, desc="benchmark folds", unit="fold")
    folds = [_Ticking(f, bar) for f in folds]
    window = None
    if data.faces is not None:
        window = metrics.mesh_window(data.faces, data.X.shape[1], rings=2, mask=data.mask)

    truth_effects = None
    rows, scan_means = [], {}
    if data.truth is not None:
        truth = np.asarray(data.truth[study])
        truth_effects = metrics.covariate_effects(truth, cov, data.age_columns, data.sex_column)
        row = {"method": TRUTH_LABEL}
        row.update(_study_metrics(truth, table, cov, data, truth_effects))
        row.update(_cv_metrics(None, truth, table, folds, data, seed))
        rows.append(row)
        scan_means[TRUTH_LABEL] = _scan_mean(truth)
        say(f"{TRUTH_LABEL}: site AUROC {row['site_auroc']:.3f}, age R^2 {row['age_r2']:.4f}")
    target_age_r2 = None
    if data.truth_at_target is not None:
        at_target = np.asarray(data.truth_at_target[study])
        row = {"method": TARGET_TRUTH_LABEL}
        row.update(_study_metrics(at_target, table, cov, data, truth_effects))
        row.update(_cv_metrics(None, at_target, table, folds, data, seed))
        target_age_r2 = row["age_r2"]
        row["age_r2_ratio_target"] = 1.0
        rows.append(row)
        say(f"{TARGET_TRUTH_LABEL} ({data.target_site}): site AUROC {row['site_auroc']:.3f}, "
            f"age R^2 {row['age_r2']:.4f}")

    for spec in methods:
        row = {"method": spec.display}
        try:
            start = time.perf_counter()
            harmonizer = spec.build()
            rows_all = np.arange(len(table))
            side = harmonize.side_data_for(harmonizer, covariates=cov, **spec.table_kwargs(table, rows_all))
            harmonizer.fit(X, sites=table["site"].to_numpy(), **side)
            Xh = np.asarray(harmonizer.transform(X, sites=table["site"].to_numpy(), **side))
            row["fit_seconds"] = time.perf_counter() - start
            row.update(_study_metrics(Xh, table, cov, data, truth_effects))
            row.update(_cv_metrics(spec, X, table, folds, data, seed))
            if data.traveling is not None and data.traveling.any():
                row.update(_traveling_metrics(harmonizer, spec, data, window))
            scan_means[spec.display] = _scan_mean(Xh)
            if target_age_r2:
                row["age_r2_ratio_target"] = row["age_r2"] / target_age_r2
            say(f"{spec.display}: site AUROC {row['site_auroc']:.3f}, age R^2 {row['age_r2']:.4f}"
                f" ({row['fit_seconds']:.1f} s per fit)")
        except Exception as exc:  # one failing method must not sink the comparison
            row["error"] = f"{type(exc).__name__}: {exc}"
            say(f"{spec.display}: FAILED: {row['error']}")
            say(traceback.format_exc(limit=3))
        rows.append(row)

    bar.close()
    ordered = ["method"] + [c for c, _, _ in COLUMNS]
    result = pd.DataFrame(rows)
    result = result[[c for c in ordered if c in result.columns] + [c for c in result.columns if c not in ordered]]
    config = {**data.config, "methods": [vars(m) for m in methods], "n_splits": n_splits, "seed": seed,
              "cv_repeats": int(cv_repeats),
              "n_study_scans": int(study.sum()), "n_features": int(X.shape[1]),
              "n_traveling_scans": int(0 if data.traveling is None else data.traveling.sum())}
    return BenchmarkResult(table=result, data_name=data.name, config=config, scan_means=scan_means,
                           sites=table["site"].to_numpy())


def run_scenario(name: str, methods: list[MethodSpec] | None = None, *, n_splits: int = 5, seed: int = 0,
                 cv_repeats: int = 1, progress=None, **params) -> BenchmarkResult:
    """Build scenario ``name`` with ``params`` and benchmark ``methods`` on it."""
    scenario = get_scenario(name)
    if scenario.run is not None:
        table = scenario.run(methods, seed=seed, **params)
        return BenchmarkResult(table=table, data_name=name, config={"scenario": name, **params})
    return run_benchmark(scenario.build(seed=seed, **params), methods, n_splits=n_splits, seed=seed,
                         cv_repeats=cv_repeats, progress=progress)


# -- the pieces -------------------------------------------------------------------------------------------

def _scan_mean(X: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.asarray(X, np.float64), axis=1)


def _study_metrics(Xh, table, cov, data: BenchmarkData, truth_effects) -> dict:
    out = metrics.site_effect_tests(Xh, table["site"].to_numpy(), cov)
    effects = metrics.covariate_effects(Xh, cov, data.age_columns, data.sex_column)
    out.update(metrics.compare_effects(effects, truth_effects))
    out.update(metrics.multivariate_site_metrics(Xh, table["site"].to_numpy(), cov, faces=data.faces))
    return out


class _Ticking:
    """A fold list that advances a progress bar as each fold is used."""

    def __init__(self, folds, bar):
        self.folds, self.bar = list(folds), bar

    def __len__(self):
        return len(self.folds)

    def __iter__(self):
        for fold in self.folds:
            yield fold
            self.bar.update(1)


def _cv_metrics(spec, X, table, fold_sets, data: BenchmarkData, seed: int) -> dict:
    """Cross-validated scores averaged over the fold splits in ``fold_sets`` (a list of fold lists)."""
    runs = [cross_validate(spec, X, table, folds, covariate_columns=data.covariate_columns,
                           age_column=data.age_column, seed=seed).scores() for folds in fold_sets]
    mean = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    out = {"site_auroc": mean["site_auroc"], "site_balanced_accuracy": mean["site_balanced_accuracy"],
           "age_mae": mean["age_mae"], "age_pred_r2": mean["age_r2"]}
    if len(runs) > 1:
        out["site_auroc_sd"] = float(np.std([run["site_auroc"] for run in runs], ddof=1))
    return out


def _traveling_metrics(harmonizer, spec: MethodSpec, data: BenchmarkData, window) -> dict:
    rows = np.nonzero(data.traveling)[0]
    trav = data.table.iloc[rows].reset_index(drop=True)
    cov = trav[data.covariate_columns]
    side = harmonize.side_data_for(harmonizer, covariates=cov, **spec.table_kwargs(data.table, rows))
    Xh = np.asarray(harmonizer.transform(data.X[rows], sites=trav["site"].to_numpy(), **side), dtype=np.float64)
    truth = np.asarray(data.truth[rows], np.float64) if data.truth is not None else None
    out = {}
    target = data.target_site if data.target_site is not None else str(trav["site"].iloc[0])
    at_target = {s: i for i, s in zip(range(len(trav)), trav["subject"]) if trav["site"].iloc[i] == target}
    sources = [i for i in range(len(trav)) if trav["site"].iloc[i] != target and trav["subject"].iloc[i] in at_target]
    if sources:
        pairs = [at_target[trav["subject"].iloc[i]] for i in sources]
        for key, value in metrics.agreement(Xh[sources], Xh[pairs], window, data.mask).items():
            out[f"tr_{key}_target"] = value
    complete = trav.groupby("subject")["site"].nunique() == trav["site"].nunique()
    if complete.sum() >= 2:
        # (subject, site, feature) cube of the subjects scanned at every site.
        cube = trav[trav["subject"].isin(complete[complete].index)].reset_index().pivot(
            index="subject", columns="site", values="index")
        icc = metrics.icc_absolute(Xh[cube.to_numpy()])
        out["tr_icc"] = float(np.nanmean(icc))
    if truth is not None:
        for key, value in metrics.agreement(Xh, truth, window, data.mask).items():
            out[f"tr_{key}_truth"] = value
    return out


# -- writing ---------------------------------------------------------------------------------------------

_GROUPS = (
    ("Site effect left (lower is better; AUROC 0.5 = none)",
     ["site_auroc", "site_auroc_sd", "site_balanced_accuracy", "frac_sig_anova", "frac_sig_kruskal", "frac_sig_levene",
      "site_eta2_median", "kbet_rejection", "ilisi", "manova_pillai", "manova_p", "cov_het_frac"]),
    ("Biology kept (closest to the truth row is best)",
     ["age_r2", "age_r2_ratio", "age_r2_ratio_target", "age_beta", "age_beta_r", "sex_d", "sex_d_r", "age_mae",
      "age_pred_r2"]),
    ("Traveling subjects (held out of every fit)",
     ["tr_mae_target", "tr_psnr_target", "tr_r_target", "tr_ssim_target", "tr_icc", "tr_mae_truth",
      "tr_psnr_truth", "tr_r_truth", "tr_ssim_truth"]),
    ("Cost", ["fit_seconds"]),
)


def to_markdown(result: BenchmarkResult) -> str:
    """The results as Markdown: one table per group of metrics, then the definitions."""
    table = result.table
    lines = [f"# surfharm benchmark: {result.data_name}", ""]
    cfg = result.config
    if "n_study_scans" in cfg:
        lines += [f"{cfg['n_study_scans']} scans ({cfg['n_features']} features), "
                  f"{cfg['n_traveling_scans']} traveling-subject scans, {cfg['n_splits']}-fold leakage-safe "
                  f"cross-validation, seed {cfg['seed']}.", ""]
    known = {c for c, _, _ in COLUMNS}
    groups = list(_GROUPS) if known & set(table.columns) else [("Results", [c for c in table.columns if c != "method"])]
    for title, columns in groups:
        columns = [c for c in columns if c in table.columns and table[c].notna().any()]
        if not columns:
            continue
        lines += [f"## {title}", "", _markdown_table(table[["method", *columns]]), ""]
    if "error" in table.columns and table["error"].notna().any():
        lines += ["## Errors", ""]
        lines += [f"- {m}: {e}" for m, e in zip(table["method"], table["error"]) if isinstance(e, str)]
        lines.append("")
    lines += ["## Definitions", ""]
    lines += [f"- `{c}`: {meaning}" for c, meaning, _ in COLUMNS if c in table.columns]
    return "\n".join(lines) + "\n"


def _markdown_table(frame: pd.DataFrame) -> str:
    def fmt(value):
        if isinstance(value, (float, np.floating)):
            if not np.isfinite(value):
                return ""
            return f"{value:.4f}" if abs(value) < 0.1 else f"{value:.3f}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(frame.columns))) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_results(result: BenchmarkResult, out_dir, *, plots: bool = True) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md``, ``config.json`` and (optionally) the plots into
    ``out_dir`` (created if missing; each file written atomically). Returns name -> path.

    The folder holds the marker ``INCOMPLETE`` until the last file is written, so that ``surfharm
    report`` refuses the folder of an interrupted write."""
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / "results.csv", "markdown": out_dir / "results.md", "config": out_dir / "config.json"}
    with folder_being_written(out_dir):
        with atomic_path(paths["csv"]) as tmp:
            result.table.to_csv(tmp, index=False)
        write_text_atomic(paths["markdown"], to_markdown(result))
        write_text_atomic(paths["config"], json.dumps(result.config, indent=2, default=_json_default))
        if plots:
            from surfharm.evaluate import plots as plotting

            paths.update(plotting.write_plots(result, out_dir))
    return paths


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# -- config files ---------------------------------------------------------------------------------------

_CONFIG_KEYS = {"scenario", "params", "simulation", "methods", "n_splits", "seed"}


def read_config(path) -> dict:
    """Read a benchmark config file (JSON, or TOML with a ``.toml`` name).

    Keys: ``scenario`` (a registered name) with ``params`` (its keyword arguments), or ``simulation``
    (a full :class:`surfharm.simulate.SimulationConfig` as a dict); ``methods`` (list of text forms or
    ``{name, label, options, column_kwargs}``); ``n_splits``; ``seed``. Unknown keys are refused.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            config = tomllib.loads(text)
        else:
            config = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ValueError(f"{path}: not a valid {'TOML' if path.suffix == '.toml' else 'JSON'} file: {exc}") from None
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(_CONFIG_KEYS)}")
    if ("scenario" in config) == ("simulation" in config):
        raise ValueError(f"{path}: give exactly one of 'scenario' (a name) or 'simulation' (a config)")
    return config


def run_config(config: dict, *, progress=None, config_name: str = "config") -> BenchmarkResult:
    """Run a config read by :func:`read_config`."""
    from surfharm.evaluate.scenarios import simulated_data
    from surfharm.simulate import SimulationConfig

    methods = [MethodSpec.from_dict(m) for m in config.get("methods", [])] or None
    n_splits, seed = int(config.get("n_splits", 5)), int(config.get("seed", 0))
    if "simulation" in config:
        sim = SimulationConfig.from_dict({**config["simulation"], "seed": config["simulation"].get("seed", seed)})
        return run_benchmark(simulated_data(sim, name=config_name), methods, n_splits=n_splits, seed=seed,
                             progress=progress)
    return run_scenario(config["scenario"], methods, n_splits=n_splits, seed=seed, progress=progress,
                        **config.get("params", {}))
