"""DeepComBat against ComBat and CovBat, on real ROI data and on simulated vertex maps.

``real`` (default): the OpenNeuro Desikan-Killiany thickness table (68 regions; 'site' = OpenNeuro
dataset, 61 of them; covariates age, centred age^2, sex), through :func:`surfharm.evaluate.run_benchmark`:

* retrained site AUROC: cross-validated, leakage-safe (every harmonizer refit on the training folds
  only; the site classifier, L2 logistic regression after regressing out the covariates, trained on
  the harmonized training folds and scored on the harmonized held-out fold; one-vs-rest, macro);
* kBET rejection rate and iLISI (:mod:`surfharm.evaluate.metrics`) of the harmonized table (one fit
  on all scans), on the first 20 principal components of the covariate-adjusted features;
* age: mean partial R^2 of age over regions (one fit on all scans) and cross-validated age
  prediction (ridge, R^2 and MAE, the harmonizer refit in every fold).

``vertex``: the simulated ``adult`` cohort (4 sites x 50 adults, 8 traveling subjects) at
icosahedral level 5 (10242 vertices): DeepComBat with its PCA front end against ComBat and CovBat:
site AUROC, age R^2 against the site-free truth's, traveling-subject MAE to the target site.

    python benchmarks/bench_deepcombat.py                    (real data, 5 folds)
    python benchmarks/bench_deepcombat.py --part vertex      (simulated level-5 maps, 5 folds)
    python benchmarks/bench_deepcombat.py --quick            (3 folds, a subset of sites: to check the script)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (puts this checkout on sys.path)

# The evaluation data sit beside the checkout (../shared/data), never inside it.
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "openneuro-dk" / "openneuro_fs_dk_age_sex_ge20.csv.gz"
COLUMNS = ("site_auroc", "site_balanced_accuracy", "kbet_rejection", "ilisi", "manova_pillai", "age_r2",
           "age_pred_r2", "age_mae", "fit_seconds")
VERTEX_COLUMNS = ("site_auroc", "kbet_rejection", "age_r2", "age_r2_ratio", "age_pred_r2", "tr_mae_target",
                  "tr_mae_truth", "fit_seconds")


def methods(vertex: bool):
    from surfharm.evaluate.methods import MethodSpec

    out = [MethodSpec("raw"), MethodSpec("combat"), MethodSpec("covbat"), MethodSpec("deepcombat")]
    if vertex:
        out.append(MethodSpec("deepcombat", label="deepcombat-k32", options={"n_components": 32}))
    else:
        out.append(MethodSpec("deepcombat", label="deepcombat-covbat", options={"residual_method": "covbat"}))
    return out


def real(args) -> int:
    import pandas as pd

    from surfharm.evaluate import metrics
    from surfharm.evaluate.benchmark import run_benchmark
    from surfharm.evaluate.scenarios import roi_table_data

    path = Path(args.data)
    if args.quick:                                   # a subset: the 12 largest datasets
        table = pd.read_csv(path)
        keep = table["dataset"].value_counts().index[:12]
        path = Path("/tmp/bench_deepcombat_subset.csv.gz")
        table[table["dataset"].isin(keep)].to_csv(path, index=False)
    data = roi_table_data(path, site_column="dataset", subject_column="subject", age_column="age",
                          sex_column="sex", feature_suffix="_thickness")
    print(f"{data.name}: {data.X.shape[0]} scans x {data.X.shape[1]} regions, "
          f"{data.table['site'].nunique()} sites; covariates {data.covariate_columns}; {args.folds}-fold CV")
    missing = [m for m in ("kbet", "lisi") if not hasattr(metrics, m)]
    if missing:
        print(f"surfharm.evaluate.metrics has no {missing}: those columns are left out")
    start = time.perf_counter()
    result = run_benchmark(data, methods(False), n_splits=args.folds, seed=args.seed, progress=print)
    print(f"total {time.perf_counter() - start:.0f} s")
    show(result.table, COLUMNS)
    return 0


def vertex(args) -> int:
    from surfharm.evaluate.benchmark import run_benchmark
    from surfharm.evaluate.scenarios import simulated_data
    from surfharm.simulate import presets

    config = presets.adult(level=args.level, seed=args.seed)
    if args.quick:
        config = presets.adult(level=4, n_per_site=30, seed=args.seed)
    data = simulated_data(config, name=f"adult-level{config.level}")
    print(f"{data.name}: {data.X.shape[0]} scans x {data.X.shape[1]} vertices; {args.folds}-fold CV")
    start = time.perf_counter()
    result = run_benchmark(data, methods(True), n_splits=args.folds, seed=args.seed, progress=print)
    print(f"total {time.perf_counter() - start:.0f} s")
    show(result.table, VERTEX_COLUMNS)
    return 0


def show(table, columns) -> None:
    cols = [c for c in columns if c in table.columns]
    print()
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for _, row in table.iterrows():
        cells = [f"{row[c]:.3f}" if isinstance(row[c], (float, np.floating)) and np.isfinite(row[c]) else ""
                 for c in cols]
        print(f"| {row['method']} | " + " | ".join(cells) + " |")
    if "error" in table.columns:
        for _, row in table[table["error"].notna()].iterrows():
            print(f"{row['method']}: {row['error']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("real", "vertex"), default="real")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.folds = 3
    return real(args) if args.part == "real" else vertex(args)


if __name__ == "__main__":
    sys.exit(main())
