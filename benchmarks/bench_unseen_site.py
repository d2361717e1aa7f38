"""A scanner never seen in training: surfharm's ``adapt`` against NiChartHarmonize and creb, in one run.

Real data: the OpenNeuro Desikan-Killiany thickness table (68 regions; 'site' = OpenNeuro dataset;
covariates age, centred age^2 and sex). In each of ``--seeds`` repeats, ``--held-out`` datasets with
at least ``--min-scans`` scans are drawn at random and held out as unseen scanners; every method is
fitted on the other datasets, then harmonizes the held-out scans without refitting:

* surfharm ComBat, CovBat and mean-std, each ``fit`` then ``adapt(X_new, sites=..., covariates=...)``;
* NiChartHarmonize 2.2.0: ``nh_learn_ref_model`` then ``nh_harmonize_to_ref`` (its out-of-sample path
  for a batch not in the model);
* creb 0.1.0: ``crebLearn`` (a bundle of training summaries) then ``crebApply`` (method "joint").

The reference is ComBat refitted with the held-out datasets included. Per method (means over the
held-out datasets of all repeats, +- the standard deviation over repeats):

* ``dev_vs_refit``: mean |method - ComBat refit| / mean |raw - ComBat refit| on the held-out scans
  (0 = the refit's output, 1 = no closer than the raw data);
* ``dev_vs_own_refit``: the same against the method itself refitted with the held-out datasets
  (the error of applying a fitted model, apart from the method's own choices);
* ``site_auroc``: a site classifier retrained after harmonization, telling each held-out dataset's
  scans from the training scans (logistic regression on the covariate-adjusted regions, 5-fold
  stratified cross-validation, class-balanced; 0.5 = indistinguishable), averaged over the held-out datasets;
* ``age_r2_vs_raw``: partial R^2 of age (age and age^2, given sex and dataset) in the held-out
  scans, mean over regions, relative to the raw scans' (1 = the age effect kept);
* ``seconds``: fit on the training scans plus adapting and harmonizing the held-out scans.

The peers are imported only when installed (the script says so otherwise). Run it in the benchmark
environment, which has them:

    pip install -e . nichartharmonize==2.2.0 creb==0.1.0
    python benchmarks/bench_unseen_site.py            # 5 held-out datasets x 3 seeds, about a minute
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import _common  # noqa: F401  (puts this checkout on sys.path)

# The evaluation data sit beside the checkout (../shared/data), never inside it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openneuro-dk" / "openneuro_fs_dk_age_sex_ge20.csv.gz"


def load(path: Path):
    from surfharm.evaluate.scenarios import roi_table_data

    data = roi_table_data(path, site_column="dataset", subject_column="subject", age_column="age",
                          sex_column="sex", feature_suffix="_thickness")
    table = data.table.reset_index(drop=True)
    return np.asarray(data.X, np.float64), table, list(data.covariate_columns)


# -- methods: each returns (harmonized training scans, harmonized held-out scans) ------------------------

def surfharm_adapt(name):
    def run(Xtr, ttr, Xho, tho, cov):
        from surfharm.harmonize import CovBat, ComBat
        from surfharm.harmonize.baselines import MeanStd

        model = {"combat": ComBat, "covbat": CovBat, "meanstd": MeanStd}[name]()
        uses_cov = name != "meanstd"
        ctr = {"covariates": ttr[cov].reset_index(drop=True)} if uses_cov else {}
        cho = {"covariates": tho[cov].reset_index(drop=True)} if uses_cov else {}
        model.fit(Xtr, sites=ttr["site"].to_numpy(), **ctr)
        model.adapt(Xho, sites=tho["site"].to_numpy(), **cho)
        return (model.transform(Xtr, sites=ttr["site"].to_numpy(), **ctr),
                model.transform(Xho, sites=tho["site"].to_numpy(), **cho))
    return run


def surfharm_refit(name):
    def run(Xtr, ttr, Xho, tho, cov):
        from surfharm.harmonize import CovBat, ComBat
        from surfharm.harmonize.baselines import MeanStd

        model = {"combat": ComBat, "covbat": CovBat, "meanstd": MeanStd}[name]()
        X = np.vstack([Xtr, Xho])
        t = pd.concat([ttr, tho], ignore_index=True)
        side = {"covariates": t[cov]} if name != "meanstd" else {}
        out = model.fit_transform(X, sites=t["site"].to_numpy(), **side)
        return out[:len(Xtr)], out[len(Xtr):]
    return run


def _frame(X, t, cov, regions):
    return pd.concat([t[["site", *cov]].reset_index(drop=True).rename(columns={"site": "SITE"}),
                      pd.DataFrame(X, columns=regions)], axis=1)


def nichart_adapt(Xtr, ttr, Xho, tho, cov, refit=False):
    from NiChartHarmonize import nh_harmonize_to_ref, nh_learn_ref_model

    regions = [f"r{j}" for j in range(Xtr.shape[1])]
    dtr, dho = _frame(Xtr, ttr, cov, regions), _frame(Xho, tho, cov, regions)
    for d in (dtr, dho):
        d.insert(0, "MRID", [f"s{i}" for i in range(len(d))])
    dho["MRID"] = "h" + dho["MRID"]
    learn = pd.concat([dtr, dho], ignore_index=True) if refit else dtr
    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = nh_learn_ref_model(learn, key_var="MRID", batch_var="SITE", num_vars=list(cov))
        _, htr = nh_harmonize_to_ref(dtr, model)
        _, hho = nh_harmonize_to_ref(dho, model)
    cols = [f"{r}_HARM" for r in regions]
    return htr[cols].to_numpy(np.float64), hho[cols].to_numpy(np.float64)


def creb_adapt(Xtr, ttr, Xho, tho, cov, refit=False):
    from creb import crebApply, crebLearn

    regions = [f"r{j}" for j in range(Xtr.shape[1])]
    dtr, dho = _frame(Xtr, ttr, cov, regions), _frame(Xho, tho, cov, regions)
    learn = pd.concat([dtr, dho], ignore_index=True) if refit else dtr
    ccols = ["SITE", *cov]
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        bundle = os.path.join(tmp, "bundle.pkl")
        crebLearn(learn[ccols], learn[regions], output_path=bundle, log_level="ERROR")
        htr = crebApply(dtr[ccols], dtr[regions], bundle, method="joint", log_level="ERROR")
        hho = crebApply(dho[ccols], dho[regions], bundle, method="joint", log_level="ERROR")
    return htr[regions].to_numpy(np.float64), hho[regions].to_numpy(np.float64)


# -- metrics ------------------------------------------------------------------------------------------

def site_auroc(Htr, Hho, tho_sites, Ctr, Cho, seed):
    """Mean over held-out datasets of the CV AUROC telling that dataset's scans from the training scans."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    out = []
    for site in np.unique(tho_sites):
        rows = tho_sites == site
        X = np.vstack([Htr, Hho[rows]])
        C = np.vstack([Ctr, Cho[rows]])
        y = np.r_[np.zeros(len(Htr)), np.ones(rows.sum())]
        score = np.zeros(len(y))
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
            adjust = LinearRegression().fit(C[train], X[train])
            a, b = X[train] - adjust.predict(C[train]), X[test] - adjust.predict(C[test])
            scaler = StandardScaler().fit(a)
            clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
            clf.fit(scaler.transform(a), y[train])
            score[test] = clf.predict_proba(scaler.transform(b))[:, 1]
        out.append(roc_auc_score(y, score))
    return float(np.mean(out))


