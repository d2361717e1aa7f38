"""What a run writes: the run folder read by ``surfharm report``, its metrics, and the user's maps.

Run folder (one per hemisphere, or ``roi``; layout of :mod:`surfharm.viz.run_folder`)::

    OUT/<key>/table.csv           one row per scan (subject, session, site, covariates)
    OUT/<key>/maps/raw.npy        (n_scans, n_features) float32 before harmonization, NaN outside cortex
    OUT/<key>/maps/<method>.npy   the same after harmonization
    OUT/<key>/metrics.csv         site-effect and biology metrics, one row per map set (raw, method)
    OUT/<key>/model.npz | model.safetensors (+ model.json)
    OUT/<key>/config.json         method, covariates kept, level, measure, hemisphere (read by ``apply``)
    OUT/<key>/run.json            command, versions, hemisphere, title
    OUT/<key>/report.html         the HTML report

Every file is written atomically and never over an input (:mod:`surfharm._atomic`).
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from surfharm._atomic import OutputError, atomic_path, write_text_atomic
from surfharm.cohort import Cohort
from surfharm.evaluate import metrics

#: Columns of metrics.csv and what they mean (shown by the CLI after a run).
METRIC_COLUMNS = {
    "frac_sig_anova": "features with a site effect on the mean (ANCOVA, FDR 5%)",
    "frac_sig_levene": "features with a site effect on the spread (Levene, FDR 5%)",
    "site_eta2_median": "median share of variance explained by site",
    "age_r2": "mean partial R^2 of age (biology kept: should stay close to raw)",
}


def prepare_folder(out, *, overwrite: bool) -> Path:
    """Create ``out``; refuse a folder that already holds files unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; expected a folder (created if missing)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out} is not empty; choose a new folder or pass --overwrite "
                          "(files of the same name are replaced, others are left alone)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def numeric_covariates(table: pd.DataFrame, keep) -> pd.DataFrame | None:
    """The kept covariates as numbers for the metrics: two-level categories (e.g. sex F/M) as 0/1;
    columns with other categories or missing values are left out."""
    columns = {}
    for name in keep or ():
        values = table[name]
        if pd.api.types.is_numeric_dtype(values):
            if values.notna().all():
                columns[name] = values.astype(float).to_numpy()
        else:
            levels = sorted(values.dropna().astype(str).unique())
            if len(levels) == 2 and values.notna().all():
                columns[name] = (values.astype(str) == levels[0]).astype(float).to_numpy()
    return pd.DataFrame(columns) if columns else None


def summary_metrics(cohort: Cohort, maps_by_method: dict[str, np.ndarray], keep) -> pd.DataFrame:
    """Site-effect and age metrics of each map set (rows: ``raw`` then the methods).

    No ground truth exists for real data, so these are the within-study checks: how much site
    explains (vertex-wise tests, adjusted for the kept covariates) and how much age still explains.
    """
    covariates = numeric_covariates(cohort.table, keep)
    age_columns = [c for c in ("age", "log_age") if covariates is not None and c in covariates.columns]
    rows = []
    for name, maps in maps_by_method.items():
        row = {"method": name}
        with warnings.catch_warnings():  # constant features (e.g. a filled medial wall) give NaN tests
            warnings.simplefilter("ignore", RuntimeWarning)
            if len(pd.unique(cohort.sites)) > 1:
                row.update(metrics.site_effect_tests(maps, cohort.sites, covariates))
            if age_columns:
                effects = metrics.covariate_effects(maps, covariates, age_columns[:1])
                row["age_r2"] = float(np.nanmean(effects["age_r2"]))
        rows.append(row)
    return pd.DataFrame(rows)


def write_npy(path, array: np.ndarray, *, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        np.save(tmp, np.asarray(array, dtype=np.float32))
    return Path(path)


def write_run_folder(folder, cohort: Cohort, maps_by_method: dict[str, np.ndarray], *, metrics_table=None,
                     config: dict, title: str, command=None) -> list[Path]:
    """Write table.csv, maps/*.npy, metrics.csv, config.json and run.json into ``folder`` (created)."""
    from surfharm.viz.report import package_versions

    folder = Path(folder)
    (folder / "maps").mkdir(parents=True, exist_ok=True)
    inputs = [] if cohort.sources is None else list(cohort.sources["map"].dropna().unique())
    written = [write_text_atomic(folder / "table.csv", cohort.table.to_csv(index=False), inputs=inputs)]
    for name, maps in maps_by_method.items():
        written.append(write_npy(folder / "maps" / f"{name}.npy", maps))
    if metrics_table is not None:
        written.append(write_text_atomic(folder / "metrics.csv", metrics_table.to_csv(index=False)))
    written.append(write_text_atomic(folder / "config.json", json.dumps(config, indent=2, default=str) + "\n"))
    run = {"command": list(command) if command is not None else ["surfharm", *sys.argv[1:]],
           "versions": package_versions(), "hemi": cohort.hemi if cohort.feature_names is None else None,
           "title": title}
    written.append(write_text_atomic(folder / "run.json", json.dumps(run, indent=2) + "\n"))
    return written


def write_report(folder, *, log_age: bool = False, age_label: str = "age (years)") -> Path | None:
    """The HTML report of a run folder (vertex maps only; ROI runs keep their metrics table)."""
    from surfharm.viz import report_from_run

    return report_from_run(folder, log_age=log_age, age_label=age_label)


def write_subject_maps(cohort: Cohort, harmonized: np.ndarray, folder, *, spaces=("ico",),
                       overwrite: bool = True) -> list[Path]:
    """Harmonized maps per scan in FreeSurfer's layout, one tree per vertex order:

    * ``ico``: ``folder/fsaverage[N]/<scan>/surf/<hemi>.<measure>.harmonized.fsaverage[N].mgz``;
    * ``native``: ``folder/native/<scan>/surf/<hemi>.<measure>.harmonized`` (curv file in the scan's own
      vertex order, resampled back through its ``sphere.reg``; for ``mris_*`` tools and freeview).

    Each tree holds a ``cohort.tsv`` listing its files.
    """
    result = cohort.with_maps(harmonized)
    written = []
    if "ico" in spaces:
        name = {7: "fsaverage"}.get(cohort.level, f"fsaverage{cohort.level}")
        written += result.write(Path(folder) / name, format="mgz", layout="freesurfer", space="ico",
                                overwrite=overwrite)
    if "native" in spaces:
        written += result.write(Path(folder) / "native", format="curv", layout="freesurfer", space="native",
                                overwrite=overwrite)
    return written
