"""CDAE and the paired spherical U-Net against ComBat and CovBat on a multi-scanner simulated cohort.

Scenario (``surfharm.simulate``, adult mode): five scanners with different kinds of effect and age
ranges that barely overlap (age confounded with scanner):

* S0, the reference: mild additive effect, ages 20-50;
* S1: additive + multiplicative (scale 1.12), ages 35-65;
* S2: saturating (3.2 mm) + additive, ages 50-80;
* S3: blurring (FWHM 12 mm) + multiplicative, ages 30-70;
* S4, held out of every fit: additive + scale + mild blur, ages 20-80.

Traveling subjects are scanned on every scanner. They are split in two halves: the *evaluation*
half is never in any fit; the *pairs* half is used only by the paired U-Net (its supervision) and
never scored. Scores:

* traveling-subject MAE / PSNR / SSIM of each scanner's harmonized scans to the reference scanner's
  scans of the same subjects (S1-S3, and the held-out S4 through ComBat's ``adapt`` and CDAE's
  ``allow_unseen_sites``);
* site AUROC of a logistic regression retrained on the harmonized fitted study scans of S0-S3 and
  scored on a quarter of each site's study scans held out of the harmonizer's fit (harmonized by the
  fitted model), covariates regressed out;
* age R^2 of a ridge regression trained and scored the same way, and its ratio to the same score on
  the site-free truth.

    python benchmarks/bench_cdae.py --level 4                 # about 12 min on 2 cores
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def scenario(level: int, n_per_site: int, n_traveling: int, seed: int):
    from surfharm.simulate.generate import SimulationConfig, SiteSpec, simulate_cohort
    from surfharm.simulate.sites import SiteEffect

    sites = (
        SiteSpec("S0", n_per_site, SiteEffect(additive_mean=0.03, additive_sd=0.02), age_range=(20, 50)),
        SiteSpec("S1", n_per_site, SiteEffect(additive_mean=0.15, additive_sd=0.05, scale_mean=1.12, scale_sd=0.03),
                 age_range=(35, 65)),
        SiteSpec("S2", n_per_site, SiteEffect(additive_mean=0.10, additive_sd=0.04, saturation_mm=3.2),
                 age_range=(50, 80)),
        SiteSpec("S3", n_per_site, SiteEffect(additive_mean=-0.08, scale_mean=0.93, smoothing_fwhm_mm=12.0),
                 age_range=(30, 70)),
        SiteSpec("S4", n_per_site, SiteEffect(additive_mean=0.10, additive_sd=0.04, scale_mean=1.06,
                                              smoothing_fwhm_mm=6.0), age_range=(20, 80)),
    )
    return simulate_cohort(SimulationConfig(mode="adult", level=level, sites=sites, n_traveling=n_traveling,
                                            age_range=(40, 60), seed=seed))


def site_auroc(X_train, s_train, c_train, X_test, s_test, c_test, seed=0) -> float:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline

    regression = LinearRegression().fit(c_train, X_train)
    model = make_pipeline(PCA(n_components=min(30, len(X_train) - 5), random_state=seed),
                          LogisticRegression(C=1.0, max_iter=2000))
    model.fit(X_train - regression.predict(c_train), s_train)
    proba = model.predict_proba(X_test - regression.predict(c_test))
    return float(roc_auc_score(s_test, proba, multi_class="ovr", labels=model.classes_))


def age_r2(X_train, a_train, X_test, a_test) -> float:
    from sklearn.linear_model import RidgeCV

    pred = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit(X_train, a_train).predict(X_test)
    return float(1 - ((pred - a_test) ** 2).sum() / ((a_test - a_test.mean()) ** 2).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=4)
    parser.add_argument("--n-per-site", type=int, default=40)
    parser.add_argument("--n-traveling", type=int, default=10)
    parser.add_argument("--cdae-steps", type=int, default=200)
    parser.add_argument("--cdae-base", type=int, default=8)
    parser.add_argument("--paired-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    import surfharm.harmonize as H
    from spherical_ops import icosphere
    from surfharm.evaluate.metrics import mae, mesh_window, psnr, ssim_sphere

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    sim = scenario(args.level, args.n_per_site, args.n_traveling, args.seed)
    X, table, mask = sim.maps.astype(np.float64), sim.table.copy(), sim.mask
    table["sex"] = pd.to_numeric(table["sex"].map({"F": 1, "M": 0}).fillna(table["sex"]), errors="coerce")
    sites, travel = table["site"].to_numpy().astype(object), sim.traveling
    subjects = table["subject"].to_numpy().astype(str)
    trav_subjects = sorted(set(subjects[travel]))
    pair_half = set(trav_subjects[: len(trav_subjects) // 2])
    eval_rows = travel & ~np.isin(subjects, list(pair_half))
    pair_rows = travel & np.isin(subjects, list(pair_half))
    known = np.isin(sites, ["S0", "S1", "S2", "S3"])
    held_scan = np.random.default_rng(args.seed).random(len(sites)) < 0.25
    study = ~travel & known & ~held_scan             # the harmonizers' fit
    scored = ~travel & known & held_scan              # never fitted: site AUROC and age R^2 test scans
    cov = table[["age", "sex"]].astype(float)
    print(f"level {args.level}: {X.shape[1]} vertices, {study.sum()} study scans on S0-S3, "
          f"{(~travel & ~known).sum()} on held-out S4, {len(trav_subjects)} traveling subjects "
          f"({len(pair_half)} for pairs, {len(trav_subjects) - len(pair_half)} scored); simulated in "
          f"{time.perf_counter() - t0:.1f} s")

    window = mesh_window(icosphere(args.level).faces, X.shape[1], rings=2, mask=mask)
    ref_scan = {s: np.flatnonzero(eval_rows & (subjects == s) & (sites == "S0"))[0]
                for s in set(subjects[eval_rows])}

    def traveling_scores(out, site):
        rows = np.flatnonzero(eval_rows & (sites == site))
        target = X[[ref_scan[s] for s in subjects[rows]]]
        return (float(np.mean(mae(out[rows], target, mask))), float(np.mean(psnr(out[rows], target, mask))),
                float(np.mean(ssim_sphere(out[rows], target, window, mask))))

    results: dict[str, dict] = {}

    def score(name, out_all, seconds, out_heldout=None):
        row = {"seconds": seconds}
        for site in ("S1", "S2", "S3"):
            row[f"mae_{site}"], row[f"psnr_{site}"], row[f"ssim_{site}"] = traveling_scores(out_all, site)
        if out_heldout is not None:
            row["mae_S4"], row["psnr_S4"], row["ssim_S4"] = traveling_scores(out_heldout, "S4")
        a, b = out_all[study][:, mask], out_all[scored][:, mask]
        row["site_auroc"] = site_auroc(a, sites[study].astype(str), cov[study].to_numpy(),
                                       b, sites[scored].astype(str), cov[scored].to_numpy())
        age = table["age"].to_numpy()
        row["age_r2"] = age_r2(a, age[study], b, age[scored])
        results[name] = row
        print(f"  {name}: done in {seconds:.1f} s")

    truth = sim.truth.astype(np.float64)
    truth_r2 = age_r2(truth[study][:, mask], table["age"].to_numpy()[study], truth[scored][:, mask],
                      table["age"].to_numpy()[scored])
    score("raw", X, 0.0, X)

    # ComBat / CovBat on the cortex vertices of the study scans (age, sex kept); S4 by adapt.
    for name in ("combat", "covbat"):
        t = time.perf_counter()
        model = H.get(name)(reference_site="S0").fit(X[study][:, mask], sites=sites[study], covariates=cov[study])
        out = X.copy()
        rows = known
        out[np.ix_(rows, mask)] = model.transform(X[rows][:, mask], sites=sites[rows], covariates=cov[rows])
        held = None
        if model.supports_adapt:
            s4 = sites == "S4"
            s4_study = s4 & ~travel
            model.adapt(X[s4_study][:, mask], sites=sites[s4_study], covariates=cov[s4_study])
            held = X.copy()
            held[np.ix_(s4, mask)] = model.transform(X[s4][:, mask], sites=sites[s4], covariates=cov[s4])
        score(name, out, time.perf_counter() - t, held)

    # CDAE: published losses and schedule shape, a CPU-sized network and step count.
    t = time.perf_counter()
    cdae = H.get("cdae")(reference_site="S0", keep_covariates=("age", "sex"), base_channels=args.cdae_base,
                         batch_size=4, max_steps=args.cdae_steps, allow_unseen_sites=True, seed=args.seed)
    cdae.fit(X[study], sites=sites[study], covariates=cov[study])
    train_s = time.perf_counter() - t
    t_inf = time.perf_counter()
    out = cdae.transform(X, sites=sites, covariates=cov)     # S4 scans with their own statistics
    n_moving = int((sites != "S0").sum())
    inf_s = (time.perf_counter() - t_inf) / max(n_moving, 1)
    print(f"CDAE: {train_s / args.cdae_steps:.3f} s per training step (batch 4, base {args.cdae_base}), "
          f"{inf_s * 1000:.1f} ms per harmonized hemisphere (level {args.level})")
    score("cdae", out, train_s, out)

    # Paired U-Net: study scans + the pair half of the traveling subjects (the scored half never).
    t = time.perf_counter()
    fit_rows = (study | pair_rows) & known
    paired = H.get("paired-unet")(reference_site="S0", depth=3, base_channels=8, batch_size=4,
                                  max_steps=args.paired_steps, seed=args.seed)
    paired.fit(X[fit_rows], sites=sites[fit_rows], subjects=subjects[fit_rows])
    train_s = time.perf_counter() - t
    t_inf = time.perf_counter()
    out = X.copy()
    out[known] = paired.transform(X[known], sites=sites[known])
    inf_s = (time.perf_counter() - t_inf) / max(int((known & (sites != "S0")).sum()), 1)
    print(f"paired-unet: {paired.n_pairs_} pairs, {train_s / args.paired_steps:.3f} s per training step (batch 4), "
          f"{inf_s * 1000:.1f} ms per harmonized hemisphere")
    score("paired-unet", out, train_s)

    print(f"\nage R^2 of the site-free truth: {truth_r2:.3f}")
    frame = pd.DataFrame(results).T
    frame["age_r2_ratio"] = frame["age_r2"] / truth_r2
    cols = ["mae_S1", "mae_S2", "mae_S3", "mae_S4", "psnr_S1", "psnr_S3", "ssim_S1", "ssim_S3", "ssim_S4",
            "site_auroc", "age_r2", "age_r2_ratio", "seconds"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(frame[[c for c in cols if c in frame]])
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