def age_partial_r2(X, t, age_cols, other_cols):
    """Mean over regions of the partial R^2 of the age columns, given the other covariates and the site."""
    sites = pd.get_dummies(t["site"]).to_numpy(np.float64)
    reduced = np.column_stack([sites, t[other_cols].to_numpy(np.float64)])
    full = np.column_stack([reduced, t[age_cols].to_numpy(np.float64)])

    def sse(design):
        coef, *_ = np.linalg.lstsq(design, X, rcond=None)
        return ((X - design @ coef) ** 2).sum(axis=0)

    s_red, s_full = sse(reduced), sse(full)
    return float(np.mean((s_red - s_full) / s_red))


def score(ctx: dict, Htr, Hho, own=None, seconds=np.nan) -> dict:
    """The metrics of one method on one held-out draw (``ctx``: that draw's data and reference)."""
    Xho = ctx["Xho"]
    own_dev = np.nan if own is None else np.mean(np.abs(Hho - own)) / np.mean(np.abs(Xho - own))
    return {"dev_vs_refit": np.mean(np.abs(Hho - ctx["Rho"])) / ctx["base"],
            "dev_vs_own_refit": own_dev,
            "site_auroc": site_auroc(Htr, Hho, ctx["sites"], ctx["Ctr"], ctx["Cho"], ctx["seed"]),
            "age_r2_vs_raw": age_partial_r2(Hho, ctx["tho"], ctx["age_cols"], ctx["other"]) / ctx["raw_age"],
            "seconds": seconds}


