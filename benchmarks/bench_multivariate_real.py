"""Multivariate site effects on real ROI data: raw, ComBat, CovBat and RELIEF, out of fold, matched and not.

The OpenNeuro Desikan-Killiany thickness table (68 regions; 'site' = OpenNeuro dataset; covariates
age, centred age^2, sex). 5-fold cross-validation, stratified by site and grouped by subject: every
method is refitted in every fold on the training folds and applied to the held-out fold, so every
scan is scored harmonized by a model that never saw it. On those out-of-fold scans:

* ``site_auroc``: a site classifier (logistic regression on the covariate-adjusted regions) trained
  on the training folds' harmonized scans, scored on the test fold (macro one-vs-rest AUROC);
* ``age_pred_r2``: ridge age prediction trained the same way, R^2 on the test folds;
* ``kbet_rejection``, ``ilisi``, ``manova_pillai`` (:mod:`surfharm.evaluate.metrics`) and the mean
  partial R^2 of age (``age_r2``) on the stacked out-of-fold scans.

Every metric is reported twice: on all scans, and on a covariate-matched subset (the harmonizers
are fitted on all scans either way; only the scored scans and the classifiers' training rows change).
Matching rule: scans aged 18 to 35 (the range that most datasets share: 50 of the 61 have their
median age in it), then only datasets that keep at least 20 scans in that range with at least 5 of
each sex. A site classifier can otherwise find datasets by their age or sex mix, which the
covariate adjustment removes only as far as the age model is right.

    python benchmarks/bench_multivariate_real.py            # about ten minutes on 2 cores
    python benchmarks/bench_multivariate_real.py --deepcombat   # also DeepComBat (torch; slow)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import _common  # noqa: F401  (puts this checkout on sys.path)

# The evaluation data sit beside the checkout (../shared/data), never inside it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openneuro-dk" / "openneuro_fs_dk_age_sex_ge20.csv.gz"
AGE_RANGE = (18.0, 35.0)
MIN_SCANS, MIN_PER_SEX = 20, 5


def matched_rows(table: pd.DataFrame) -> np.ndarray:
    """The covariate-matched subset (see the module docstring), as a boolean mask."""
    in_range = table["age"].between(*AGE_RANGE).to_numpy()
    sub = table[in_range]
    per_sex = sub.groupby(["site", "female"]).size().unstack(fill_value=0)
    keep = per_sex[(per_sex.sum(axis=1) >= MIN_SCANS) & (per_sex.min(axis=1) >= MIN_PER_SEX)].index
    return in_range & table["site"].isin(keep).to_numpy()


def scores(H, table, cov, age_cols, proba, labels, age_pred, rows) -> dict:
    from sklearn.metrics import r2_score, roc_auc_score

    from surfharm.evaluate import metrics

    t = table[rows].reset_index(drop=True)
    sites = t["site"].to_numpy()
    present = np.isin(labels, np.unique(sites))
    p = proba[rows][:, present]
    p = p / p.sum(axis=1, keepdims=True)
    out = {"site_auroc": roc_auc_score(sites, p, multi_class="ovr", average="macro", labels=labels[present]),
           "age_pred_r2": r2_score(t["age"], age_pred[rows])}
    C = t[cov]
    out["kbet_rejection"] = metrics.kbet(H[rows], sites, C)["kbet_rejection"]
    out["ilisi"] = metrics.lisi(H[rows], sites, C)["ilisi"]
    out["manova_pillai"] = metrics.manova_site(H[rows], sites, C)["manova_pillai"]
    effects = metrics.covariate_effects(H[rows], C, age_cols, "female")
    out["age_r2"] = float(np.nanmean(effects["age_r2"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deepcombat", action="store_true", help="also DeepComBat (needs torch; minutes)")
    args = parser.parse_args()

    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from surfharm.evaluate.crossval import _grouped_ridge, harmonize_split, site_folds
    from surfharm.evaluate.methods import MethodSpec
    from surfharm.evaluate.scenarios import roi_table_data

    data = roi_table_data(Path(args.data), site_column="dataset", subject_column="subject", age_column="age",
                          sex_column="sex", feature_suffix="_thickness")
    X, table, cov = np.asarray(data.X, np.float64), data.table.reset_index(drop=True), list(data.covariate_columns)
    age_cols = list(data.age_columns)
    matched = matched_rows(table)
    print(f"{X.shape[0]} scans x {X.shape[1]} regions, {table['site'].nunique()} datasets; matched subset: "
          f"{matched.sum()} scans of {table.loc[matched, 'site'].nunique()} datasets (age {AGE_RANGE[0]:g}-"
          f"{AGE_RANGE[1]:g}, >= {MIN_SCANS} scans and >= {MIN_PER_SEX} of each sex per dataset); "
          f"{args.folds}-fold CV, every method refitted per fold")
    for name, rows in (("all", np.ones(len(table), bool)), ("matched", matched)):
        means = table[rows].groupby("site")["age"].mean()
        female = table[rows].groupby("site")["female"].mean()
        print(f"  {name}: SD over datasets of the mean age {means.std():.1f} y, "
              f"of the female fraction {female.std():.2f}")

    specs = [MethodSpec("raw"), MethodSpec("combat"), MethodSpec("covbat"), MethodSpec("relief")]
    if args.deepcombat:
        specs.append(MethodSpec("deepcombat"))
    folds = site_folds(table["site"], table["subject"], n_splits=args.folds, seed=args.seed)
    sites = table["site"].to_numpy().astype(str)
    labels = np.unique(sites)
    C = table[cov].to_numpy(np.float64)
    results = []
    for spec in specs:
        H = np.zeros_like(X)
        proba = {k: np.zeros((len(X), len(labels))) for k in ("all", "matched")}
        age_pred = {k: np.zeros(len(X)) for k in ("all", "matched")}
        seconds = 0.0
        for train, test in folds:
            start = time.perf_counter()
            h_train, h_test = harmonize_split(spec, X, table, cov, train, test)
            seconds += time.perf_counter() - start
            H[test] = h_test
            for key, mask in (("all", None), ("matched", matched)):
                tr = train if mask is None else train[mask[train]]
                te = test if mask is None else test[mask[test]]
                a = h_train if mask is None else h_train[mask[train]]
                b = h_test if mask is None else h_test[mask[test]]
                adjust = LinearRegression().fit(C[tr], a)
                sa, sb = a - adjust.predict(C[tr]), b - adjust.predict(C[te])
                scaler = StandardScaler().fit(sa)
                clf = LogisticRegression(C=1.0, max_iter=2000, random_state=args.seed)
                clf.fit(scaler.transform(sa), sites[tr])
                proba[key][np.ix_(te, np.searchsorted(labels, clf.classes_))] = clf.predict_proba(scaler.transform(sb))
                age_pred[key][te] = _grouped_ridge(a, table["age"].to_numpy()[tr], b,
                                                   table["subject"].to_numpy().astype(str)[tr], args.seed)
        for key, rows in (("all", np.ones(len(X), bool)), ("matched", matched)):
            row = {"method": spec.display, "scans": key,
                   **scores(H, table, cov, age_cols, proba[key], labels, age_pred[key], rows),
                   "fit_seconds": seconds / len(folds)}
            results.append(row)
        print(f"{spec.display}: done ({seconds / len(folds):.2f} s per fold); "
              + "; ".join(f"{r['scans']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                                     if isinstance(v, float)) for r in results[-2:]), flush=True)

    frame = pd.DataFrame(results)
    columns = ["site_auroc", "kbet_rejection", "ilisi", "manova_pillai", "age_r2", "age_pred_r2", "fit_seconds"]
    print()
    print("| method | scans | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for _, row in frame.sort_values(["scans", "method"], key=lambda s: s.map(
            {m.display: i for i, m in enumerate(specs)}) if s.name == "method" else s).iterrows():
        print(f"| {row['method']} | {row['scans']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
