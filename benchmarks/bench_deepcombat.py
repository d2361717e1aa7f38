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
``--front-end sphere`` or ``both`` puts DeepComBat with the spherical autoencoder front end in the table
(``both``: beside the PCA front end), and adds, per front end: its reconstruction error alone (fraction
of the held-out scans' z-scored variance it does not reconstruct, fit on 4/5 of the study scans), the
time and peak memory (RSS growth of a fresh process) of one DeepComBat fit, and the peak memory of a few
training steps of the sphere front end at ``--memory-level`` (default 7: 163842 vertices).

    python benchmarks/bench_deepcombat.py                    (real data, 5 folds)
    python benchmarks/bench_deepcombat.py --part vertex      (simulated level-5 maps, 5 folds)
    python benchmarks/bench_deepcombat.py --part vertex --front-end both   (PCA and sphere front ends)
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


def methods(vertex: bool, front_end: str = "pca"):
    from surfharm.evaluate.methods import MethodSpec

    if vertex and front_end != "pca":
        out = [MethodSpec("raw"), MethodSpec("combat")]
        if front_end == "both":
            out.append(MethodSpec("deepcombat", label="deepcombat-pca", options={"front_end": "pca"}))
        out.append(MethodSpec("deepcombat", label="deepcombat-sphere", options={"front_end": "sphere"}))
        return out
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
    result = run_benchmark(data, methods(True, args.front_end), n_splits=args.folds, seed=args.seed, progress=print)
    print(f"total {time.perf_counter() - start:.0f} s")
    show(result.table, VERTEX_COLUMNS)
    if args.front_end != "pca":
        front_ends(data, args)
    return 0


def front_ends(data, args) -> None:
    """Each front end alone (held-out reconstruction error), one fit's time and peak memory, and the sphere
    front end's peak memory at ``args.memory_level``."""
    import multiprocessing

    X = np.asarray(data.X[data.study])
    table = data.table[data.study].reset_index(drop=True)
    sites, cov = table["site"].to_numpy(), table[data.covariate_columns]
    held_out = np.arange(len(X)) % 5 == 0
    context = multiprocessing.get_context("spawn")       # a fresh process per measurement: its own peak RSS
    print()
    print("| front end | held-out reconstruction error (fraction of z-variance) | DeepComBat fit s | peak RSS MB |")
    print("|---|---|---|---|")
    for name in ("pca", "sphere"):
        error = reconstruction_error(name, X[~held_out], X[held_out], sites[~held_out])
        with context.Pool(1) as pool:
            seconds, peak = pool.apply(fit_once, (name, X, sites, cov))
        print(f"| {name} | {error:.3f} | {seconds:.1f} | {peak:.0f} |")
    with context.Pool(1) as pool:
        seconds, peak, n_vertices = pool.apply(sphere_memory, (args.memory_level,))
    print(f"\nsphere front end at level {args.memory_level} ({n_vertices} vertices): 2 training steps of 16 scans and "
          f"encoding/decoding 32 scans: {seconds:.1f} s, peak RSS growth {peak:.0f} MB")


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reconstruction_error(front_end: str, train, test, train_sites) -> float:
    """Mean squared remainder of the held-out scans / their mean squared z-score (observed vertices)."""
    from surfharm.harmonize.deepcombat import DeepComBat

    model = DeepComBat(front_end=front_end)
    model._check_options()
    model._fit_standardisation(train)
    model.components_, model.score_scale_, model.sphere_network_ = np.zeros((0, train.shape[1])), np.ones(1), None
    if front_end == "pca":
        model._fit_components(train)
    else:
        model._fit_sphere(train)
    _, remainder = model._network_input(test)
    Z = model._z(test, slice(0, test.shape[1]))
    observed = np.isfinite(Z)
    return float(np.mean(np.asarray(remainder, dtype=np.float64)[observed] ** 2) / np.mean(Z[observed] ** 2))


def fit_once(front_end: str, X, sites, cov) -> tuple[float, float]:
    import torch

    from surfharm.harmonize.deepcombat import DeepComBat

    torch.set_num_threads(1)
    before = _rss_mb()
    start = time.perf_counter()
    DeepComBat(front_end=front_end).fit(X, sites=sites, covariates=cov)
    return time.perf_counter() - start, _rss_mb() - before


def sphere_memory(level: int) -> tuple[float, float, int]:
    import torch

    from spherical_ops import n_vertices
    from surfharm.models.sphere_autoencoder import SphereAutoencoder, apply_in_batches, train_autoencoder

    torch.set_num_threads(1)
    Z = np.random.default_rng(0).normal(size=(32, n_vertices(level))).astype(np.float32)
    before = _rss_mb()
    start = time.perf_counter()
    network = SphereAutoencoder(level, bottleneck_level=2, code_channels=4)
    train_autoencoder(network, Z, epochs=1, lr=0.003, batch_size=16, seed=0, device=torch.device("cpu"))
    apply_in_batches(network.decode, apply_in_batches(network.encode, Z, 16), 16)
    return time.perf_counter() - start, _rss_mb() - before, n_vertices(level)


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
    parser.add_argument("--front-end", choices=("pca", "sphere", "both"), default="pca",
                        help="vertex part: DeepComBat's front end(s) to compare (default: the PCA rows only)")
    parser.add_argument("--memory-level", type=int, default=7,
                        help="level at which the sphere front end's peak memory is measured (default 7)")
    args = parser.parse_args()
    if args.quick:
        args.folds = 3
    return real(args) if args.part == "real" else vertex(args)


if __name__ == "__main__":
    sys.exit(main())