# -- the run -------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--held-out", type=int, default=5)
    parser.add_argument("--min-scans", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)          # the peers log every step at INFO

    X, table, cov = load(Path(args.data))
    age_cols = [c for c in cov if c.startswith("age")]
    other = [c for c in cov if c not in age_cols]
    counts = table["site"].value_counts()
    eligible = np.sort(counts[counts >= args.min_scans].index.to_numpy())
    print(f"{X.shape[0]} scans x {X.shape[1]} regions, {table['site'].nunique()} datasets; covariates {cov}; "
          f"{args.held_out} of the {len(eligible)} datasets with >= {args.min_scans} scans held out, "
          f"{args.seeds} seeds")

    methods = {"ComBat + adapt": (surfharm_adapt("combat"), surfharm_refit("combat")),
               "CovBat + adapt": (surfharm_adapt("covbat"), surfharm_refit("covbat")),
               "mean-std + adapt": (surfharm_adapt("meanstd"), surfharm_refit("meanstd"))}
    try:
        import NiChartHarmonize  # noqa: F401
        methods["NiChartHarmonize 2.2.0 (out-of-sample)"] = (
            nichart_adapt, lambda *a: nichart_adapt(*a, refit=True))
    except ImportError:
        print("NiChartHarmonize is not installed: its row is left out (pip install nichartharmonize==2.2.0)")
    try:
        import creb  # noqa: F401
        methods["creb 0.1.0 (joint)"] = (creb_adapt, lambda *a: creb_adapt(*a, refit=True))
    except ImportError:
        print("creb is not installed: its row is left out (pip install creb==0.1.0)")

    rows = {name: [] for name in ["raw", "ComBat refit (reference)", *methods]}
    for seed in range(args.seeds):
        held = np.random.default_rng(seed).choice(eligible, args.held_out, replace=False)
        ho = table["site"].isin(held).to_numpy()
        Xtr, Xho = X[~ho], X[ho]
        ttr, tho = table[~ho].reset_index(drop=True), table[ho].reset_index(drop=True)
        Ctr, Cho = ttr[cov].to_numpy(np.float64), tho[cov].to_numpy(np.float64)
        s_ho = tho["site"].to_numpy()
        print(f"seed {seed}: held out {', '.join(held)} ({ho.sum()} scans)")
        start = time.perf_counter()
        Rtr, Rho = surfharm_refit("combat")(Xtr, ttr, Xho, tho, cov)
        refit_s = time.perf_counter() - start
        base = np.mean(np.abs(Xho - Rho))
        raw_age = age_partial_r2(Xho, tho, age_cols, other)

        ctx = {"Xho": Xho, "Rho": Rho, "base": base, "raw_age": raw_age, "sites": s_ho, "Ctr": Ctr, "Cho": Cho,
               "tho": tho, "age_cols": age_cols, "other": other, "seed": seed}
        rows["raw"].append(score(ctx, Xtr, Xho))
        rows["ComBat refit (reference)"].append(score(ctx, Rtr, Rho, Rho, refit_s))
        for name, (adapt, refit) in methods.items():
            start = time.perf_counter()
            Htr, Hho = adapt(Xtr, ttr, Xho, tho, cov)
            seconds = time.perf_counter() - start
            _, own = refit(Xtr, ttr, Xho, tho, cov)
            rows[name].append(score(ctx, Htr, Hho, own, seconds))

    columns = ["dev_vs_refit", "dev_vs_own_refit", "site_auroc", "age_r2_vs_raw", "seconds"]
    print()
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, runs in rows.items():
        frame = pd.DataFrame(runs)
        cells = []
        for c in columns:
            values = frame[c].to_numpy(np.float64)
            if not np.isfinite(values).any():
                cells.append("")
            elif c == "seconds":
                cells.append(f"{np.median(values):.2f}")
            else:
                spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
                cells.append(f"{values.mean():.3f}{spread}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n± = standard deviation over the seeds; seconds = median over the seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
