"""S2SGAN against ComBat where site effects are not per-vertex linear, and S2SGAN's speed.

Evidence (default): a simulated two-site adult cohort; site A has a mild additive effect and keeps
the full resolution, site B has a saturating (non-linear) effect, a scale change and extra smoothing
(lower effective resolution, FWHM 12 mm); traveling subjects are scanned at both sites. Both
directions are run in turn (``--target``):

* A -> B (target B): the sharp scans take the blurred scanner's appearance, e.g. a study that keeps
  its first scanner as the reference. The generator must blur and saturate, which a spherical CNN
  can learn and a per-vertex location/scale model cannot.
* B -> A (target A): the blurred scans take the sharp scanner's appearance; the detail removed by
  the blur is not in the input, and an unpaired model cannot restore it.

Every method runs through the common benchmark runner (:func:`surfharm.evaluate.run_benchmark`: fit
on the study scans, leakage-safe cross-validation for site AUROC and age prediction, repeated with 3
fold splits and averaged, traveling subjects held out of every fit) and the table is printed per
direction. Two yardsticks of biology: the site-free truth, and the truth as the target site acquires
it (``age_r2_ratio_target``), which is what a harmonizer to a blurred site can keep. S2SGAN's settings
are not tuned on the traveling subjects: the authors' generator (a full U-Net) and loss weights, a small
generator for a CPU, 250 steps at learning rate 5e-4; it is run without the per-vertex output
calibration (the harmonizer's default) and with it (``--calibrate off|on|both``); ``--keep-covariates``
keeps age and sex out of its site statistics, with one slope for both sites or each site's own
(``--covariate-slopes pooled|per-site``). Each S2SGAN row trains 7 models (one on the study scans,
2 folds x 3 splits). Defaults: level 5 (fsaverage5), 100 scans per site.

    python benchmarks/bench_s2sgan.py --target B --calibrate off          # A -> B: 13 min on 2 cores
    python benchmarks/bench_s2sgan.py --target B --calibrate on --keep-covariates --covariate-slopes per-site
    python benchmarks/bench_s2sgan.py --target A --calibrate both --level 4 --n-per-site 40

Speed (``--timing``): seconds per training step (batch 1, Adam, both generators and
discriminators) and per harmonized hemisphere (inference of one map), at the given levels:

    python benchmarks/bench_s2sgan.py --timing --levels 5 7
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
import torch  # noqa: E402


def scenario_config(level: int, n_per_site: int, n_traveling: int, seed: int):
    """Two sites: A (target, mild additive effect), B (saturating + scale + 12 mm smoothing)."""
    from surfharm.simulate.generate import SimulationConfig, SiteSpec
    from surfharm.simulate.sites import SiteEffect

    sites = (
        SiteSpec("A", n_per_site, SiteEffect(additive_mean=0.05, additive_sd=0.03, noise_sd_mm=0.05)),
        SiteSpec("B", n_per_site, SiteEffect(additive_mean=0.15, additive_sd=0.05, scale_mean=1.05,
                                             saturation_mm=3.5, smoothing_fwhm_mm=12.0, noise_sd_mm=0.05)),
    )
    return SimulationConfig(mode="adult", level=level, sites=sites, n_traveling=n_traveling, seed=seed)


def run_evidence(args) -> None:
    torch.set_num_threads(args.threads)
    for target in (("A", "B") if args.target == "both" else (args.target,)):
        run_direction(args, target)


def run_direction(args, target: str) -> None:
    """The benchmark with ``target``'s appearance as the aim of S2SGAN (the other site is mapped)."""
    from surfharm.evaluate import MethodSpec, run_benchmark, to_markdown
    from surfharm.evaluate.scenarios import simulated_data

    source = "B" if target == "A" else "A"
    data = simulated_data(scenario_config(args.level, args.n_per_site, args.n_traveling, args.seed),
                          name=f"two-site-nonlinear-resolution, {source} -> {target}", target_site=target)
    # The cross-validation of the runner keeps only features finite in every scan, which would cut the
    # icosahedral mesh that S2SGAN needs: the medial wall is given as 0 mm in every scan instead (for
    # every method alike; a constant feature is left unchanged by each of them). Traveling-subject
    # scores to the target then average over all vertices (error 0 on the medial wall): cortex-only
    # MAE = MAE x V / V_cortex and PSNR = PSNR - 10 log10(V / V_cortex), printed below the table.
    data.X = np.where(np.isfinite(data.X), data.X, 0.0).astype(np.float32)
    options = dict(source=source, target=target, depth=args.depth, base_channels=args.base_channels,
                   disc_channels=args.base_channels, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   residual=args.residual, cycle_weight=args.cycle_weight, seed=args.seed,
                   keep_covariates=tuple(data.covariate_columns) if args.keep_covariates else (),
                   covariate_slopes=args.covariate_slopes)
    s2sgan = {"off": [MethodSpec("s2sgan", options=dict(options, calibrate=False))],
              "on": [MethodSpec("s2sgan", label="s2sgan (calibrated)", options=dict(options, calibrate=True))]}
    s2sgan["both"] = s2sgan["off"] + s2sgan["on"]
    methods = [MethodSpec("raw"), MethodSpec("mean-std"), MethodSpec("combat"),
               MethodSpec("combat", label="combat (reference = target)", options=dict(reference_site=target)),
               *s2sgan[args.calibrate]]
    blurred = "source" if source == "B" else "target"
    print(f"\n## {source} -> {target} (the {blurred} site is the blurred, saturating one)\n", flush=True)
    slopes = f" ({args.covariate_slopes} slopes)" if args.keep_covariates else ""
    print(f"scenario: level {args.level}, {args.n_per_site} scans per site, {args.n_traveling} traveling subjects; "
          f"S2SGAN: {args.steps} steps of batch {args.batch_size}, lr {args.lr}, cycle weight {args.cycle_weight}, "
          f"U-Net depth {args.depth}, {args.base_channels} base channels, residual {args.residual}, "
          f"kept covariates {args.keep_covariates}{slopes}; "
          f"{args.splits}-fold CV repeated {args.cv_repeats} times", flush=True)
    start = time.perf_counter()
    result = run_benchmark(data, methods, n_splits=args.splits, seed=args.seed, cv_repeats=args.cv_repeats,
                           progress=lambda line: print(line, flush=True))
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    columns = ["method", "tr_mae_target", "tr_psnr_target", "tr_r_target", "tr_ssim_target", "site_auroc",
               "site_auroc_sd", "age_r2", "age_r2_ratio", "age_r2_ratio_target", "tr_mae_truth", "fit_seconds"]
    table = result.table[[c for c in columns if c in result.table.columns]]
    print(table.to_markdown(index=False, floatfmt=".4f") if _has_tabulate() else table.to_string(index=False))
    ratio = data.X.shape[1] / data.mask.sum()
    cortex = table[["method"]].assign(tr_mae_target_cortex=table["tr_mae_target"] * ratio,
                                      tr_psnr_target_cortex=table["tr_psnr_target"] - 10 * np.log10(ratio))
    print(f"cortex only ({int(data.mask.sum())} of {data.X.shape[1]} vertices):")
    print(cortex.to_string(index=False), flush=True)
    if args.out:
        out = Path(args.out)
        out = out.with_name(f"{out.stem}_{source}_to_{target}{out.suffix}")
        out.write_text(to_markdown(result))
        print(f"wrote {out}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def run_timing(args) -> None:
    from spherical_ops import n_vertices
    from surfharm.training import CycleGANTrainer, DomainData, TrainingConfig

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print("| level | vertices | U-Net depth/base | s per training step (batch 1) | s per harmonized hemisphere |")
    print("|---|---|---|---|---|")
    for level in args.levels:
        n = n_vertices(level)
        depth = min(args.depth, level + 1)
        gen = torch.Generator().manual_seed(0)
        domains = [DomainData(torch.randn(2, 1, n, generator=gen), torch.ones(2, n, dtype=torch.bool))
                   for _ in range(2)]
        config = TrainingConfig(level=level, depth=depth, base_channels=args.base_channels,
                                disc_channels=args.base_channels, max_steps=1000)
        trainer = CycleGANTrainer(config, *domains, device=args.device)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        trainer.train_step()                                   # warm-up
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - t0)
        generator = trainer.generators.g_xy.eval()
        x = domains[0].maps[:1].to(args.device)
        infer = []
        with torch.no_grad():
            generator(x)
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                generator(x)
                sync()
                infer.append(time.perf_counter() - t0)
        print(f"| {level} | {n} | {depth}/{args.base_channels} | {np.median(times):.2f} | {np.median(infer):.3f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timing", action="store_true", help="measure speed instead of the evidence benchmark")
    parser.add_argument("--levels", type=int, nargs="+", default=[5, 7], help="levels of --timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", choices=("A", "B", "both"), default="both",
                        help="site whose appearance S2SGAN aims at: A (sharp; B's blur must be undone), "
                             "B (blurred, saturating; A's scans must be blurred), or both in turn")
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--n-per-site", type=int, default=100)
    parser.add_argument("--n-traveling", type=int, default=8)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=False,
                        help="generators predict a correction of the input (start as mean/std matching)")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--cycle-weight", type=float, default=10.0)
    parser.add_argument("--keep-covariates", action=argparse.BooleanOptionalAction, default=False,
                        help="S2SGAN keeps age and sex out of its site statistics, as ComBat does (default off: "
                             "the authors' per-site normalisation)")
    parser.add_argument("--covariate-slopes", choices=("pooled", "per-site"), default="pooled",
                        help="with --keep-covariates: one within-site slope for both sites (pooled, as ComBat) or "
                             "each site's own, mapped scans taking the target's (per-site)")
    parser.add_argument("--calibrate", choices=("on", "off", "both"), default="both",
                        help="S2SGAN without the per-vertex output calibration (off: the authors' generator output, "
                             "the harmonizer's default), with it (on), or both rows (each trains its own models)")
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--cv-repeats", type=int, default=3,
                        help="cross-validation repeated with this many fold splits, scores averaged (one split of "
                             "80 scans moves the site AUROC by +-0.05 or more)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the full Markdown report here")
    args = parser.parse_args()
    run_timing(args) if args.timing else run_evidence(args)


if __name__ == "__main__":
    main()
